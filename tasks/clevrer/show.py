"""Pictures of CLEVRER-S/L: ``python -m tasks.clevrer.show``.

Without ``--run``: a PNG grid of data pairs with their masks overlaid; each row shows frame 1 | its masks |
frame 16 or 128 | its masks, and an object keeps its colour across the two frames. Uses the generator unless
``--data-dir`` points at the real CLEVRER folder.

With ``--run DIR`` (a run folder of ``python -m tasks.clevrer``, ``<out>/<variant>/seed<s>``): redraws that
run's ``pictures.png`` from its checkpoint (``tasks.clevrer.pictures``: frames, reconstructions, ground truth
and every slot's alpha mask, a slot in the same colour in both frames), with the run's own data options.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..scenes.show import show_parser, write_samples
from .data import load_clevrer


def _redraw(run: Path) -> Path:
    """Rebuild the model of the run folder ``run`` from its checkpoint and draw its pictures."""
    from slots.train import CHECKPOINT_NAME, CheckpointError

    from ..runs import load_run
    from .experiment import TASK, draw_run_pictures

    trained = load_run(run)
    if trained.task.name != TASK.name:
        raise CheckpointError(f"{run / CHECKPOINT_NAME} is a checkpoint of task {trained.task.name!r}, not "
                              f"{TASK.name!r}")
    cfg = trained.config
    path = draw_run_pictures(trained.model, TASK.data.load_test(cfg), cfg, trained.variant, run)
    if path is None:
        raise ValueError(f"the run in {run} was trained with n_pictures 0: nothing to draw")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = show_parser("clevrer")
    parser.add_argument("--variant", default="S", choices=("S", "L"), help="CLEVRER-S or CLEVRER-L (default: S)")
    parser.add_argument("--run", type=Path, help="a trained run folder: redraw its pictures.png (the data "
                                                 "options are the run's own; the others are ignored)")
    parser.set_defaults(ncols=2)
    args = parser.parse_args(argv)
    if args.run is not None:
        try:
            out = _redraw(args.run)
        except ValueError as e:  # includes slots.train.CheckpointError
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {out}")
        return 0
    data = load_clevrer(args.variant, args.split, data_dir=args.data_dir, num_videos=args.num, seed=args.seed,
                        cache_dir=args.cache_dir, workers=args.workers)
    return write_samples(data, args, f"pairs, CLEVRER-{args.variant}")


if __name__ == "__main__":
    sys.exit(main())
