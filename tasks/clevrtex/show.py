"""Pictures of ClevrTex: ``python -m tasks.clevrtex.show``.

Without ``--run``: a PNG grid of data samples with their masks overlaid (the generator unless ``--data-dir``
points at the real ``clevrtex_full`` folder or its parent). With ``--run DIR`` (a run folder or an
experiment folder of ``python -m tasks.clevrtex``): the App. J picture of every trained run found, on the
first ``--num`` test images, written to each run folder as ``examples.png`` (or into the folder ``--out``).
"""
from __future__ import annotations

import sys

from ..object_discovery import show_command
from ..runner import int_at_least
from .data import load_clevrtex


def _samples(args):
    return load_clevrtex(args.split, num_images=args.num, seed=args.seed, data_dir=args.data_dir,
                         variant=args.variant, cache_dir=args.cache_dir, workers=args.workers)


def _spec():
    from .experiment import DATASET, TASK

    return TASK, DATASET


def _arguments(parser) -> None:
    parser.add_argument("--variant", default="full", help="real-data variant (default: full)")
    parser.add_argument("--workers", type=int_at_least(1), default=1, help="generator processes (default: 1)")


def main(argv: list[str] | None = None) -> int:
    return show_command(argv, "clevrtex", _samples, _spec, _arguments)


if __name__ == "__main__":
    sys.exit(main())
