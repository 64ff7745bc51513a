"""Pictures of Multi-dSprites: ``python -m tasks.multi_dsprites.show``.

Without ``--run``: a PNG grid of data samples with their masks overlaid (the generator unless ``--data-dir``
points at the real TFRecord/HDF5 file or its folder). With ``--run DIR`` (a run folder or an experiment
folder of ``python -m tasks.multi_dsprites``): the Fig. 2 / App. J picture of every trained run found, on
the first ``--num`` test images (input, reconstruction, attention maps, alpha masks, ground truth), written
to each run folder as ``examples.png`` (or into the folder ``--out``).
"""
from __future__ import annotations

import sys

from ..object_discovery import show_command
from .data import DEFAULT_VARIANT, load_multi_dsprites


def _samples(args):
    return load_multi_dsprites(args.split, num_images=args.num, seed=args.seed, data_dir=args.data_dir,
                               cache_dir=args.cache_dir, variant=args.variant)


def _spec():
    from .experiment import DATASET, TASK

    return TASK, DATASET


def _arguments(parser) -> None:
    parser.add_argument("--variant", default=DEFAULT_VARIANT, help="data variant of the samples")


def main(argv: list[str] | None = None) -> int:
    return show_command(argv, "multi_dsprites", _samples, _spec, _arguments)


if __name__ == "__main__":
    sys.exit(main())
