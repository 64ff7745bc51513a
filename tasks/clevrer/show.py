"""Write a PNG grid of CLEVRER-S/L pairs with their masks overlaid: ``python -m tasks.clevrer.show``.

Each row shows frame 1 | its masks | frame 16 or 128 | its masks; an object keeps its colour across the two
frames. Uses the generator unless ``--data-dir`` points at the real CLEVRER folder.
"""
from __future__ import annotations

import sys

from ..scenes.show import save_grid, show_parser
from .data import load_clevrer


def main(argv: list[str] | None = None) -> int:
    parser = show_parser("clevrer")
    parser.add_argument("--variant", default="S", choices=("S", "L"), help="CLEVRER-S or CLEVRER-L (default: S)")
    parser.add_argument("--workers", type=int, default=1, help="generator processes (default: 1)")
    parser.set_defaults(ncols=2)
    args = parser.parse_args(argv)
    if args.num < 1:
        raise SystemExit("--num must be >= 1")
    data = load_clevrer(args.variant, args.split, data_dir=args.data_dir, num_videos=args.num, seed=args.seed,
                        cache_dir=args.cache_dir, workers=args.workers)
    out = save_grid(data.images[:args.num], data.masks[:args.num], args.out, ncols=args.ncols)
    print(f"wrote {out} ({min(args.num, len(data))} pairs, CLEVRER-{args.variant}, {data.meta.get('source')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
