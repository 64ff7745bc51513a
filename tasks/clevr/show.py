"""Write a PNG grid of CLEVR samples with their masks overlaid: ``python -m tasks.clevr.show``.

Uses the generator unless ``--data-dir`` points at the real CLEVR v1.0 folder (which has no masks, so only
the images are informative there).
"""
from __future__ import annotations

import sys

from ..scenes.show import show_parser, write_samples
from .data import load_clevr


def main(argv: list[str] | None = None) -> int:
    args = show_parser("clevr").parse_args(argv)
    return write_samples(load_clevr(args.split, num_images=args.num, seed=args.seed, data_dir=args.data_dir,
                                    cache_dir=args.cache_dir, workers=args.workers), args)


if __name__ == "__main__":
    sys.exit(main())
