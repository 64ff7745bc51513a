"""``python -m tasks.reproduce``: the plan, skipping and continuing experiments, the progress line, REPORT.md, the
error paths, Ctrl-C, and (slow) every table's pipeline at the quick budget."""
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.reproduce import TABLES, experiments, read_state, time_left
from tasks.reproduce import __main__ as cli

QUICK_RUNS = sum(len(e.runs("quick")) for e in experiments())


def _fake_child(runs_to_finish=None, code=0, interrupted=False, calls=None):
    """A stand-in for a task's command: writes a finished run (results.json at the planned steps), a table.md and a
    picture for each of its runs (the first ``runs_to_finish`` only, when given), then returns ``code``."""
    def run(cmd):
        args = cmd[3:]
        out = Path(args[args.index("--out") + 1])
        variants = [args[i + 1] for i, a in enumerate(args) if a == "--variant"]
        seeds = int(args[args.index("--seeds") + 1])
        steps = int(args[args.index("--steps") + 1])
        if calls is not None:
            calls.append(args)
        runs = [(v, s) for v in variants for s in range(seeds)][:runs_to_finish]
        for v, s in runs:
            folder = out / v / f"seed{s}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "results.json").write_text(json.dumps({"step": steps, "train_step_ms": 500.0}))
            (folder / "examples.png").write_bytes(b"png")
        if code == 0:
            (out / "table.md").write_text(f"fake table of {out.name}\n")
            (out / "curves.png").write_bytes(b"png")
        return code, interrupted
    return run


def test_dry_run_lists_every_experiment_and_writes_nothing(run_cli, tmp_path):
    out = tmp_path / "rep"
    code, stdout, stderr = run_cli(cli.main, ["--quick", "--dry-run", "--out", out])
    assert code == 0, stderr
    lines = [line for line in stdout.splitlines() if line.startswith("[table")]
    assert len(lines) == len(experiments()) == 11
    for sigma in ("1", "0.1", "0.01"):
        assert any(f"tasks.random_objects --sigma {sigma} " in line and "--seeds 1 " in line for line in lines)
    assert sum("tasks.clevr " in line for line in lines) == 2
    assert sum("--no-implicit-grad" in line for line in lines) == 1
    assert any("tasks.clevrer --data S" in line and "sa-mesh-low-lr" in line for line in lines)
    assert any("tasks.clevrer --data L" in line and "sa-mesh-low-lr" not in line for line in lines)
    assert any("tasks.clevrtex" in line for line in lines) and any("tasks.multi_dsprites" in line for line in lines)
    assert f"runs 0/{QUICK_RUNS} done" in stdout and "time left unknown" in stdout
    assert not out.exists()


def test_plan_at_the_cpu_budget():
    cmds = {e.name: e.command("cpu", Path("o")) for e in experiments()}
    assert cmds["table1-sigma0.01"][cmds["table1-sigma0.01"].index("--seeds") + 1] == "5"
    assert cmds["table1-sigma0.01"][cmds["table1-sigma0.01"].index("--budget") + 1] == "paper"
    assert cmds["table3"][cmds["table3"].index("--seeds") + 1] == "3"
    assert [a for a in cmds["table3"] if a.startswith("sa")] == ["sa", "sa-mesh"]
    assert [a for a in cmds["table3-sa-emd"] if a.startswith("sa")] == ["sa-emd"]  # beyond the paper
    assert all(c[c.index("--budget") + 1] == "cpu" for n, c in cmds.items() if not n.startswith("table1"))
    assert {e.table for e in experiments()} == set(TABLES)


@pytest.mark.parametrize("args, message", [
    (["--only", "7"], "unknown table '7'; choose from 1, 2, 3, 4, 5, 6"),
    (["--quick", "--budget", "paper"], "not allowed with argument"),
    (["--budget", "gpu"], "invalid choice: 'gpu'"),
])
def test_bad_arguments_exit_2(run_cli, tmp_path, args, message):
    code, _, stderr = run_cli(cli.main, [*args, "--out", tmp_path / "rep"])
    assert code == 2 and message in stderr
    assert not (tmp_path / "rep").exists()


def test_out_that_is_a_file_exits_2(run_cli, tmp_path):
    (tmp_path / "f").write_text("")
    code, _, stderr = run_cli(cli.main, ["--quick", "--only", "2", "--out", tmp_path / "f" / "rep"])
    assert code == 2 and "is a file" in stderr


def test_skips_finished_experiments_and_reports_every_table(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    calls = []
    monkeypatch.setattr(cli, "_run_child", _fake_child(calls=calls))
    code, stdout, stderr = run_cli(cli.main, ["--quick", "--only", "1", "table4", "--out", out])
    assert code == 0, stderr
    assert len(calls) == 4 and all("--resume" not in c for c in calls)
    report = (out / "REPORT.md").read_text()
    for title in TABLES.values():
        assert f"## {title}" in report
    for name in ("table1-sigma1", "table1-sigma0.1", "table1-sigma0.01", "table4"):
        assert f"fake table of {name}" in report
        assert json.loads((out / name / "reproduce.json").read_text())["status"] == "finished"
    assert report.count("Not run yet.") == 7  # Tables 2, 3 (three experiments), 5 (two) and 6
    assert "[sa/seed0/examples.png](table4/sa/seed0/examples.png)" in report
    assert "Budget: quick" in report and "machine:" in report and "commit " in report
    assert "Budget: quick (the task's `--budget quick`, cut to a few steps on tiny data)" in report
    assert "progress: tables 2/2 done" in stdout and "nothing left to run" in stdout

    calls.clear()
    code, stdout, stderr = run_cli(cli.main, ["--quick", "--only", "1", "4", "--out", out])
    assert code == 0, stderr
    assert calls == [] and stdout.count("finished, skipped") == 4


def test_interrupted_experiment_needs_resume(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    monkeypatch.setattr(cli, "_run_child", _fake_child(runs_to_finish=1, code=130, interrupted=True))
    code, _, stderr = run_cli(cli.main, ["--quick", "--only", "4", "--out", out])
    assert code == 130
    assert f"python -m tasks.reproduce --quick --only 4 --out {out} --resume" in stderr
    record = json.loads((out / "table4" / "reproduce.json").read_text())
    assert record["status"] == "interrupted" and record["attempts"] == 1
    report = (out / "REPORT.md").read_text()
    assert "Not finished (interrupted): 1/3 runs done" in report

    calls = []
    monkeypatch.setattr(cli, "_run_child", _fake_child(calls=calls))
    code, _, stderr = run_cli(cli.main, ["--quick", "--only", "4", "--out", out])
    assert code == 2 and "rerun with --resume" in stderr and calls == []
    code, stdout, _ = run_cli(cli.main, ["--quick", "--only", "4", "--out", out, "--dry-run", "--resume"])
    assert code == 0 and "continue (--resume)" in stdout and "runs 1/3 done" in stdout
    code, _, stderr = run_cli(cli.main, ["--quick", "--only", "4", "--out", out, "--resume"])
    assert code == 0, stderr
    assert len(calls) == 1 and calls[0][-1] == "--resume"
    record = json.loads((out / "table4" / "reproduce.json").read_text())
    assert record["status"] == "finished" and record["attempts"] == 2


def test_time_left_from_a_running_run_of_another_variant(tmp_path):
    exp = next(e for e in experiments() if e.name == "table1-sigma1")
    running = tmp_path / exp.name / "sa-emd" / "seed0"
    running.mkdir(parents=True)
    (running / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "steps_per_s": 10.0}) + "\n")
    states = {exp.name: read_state(exp, "quick", tmp_path, 2)}
    seconds, unmeasured = time_left([exp], "quick", tmp_path, states, {exp.name: 2}, parallel=2)
    from tasks.random_objects.experiment import STEP_COST

    expected = 0.1 + sum(2 * 0.1 * STEP_COST[v] / STEP_COST["sa-emd"] for v in ("sa", "sa-sh", "sa-mesh"))
    assert unmeasured == 0 and seconds == pytest.approx(expected / 2)


def test_ctrl_c_as_an_experiment_finishes_stops_before_the_next(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    calls = []
    monkeypatch.setattr(cli, "_run_child", _fake_child(interrupted=True, calls=calls))
    code, _, stderr = run_cli(cli.main, ["--quick", "--only", "2", "6", "--out", out])
    assert code == 130 and "--resume" in stderr and len(calls) == 1
    assert json.loads((out / "table2" / "reproduce.json").read_text())["status"] == "finished"
    assert not (out / "table6").exists()


def test_failed_experiment_exits_1(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    monkeypatch.setattr(cli, "_run_child", _fake_child(runs_to_finish=0, code=2))
    code, _, stderr = run_cli(cli.main, ["--quick", "--only", "2", "--out", out])
    assert code == 1 and "exited with status 2" in stderr
    assert json.loads((out / "table2" / "reproduce.json").read_text())["status"] == "failed (2)"
    assert not (out / "table6").exists()  # Table 6 is not started after a failure


def test_experiment_of_another_command_exits_2(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    monkeypatch.setattr(cli, "_run_child", _fake_child())
    assert run_cli(cli.main, ["--quick", "--only", "4", "--out", out])[0] == 0
    record_path = out / "table4" / "reproduce.json"
    record = json.loads(record_path.read_text())
    record["command"][record["command"].index("--n-test") + 1] = "99"
    record_path.write_text(json.dumps(record))
    code, _, stderr = run_cli(cli.main, ["--quick", "--only", "4", "--out", out, "--resume"])
    assert code == 2 and "another command" in stderr


def test_sa_emd_without_exact_emd_exits_2_before_anything_runs(run_cli, tmp_path, monkeypatch):
    from emd_cpp import EMDUnavailableError

    def check_available(variant):
        if variant == "sa-emd":
            raise EMDUnavailableError("exact EMD is not in this build")

    calls = []
    monkeypatch.setattr(cli, "check_available", check_available)
    monkeypatch.setattr(cli, "_run_child", _fake_child(calls=calls))
    code, _, stderr = run_cli(cli.main, ["--quick", "--only", "4", "2", "--out", tmp_path / "rep"])
    assert code == 2 and "exact EMD is not in this build" in stderr
    assert calls == [] and not (tmp_path / "rep").exists()
    assert run_cli(cli.main, ["--quick", "--only", "4", "--out", tmp_path / "rep"])[0] == 0  # no SA-EMD in Table 4


def test_time_left_from_measured_step_times(tmp_path):
    exp = next(e for e in experiments() if e.name == "table3")  # sa and sa-mesh
    folder = tmp_path / exp.name / "sa" / "seed0"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"step": 10, "train_step_ms": 1000.0}))
    states = {exp.name: read_state(exp, "quick", tmp_path, 10)}
    assert states[exp.name].runs_done == [("sa", 0)]
    # sa-mesh has no measurement of its own and the task no step costs: not counted
    assert time_left([exp], "quick", tmp_path, states, {exp.name: 10}, parallel=1) == (None, 1)
    running = tmp_path / exp.name / "sa-mesh" / "seed0"
    running.mkdir(parents=True)
    (running / "metrics.jsonl").write_text(json.dumps({"step": 4, "split": "train", "steps_per_s": 0.5}) + "\n")
    seconds, unmeasured = time_left([exp], "quick", tmp_path, states, {exp.name: 10}, parallel=1)
    assert unmeasured == 0 and seconds == pytest.approx(6 * 2.0)


def test_time_left_scales_by_the_tasks_step_costs(tmp_path):
    exp = next(e for e in experiments() if e.name == "table1-sigma1")
    folder = tmp_path / exp.name / "sa" / "seed0"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"step": 2, "train_step_ms": 100.0}))
    states = {exp.name: read_state(exp, "quick", tmp_path, 2)}
    seconds, unmeasured = time_left([exp], "quick", tmp_path, states, {exp.name: 2}, parallel=1)
    from tasks.random_objects.experiment import STEP_COST

    expected = sum(2 * 0.1 * STEP_COST[v] / STEP_COST["sa"] for v in ("sa-sh", "sa-emd", "sa-mesh"))
    assert unmeasured == 0 and seconds == pytest.approx(expected)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_are_passed_to_the_experiment(tmp_path, signum):
    ready = tmp_path / "ready"
    child = ("import signal, sys, time, pathlib\n"
             f"signal.signal({int(signum)}, lambda *a: sys.exit(130))\n"
             f"pathlib.Path({str(ready)!r}).write_text('')\n"
             "time.sleep(60)\n")

    def interrupt():
        while not ready.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    def caller_handler(*args):  # a caller's own SIGINT handler (not Python's KeyboardInterrupt) must not matter
        pass

    original = signal.signal(signal.SIGINT, caller_handler)
    try:
        previous = signal.getsignal(signal.SIGTERM)
        threading.Thread(target=interrupt, daemon=True).start()
        t0 = time.perf_counter()
        assert cli._run_child([sys.executable, "-c", child]) == (130, True)
        assert time.perf_counter() - t0 < 50
        assert signal.getsignal(signal.SIGTERM) is previous and signal.getsignal(signal.SIGINT) is caller_handler
    finally:
        signal.signal(signal.SIGINT, original)


@pytest.mark.slow
def test_quick_runs_every_table(run_cli, tmp_path, monkeypatch, capfd):
    """Every table's task trains a few steps through its own command line; a second invocation trains nothing."""
    monkeypatch.setenv("SA_MESH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rep"
    code, _, stderr = run_cli(cli.main, ["--quick", "--out", out])
    assert code == 0, stderr + capfd.readouterr().err
    report = (out / "REPORT.md").read_text()
    for e in experiments():
        state = read_state(e, "quick", out, 1 if e.task in ("clevr", "clevrer") else 2)
        assert state.finished and len(state.runs_done) == len(e.runs("quick")), e.name
        assert (out / e.name / "table.md").read_text().strip() in report
    for label in ("Table 1, median of 5 seeds", "Table 2", "Table 3", "Table 4", "Table 5", "Table 6"):
        assert label in report
    assert "Not run yet" not in report and "Not finished" not in report
    links = [part.split("](")[1].split(")")[0] for part in report.split("[")[1:] if "](" in part]
    assert links and all((out / link).is_file() for link in links)
    results = sorted(out.glob("*/*/seed*/results.json"))
    assert len(results) == QUICK_RUNS
    mtimes = [p.stat().st_mtime_ns for p in results]
    capfd.readouterr()

    code, stdout, stderr = run_cli(cli.main, ["--quick", "--out", out])
    assert code == 0, stderr
    assert stdout.count("finished, skipped") == len(experiments())
    assert [p.stat().st_mtime_ns for p in results] == mtimes
    assert "steps ->" not in capfd.readouterr().out  # no task ran
