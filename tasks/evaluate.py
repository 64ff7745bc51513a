"""Evaluate a trained run: ``python -m tasks.evaluate RUN_DIR [--data-dir DIR] [--split test|train]``.

Rebuilds the run's model from its folder (``tasks.runs.load_run``: the checkpoint's task, options, variant and
weights), evaluates it on the run's test data (or its training data, or the data of ``--data-dir`` for a task
that reads real data) exactly as the training loop's evaluation does (``tasks.runs.evaluate_run``), prints the
task's metrics and writes them to ``RUN_DIR/eval_<split>.json`` (or ``--json PATH``). On the run's own test
data, with the training's device and thread count, the metrics equal ``results.json``'s "eval"; the command
says whether they do.

Exit status: 0 on success, 2 for a folder without a readable run, bad options or unreadable data.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from slots.checkpoint import RESULTS_NAME, write_json
from slots.runtime import pick_device

from .runner import int_at_least
from .runs import EVAL_SPLITS, Run, evaluate_run, load_eval_data, load_run, run_parser

__all__ = ["main", "format_metrics"]


def format_metrics(run: Run, metrics: dict[str, float]) -> str:
    """A markdown table of ``metrics``: the task's table metrics first (its labels and formats), then any others."""
    known = {m.key: m for m in run.task.metrics}
    lines = ["| metric | value |", "|---|---|"]
    for key in [*(k for k in known if k in metrics), *(k for k in metrics if k not in known)]:
        label, fmt = (known[key].label, known[key].fmt) if key in known else (key, ".4g")
        lines.append(f"| {label} | {metrics[key]:{fmt}} |")
    return "\n".join(lines)


def _compare_with_results(run: Run, metrics: dict) -> str | None:
    """A sentence saying whether ``metrics`` equal results.json's "eval" (None without a results.json of this
    checkpoint's step)."""
    path = run.path / RESULTS_NAME
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if results.get("step") != run.step or not isinstance(results.get("eval"), dict):
        return None
    # compared as JSON text, so that a NaN equals a NaN
    if json.dumps(results["eval"], sort_keys=True) == json.dumps(metrics, sort_keys=True):
        return f"identical to {path}"
    diff = sorted(k for k in set(metrics) | set(results["eval"]) if results["eval"].get(k) != metrics.get(k))
    return (f"differs from {path} in {', '.join(diff)} (another device, torch build or thread count than the "
            "training's?)")


def build_parser() -> argparse.ArgumentParser:
    p = run_parser("python -m tasks.evaluate", __doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="evaluate on the real data of this folder (tasks that read real data: clevr, "
                                      "clevrer, multi_dsprites, clevrtex); default: the run's own data")
    p.add_argument("--split", choices=EVAL_SPLITS, default="test", help="the data split to evaluate")
    p.add_argument("--json", type=Path, help="where to write the metrics (default: RUN_DIR/eval_<split>.json)")
    p.add_argument("--threads", type=int_at_least(1),
                   help="torch threads (default: the run's training setting, else torch's default)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = load_run(args.run_dir)
        device = pick_device(args.device, 0)
        threads = args.threads or run.train_config.get("num_threads")
        if threads:
            torch.set_num_threads(threads)
        cfg, data = load_eval_data(run, args.split, args.data_dir)
        metrics = evaluate_run(run, data, cfg, device)
        target = args.json or run.path / f"eval_{args.split}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, {"task": run.task.name, "variant": run.variant, "seed": run.seed, "step": run.step,
                            "split": args.split, "data_dir": getattr(cfg, "data_dir", None), "eval": metrics})
    except ValueError as e:  # includes CheckpointError, DataFormatError, MissingDataError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{run.task.name}, {run.task.variants[run.variant]}, seed {run.seed}, step {run.step}: {args.split} split"
          + (f" of {args.data_dir}" if args.data_dir else ""))
    print(format_metrics(run, metrics))
    if args.split == "test" and args.data_dir is None:
        note = _compare_with_results(run, metrics)
        if note:
            print(note)
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
