"""Write a PNG grid of CLEVR samples with their masks overlaid: ``python -m tasks.clevr.show``.

Uses the generator unless ``--data-dir`` points at the real CLEVR v1.0 folder (which has no masks, so only
the images are informative there).
"""
from __future__ import annotations

import sys

from ..runner import int_at_least
from ..scenes.show import save_grid, show_parser
from .data import load_clevr


def main(argv: list[str] | None = None) -> int:
    parser = show_parser("clevr")
    parser.add_argument("--workers", type=int_at_least(1), default=1, help="generator processes (default: 1)")
    args = parser.parse_args(argv)
    data = load_clevr(args.split, num_images=args.num, seed=args.seed, data_dir=args.data_dir,
                      cache_dir=args.cache_dir, workers=args.workers)
    out = save_grid(data.images[:args.num], data.masks[:args.num], args.out, ncols=args.ncols)
    print(f"wrote {out} ({min(args.num, len(data))} samples, {data.meta.get('source')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
