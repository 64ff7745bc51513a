"""Export a trained run's model: ``python -m tasks.export RUN_DIR --to DIR``.

Writes ``DIR/model.safetensors`` (the weights, tensors only) and ``DIR/config.json`` (the model's kind and
configuration, and the task, variant, seed, step and data options of the run), which is all
``slots.load_pretrained(DIR)`` needs to return the model, without the run folder or the training code::

    model = slots.load_pretrained("exported/sa-mesh", device="cuda")   # eval mode
    out = model(images)                                                # as config.json's "inputs" says

Exit status: 0 on success, 2 for a folder without a readable run or a target that already holds an export
(``--force`` replaces it).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from slots.pretrained import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

from .runs import Run, load_run, run_parser

__all__ = ["main", "export_run"]


def export_run(run: Run, to, force: bool = False) -> Path:
    """Write the export of ``run`` (a :class:`tasks.runs.Run`) to the folder ``to``; returns the folder.

    Raises:
        ValueError if ``to`` is a file, or already holds model.safetensors or config.json and not ``force``.
    """
    to = Path(to)
    if to.exists() and not to.is_dir():
        raise ValueError(f"{to} is a file; --to takes a folder")
    existing = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if (to / name).exists()]
    if existing and not force:
        raise ValueError(f"{to} already holds {', '.join(existing)}; choose another folder or pass --force")
    info = {"task": run.task.name, "variant": run.variant, "seed": run.seed, "step": run.step,
            "task_config": asdict(run.config)}
    return save_pretrained(run.model, to, info)


def build_parser() -> argparse.ArgumentParser:
    p = run_parser("python -m tasks.export", __doc__.split("\n\n")[0], device=False)
    p.add_argument("--to", type=Path, required=True, help="the folder to write model.safetensors and config.json to")
    p.add_argument("--force", action="store_true", help="replace an export already in --to")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = load_run(args.run_dir)
        folder = export_run(run, args.to, args.force)
    except ValueError as e:  # includes CheckpointError and PretrainedError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {run.task.name} {run.task.variants[run.variant]} (seed {run.seed}, step {run.step}) to "
          f"{folder}/ ({WEIGHTS_NAME}, {CONFIG_NAME}); load it with slots.load_pretrained({str(folder)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
