"""``python -m tasks.reproduce``: run the experiments of the paper's Tables 1-6 one after the other and write
``REPORT.md`` with every table beside the paper's figures.

Each experiment is a task's own command (``python -m tasks.<task> ...``, in a child process; see
``tasks.reproduce.plan`` for the list) with its own folder under ``--out``. Finished experiments are skipped; an
interrupted one is continued with ``--resume`` (the task reuses its finished runs and continues the others from
their checkpoints); without ``--resume`` an interrupted experiment stops the command before anything runs.
``REPORT.md`` is rewritten after every experiment, so it is current after any interruption.

Exit status: 0 when every experiment asked for has finished; 2 for bad arguments, an output folder that
cannot be used (an interrupted experiment without ``--resume``, one run with another command, a file in the
way, another reproduction working in it) or SA-EMD in a build without exact EMD, before anything runs; 1 when
an experiment's command fails (its exit status is printed); 130 after Ctrl-C or SIGTERM (the running
experiment saves its checkpoints; the line printed says how to continue).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from emd_cpp import EMDUnavailableError
from slots.attention import check_available
from slots.checkpoint import lock_folder, write_json

from ..pool import cores
from .plan import STATE_NAME, TABLES, experiments, planned_steps, read_state
from .report import REPORT_NAME, progress_line, state_record, write_report

__all__ = ["main", "build_parser"]


def _table(text: str) -> str:
    key = text.lower().removeprefix("table")
    if key not in TABLES:
        raise argparse.ArgumentTypeError(f"unknown table {text!r}; choose from {', '.join(TABLES)}")
    return key


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.reproduce", description=__doc__.split("\n\n")[0])
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", choices=("cpu", "paper"),
                        help="cpu: each task's CPU budget (default); paper: each task's paper budget, for a GPU")
    budget.add_argument("--quick", action="store_true",
                        help="a few steps per run on tiny generated data: checks every table's pipeline in minutes")
    p.add_argument("--only", nargs="+", type=_table, metavar="TABLE",
                   help=f"run only these tables ({', '.join(TABLES)}); REPORT.md still lists all")
    p.add_argument("--resume", action="store_true", help="continue interrupted experiments (finished ones are "
                                                         "skipped either way)")
    p.add_argument("--out", help="output folder (default runs/reproduce/<budget>, runs/reproduce/quick with --quick)")
    p.add_argument("--dry-run", action="store_true", help="print the planned commands and the progress; run nothing")
    return p


def _child_env() -> dict:
    """This process's environment with the folder holding ``tasks`` first on PYTHONPATH, so that the child runs
    this checkout's code from any working directory."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:  # the group has already exited
        pass


def _run_child(cmd: list[str]) -> tuple[int, bool]:
    """Run ``cmd`` in its own process group; Ctrl-C (SIGINT) and SIGTERM here are passed on to that group, once
    per signal, so that the task saves its checkpoints and exits. Returns (exit status, interrupted here).

    Both signals get a handler of this function's own for as long as the child runs (the previous ones are put
    back after), so forwarding does not depend on whatever SIGINT handler the caller had installed."""
    proc = subprocess.Popen(cmd, env=_child_env(), start_new_session=True)  # its own process group
    interrupted = False

    def forward(signum, frame):
        nonlocal interrupted
        interrupted = True
        _signal_group(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait(), interrupted  # wait() resumes after a handler runs (PEP 475)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    budget = "quick" if args.quick else (args.budget or "cpu")
    out = Path(args.out or f"runs/reproduce/{budget}")
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            print(f"error: --out {out}: {p} is a file", file=sys.stderr)
            return 2
    plan = experiments()
    chosen = [e for e in plan if args.only is None or e.table in args.only]
    steps = {e.name: planned_steps(e, budget) for e in plan}
    parallel = 1 if budget == "quick" else cores()
    given = shlex.join(["python", "-m", "tasks.reproduce", *(argv if argv is not None else sys.argv[1:])])

    def states():
        return {e.name: read_state(e, budget, out, steps[e.name]) for e in plan}

    current = states()
    for e in chosen:  # every folder is checked before anything runs
        s, folder = current[e.name], out / e.name
        recorded = s.record.get("command")
        if recorded is not None and s.started and recorded != e.command(budget, out):
            print(f"error: {folder} holds an experiment run with another command ({shlex.join(recorded)}); "
                  "choose another --out", file=sys.stderr)
            return 2
        if s.started and not s.finished and not args.resume:
            print(f"error: {folder} holds an unfinished experiment; rerun with --resume to continue it",
                  file=sys.stderr)
            return 2
    if args.dry_run:
        for e in chosen:
            s = current[e.name]
            what = "finished, skipped" if s.finished else "continue (--resume)" if s.started else "run"
            resume = ["--resume"] if s.started and not s.finished else []
            print(f"[table {e.table}: {what}] {shlex.join(e.command(budget, out) + resume)}")
        print(progress_line(chosen, budget, out, current, steps, parallel))
        return 0
    try:
        for v in {v for e in chosen if not current[e.name].finished for v in e.variants}:
            check_available(v)  # SA-EMD in a build without exact EMD: said now, not after hours of other tables
    except EMDUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        with lock_folder(out):
            return _run(chosen, plan, budget, out, steps, parallel, given, states)
    except ValueError as e:  # LockHeld: another reproduction works in --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = given if "--resume" in given.split() else given + " --resume"
        print(f"\ninterrupted; the finished runs and checkpoints are kept: continue with\n  {again}", file=sys.stderr)
        return 130


def _run(chosen, plan, budget, out, steps, parallel, given, states) -> int:
    """The loop of :func:`main` over the experiments ``chosen``, with ``out`` locked; raises KeyboardInterrupt
    once an interrupted experiment's record and REPORT.md are written."""
    current = states()
    for e in chosen:
        s = current[e.name]
        if s.finished:
            print(f"== table {e.table}, {e.title}: finished, skipped ({out / e.name})", flush=True)
            continue
        print(f"== {progress_line(chosen, budget, out, current, steps, parallel)}", flush=True)
        print(f"== table {e.table}, {e.title}: {shlex.join(e.command(budget, out))}", flush=True)
        args = e.args(budget, out) + (["--resume"] if s.started else [])
        t0 = time.perf_counter()
        code, interrupted = _run_child([sys.executable, "-m", f"tasks.{e.task}", *args])
        wall = time.perf_counter() - t0
        status = "finished" if code == 0 else "interrupted" if interrupted or code == 130 else f"failed ({code})"
        (out / e.name).mkdir(parents=True, exist_ok=True)
        write_json(out / e.name / STATE_NAME, state_record(s.record, e.command(budget, out), wall, status))
        current = states()
        write_report(plan, budget, out, current, given)
        if interrupted or status == "interrupted":
            raise KeyboardInterrupt
        if code != 0:
            print(f"error: {shlex.join(e.command(budget, out))} exited with status {code}; fix the cause and rerun "
                  "with --resume", file=sys.stderr)
            return 1
    write_report(plan, budget, out, current, given)
    print(f"== {progress_line(chosen, budget, out, current, steps, parallel)}")
    print(f"written to {out / REPORT_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
