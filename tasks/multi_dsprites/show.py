"""Write a PNG grid of Multi-dSprites samples with their masks overlaid: ``python -m tasks.multi_dsprites.show``.

Uses the generator unless ``--data-dir`` points at the real TFRecord/HDF5 file (or its folder).
"""
from __future__ import annotations

import sys

from ..scenes.show import save_grid, show_parser
from .data import load_multi_dsprites


def main(argv: list[str] | None = None) -> int:
    args = show_parser("multi_dsprites").parse_args(argv)
    if args.num < 1:
        raise SystemExit("--num must be >= 1")
    data = load_multi_dsprites(args.split, num_images=args.num, seed=args.seed, data_dir=args.data_dir,
                               cache_dir=args.cache_dir)
    out = save_grid(data.images[:args.num], data.masks[:args.num], args.out, ncols=args.ncols)
    print(f"wrote {out} ({min(args.num, len(data))} samples, {data.meta.get('source')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
