"""Run a task's command line inside a test and capture what it prints."""
import contextlib
import io


def run_cli(main, argv) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit status, stdout, stderr); argparse errors give their SystemExit code. Paths in
    ``argv`` may be Path objects."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()
