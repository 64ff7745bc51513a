"""The progress line and ``REPORT.md`` of a reproduction (``python -m tasks.reproduce``).

Progress: tables whose experiments have all finished, runs with a ``results.json``, and the time left: for every
run not finished, its steps left times its step time, divided over the runs an experiment trains at once (one
per core on a CPU, one on a GPU). A run's step time is, in this order: its own (the newest training record of
its ``metrics.jsonl``), the median step time of the finished (``train_step_ms``) and running runs of its
variant in this reproduction's experiments of the same task, or such a measurement of another variant of the
task scaled by the task's ``step_cost`` table. Runs without any of these are not counted, and the line says how
many; with no measurement at all the time left is "unknown".

REPORT.md: per table, each experiment's ``table.md`` (our figures beside the paper's, as the task writes it),
its command, budget, status, wall time, commit, machine and date (from its ``reproduce.json``), and relative links
to the pictures its runs wrote; an experiment that has not run says so.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from slots.checkpoint import METRICS_NAME, RESULTS_NAME, atomic_write

from .plan import BUDGETS, TABLES, Experiment, State

__all__ = ["format_duration", "machine", "commit", "now", "time_left", "progress_line", "write_report",
           "state_record", "REPORT_NAME"]

REPORT_NAME = "REPORT.md"
# the CPU features that decide which kernels run (the C++ OT loops, PyTorch's bfloat16 convolutions)
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
_REPO = Path(__file__).resolve().parents[2]


def format_duration(seconds: float) -> str:
    """e.g. "1 h 05 min", "12 min 30 s", "8 s"."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def now() -> str:
    """The current UTC time, e.g. "2026-12-08 01:30 UTC"."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> str:
    """The CPU model, its core count and SIMD flags (from /proc/cpuinfo), and the GPU when torch sees one."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            present = set(value.split())
            flags = [f for f in _FLAGS if f in present]
            break
    text = f"{model}, {os.cpu_count()} cores" + (f" (flags: {' '.join(flags)})" if flags else "")
    import torch

    if torch.cuda.is_available():
        text += f"; GPU: {torch.cuda.get_device_name(0)}"
    return text


def commit() -> str:
    """``git rev-parse HEAD`` of this checkout, "(with uncommitted changes)" added when tracked files differ;
    "unknown" outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def _last_train_record(path: Path) -> dict | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("split") == "train":
            return record
    return None


def _finished_step_ms(folder: Path, exp: Experiment, states: dict) -> dict[str, list[float]]:
    """variant -> train_step_ms of the finished runs of ``exp``."""
    found: dict[str, list[float]] = {}
    for v, s in states[exp.name].runs_done:
        try:
            ms = json.loads((folder / exp.name / v / f"seed{s}" / RESULTS_NAME).read_text()).get("train_step_ms")
        except (OSError, json.JSONDecodeError):
            continue
        if ms:
            found.setdefault(v, []).append(float(ms))
    return found


def _step_costs(task: str) -> dict[str, float]:
    from ..runs import get_task

    try:
        return dict(get_task(task).report.step_cost or {})
    except (ValueError, ImportError):
        return {}


def time_left(plan: list[Experiment], budget: str, out: Path, states: dict, steps: dict,
              parallel: int) -> tuple[float | None, int]:
    """(seconds left, runs without a step time) of the runs of ``plan`` not finished (module docstring).

    ``states``: experiment name -> :class:`~tasks.reproduce.plan.State`; ``steps``: experiment name -> steps per
    run (or None); ``parallel``: runs an experiment trains at once, at most. Seconds is None when no run left
    has a step time (and some are left).
    """
    measured: dict[str, dict[str, list[float]]] = {}  # task -> variant -> step times of finished and running runs
    running: dict[tuple[str, str, int], tuple[int, float | None]] = {}  # (experiment, variant, seed) -> (step, ms)
    for exp in plan:
        for v, ms in _finished_step_ms(out, exp, states).items():
            measured.setdefault(exp.task, {}).setdefault(v, []).extend(ms)
        for v, s in exp.runs(budget):
            if (v, s) in states[exp.name].runs_done:
                continue
            record = _last_train_record(out / exp.name / v / f"seed{s}" / METRICS_NAME) or {}
            ms = 1000 / record["steps_per_s"] if record.get("steps_per_s") else None
            running[exp.name, v, s] = (record.get("step", 0), ms)
            if ms is not None:
                measured.setdefault(exp.task, {}).setdefault(v, []).append(ms)
    total, unmeasured, counted = 0.0, 0, 0
    for exp in plan:
        pending = [r for r in exp.runs(budget) if r not in states[exp.name].runs_done]
        if not pending:
            continue
        work = 0.0
        for v, s in pending:
            done, ms = running[exp.name, v, s]
            ms = ms if ms is not None else _estimate(exp.task, v, measured)
            if ms is None or steps.get(exp.name) is None:
                unmeasured += 1
                continue
            work += max(0, steps[exp.name] - done) * ms / 1000
            counted += 1
        total += work / min(parallel, len(pending))
    return (None if unmeasured and not counted else total), unmeasured


def _estimate(task: str, variant: str, measured: dict) -> float | None:
    """Step time (ms) of a run of ``variant`` from the finished runs of ``task`` (scaled by its step costs)."""
    mine = measured.get(task, {})
    if mine.get(variant):
        return statistics.median(mine[variant])
    costs = _step_costs(task) if mine else {}
    for other, ms in mine.items():
        if costs.get(other) and costs.get(variant):
            return statistics.median(ms) * costs[variant] / costs[other]
    return None


def progress_line(plan: list[Experiment], budget: str, out: Path, states: dict, steps: dict, parallel: int) -> str:
    """"tables 2/6 done, runs 17/54 done, time left about 1 h 20 min (...)" for the tables of ``plan``."""
    tables = sorted({e.table for e in plan})
    tables_done = sum(all(states[e.name].finished for e in plan if e.table == t) for t in tables)
    runs = sum(len(e.runs(budget)) for e in plan)
    done = sum(len(states[e.name].runs_done) for e in plan)
    seconds, unmeasured = time_left(plan, budget, out, states, steps, parallel)
    if done == runs:
        left = "nothing left to run"
    elif seconds is None:
        left = "time left unknown (no step time measured yet)"
    else:
        left = f"time left about {format_duration(seconds)} (from measured step times"
        left += f"; {unmeasured} run(s) not measured yet, not counted)" if unmeasured else ")"
    return f"progress: tables {tables_done}/{len(tables)} done, runs {done}/{runs} done, {left}"


def _pictures(folder: Path, base: Path) -> list[str]:
    """Links to the PNGs of an experiment folder (its plot, then its runs' pictures), relative to ``base``."""
    paths = sorted(folder.glob("*.png")) + sorted(folder.glob("*/seed*/*.png"))
    return [f"[{p.relative_to(folder).as_posix()}]({p.relative_to(base).as_posix()})" for p in paths]


def _section(exp: Experiment, budget: str, out: Path, state: State) -> list[str]:
    folder = out / exp.name
    record = state.record
    lines = [f"### {exp.title}", "", f"Budget: {budget} (the task's `--budget {BUDGETS[budget][exp.task]}`"
             + (", cut to a few steps on tiny data" if budget == "quick" else "")
             + f"). Command: `{' '.join(exp.command(budget, out))}`", ""]
    runs = len(exp.runs(budget))
    if state.finished:
        lines.append(f"Finished: {len(state.runs_done)}/{runs} runs; wall time {format_duration(record['wall_s'])}"
                     f" over {record.get('attempts', 1)} attempt(s); commit {record.get('commit', 'unknown')}; "
                     f"machine: {record.get('machine', 'unknown')}; finished {record.get('finished', 'unknown')}.")
    elif state.started or record:
        status = record.get("status", "interrupted")
        wall = f"; wall time so far {format_duration(record['wall_s'])}" if record.get("wall_s") else ""
        lines.append(f"Not finished ({status}): {len(state.runs_done)}/{runs} runs done{wall}. "
                     "Continue with `python -m tasks.reproduce --resume` (same options).")
    else:
        lines.append("Not run yet.")
    table = folder / "table.md"
    if table.is_file():
        lines += ["", table.read_text().rstrip()]
        if not state.finished:
            lines += ["", "(This table.md is from an earlier, unfinished attempt.)"]
    pictures = _pictures(folder, out) if folder.is_dir() else []
    if pictures:
        lines += ["", "Pictures: " + ", ".join(pictures)]
    return lines + [""]


def write_report(plan: list[Experiment], budget: str, out: Path, states: dict, command: str) -> Path:
    """Write ``out/REPORT.md`` for every table of :data:`TABLES` (module docstring); ``plan`` holds all of their
    experiments. Returns its path."""
    budget_text = {"cpu": "each task's CPU budget", "paper": "each task's paper budget (meant for a GPU)",
                   "quick": "a few steps per run on tiny generated data: a check of the pipeline, not a result"}
    wall = sum(s.record.get("wall_s", 0.0) for s in states.values())
    lines = ["# Reproducing the paper's tables", "",
             f"Budget: {budget} ({budget_text[budget]}). Written {now()} by `{command}`; commit {commit()}; "
             f"machine: {machine()}.", "",
             f"Wall time of the experiments that ran: {format_duration(wall)} (summed over their attempts).", "",
             "Each table below is the task's own `table.md`: our figures beside the paper's (labelled as the "
             "paper's). Every experiment's folder is beside this file; its `reproduce.json` holds its command, "
             "wall time, commit, machine and dates.", ""]
    for key, title in TABLES.items():
        lines += [f"## {title}", ""]
        for exp in (e for e in plan if e.table == key):
            lines += _section(exp, budget, out, states[exp.name])
        if key == "4":
            lines += ["ClevrTex's OOD and CAMO sets: the paper's Table 4 has no columns for them, and the task reads "
                      "them only from the real data (`python -m tasks.fetch clevrtex_ood` / `clevrtex_camo`, then "
                      "`python -m tasks.clevrtex --data-dir DIR --data-variant outd|camo`), so they are not run "
                      "here.", ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    atomic_write(path, lambda f: f.write("\n".join(lines)), mode="w")
    return path


def state_record(previous: dict, command: list[str], wall_s: float, status: str) -> dict:
    """The ``reproduce.json`` after one more attempt of ``command`` that took ``wall_s`` and ended in ``status``."""
    record = {"command": command, "status": status,
              "wall_s": previous.get("wall_s", 0.0) + wall_s if previous.get("command") == command else wall_s,
              "attempts": previous.get("attempts", 0) + 1 if previous.get("command") == command else 1,
              "started": previous.get("started", now()) if previous.get("command") == command else now(),
              "commit": commit(), "machine": machine()}
    if status == "finished":
        record["finished"] = now()
    return record
