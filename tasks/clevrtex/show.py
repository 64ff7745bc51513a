"""Write a PNG grid of ClevrTex samples with their masks overlaid: ``python -m tasks.clevrtex.show``.

Uses the generator unless ``--data-dir`` points at the real ``clevrtex_full`` folder (or its parent).
"""
from __future__ import annotations

import sys

from ..scenes.show import save_grid, show_parser
from .data import load_clevrtex


def main(argv: list[str] | None = None) -> int:
    parser = show_parser("clevrtex")
    parser.add_argument("--variant", default="full", help="real-data variant (default: full)")
    parser.add_argument("--workers", type=int, default=1, help="generator processes (default: 1)")
    args = parser.parse_args(argv)
    if args.num < 1:
        raise SystemExit("--num must be >= 1")
    data = load_clevrtex(args.split, num_images=args.num, seed=args.seed, data_dir=args.data_dir,
                         variant=args.variant, cache_dir=args.cache_dir, workers=args.workers)
    out = save_grid(data.images[:args.num], data.masks[:args.num], args.out, ncols=args.ncols)
    print(f"wrote {out} ({min(args.num, len(data))} samples, {data.meta.get('source')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
