"""Pictures of Multi-dSprites: ``python -m tasks.multi_dsprites.show`` (``tasks.object_discovery.show_command``).

Without ``--run``: a PNG grid of data samples with their masks overlaid (the generator unless ``--data-dir``
points at the real TFRecord/HDF5 file or its folder). With ``--run DIR`` (a run folder or an experiment
folder of ``python -m tasks.multi_dsprites``): the Fig. 2 / App. J picture of every trained run found, on
the first ``--num`` test images, written to each run folder as ``examples.png`` (or into the folder ``--out``).
"""
import functools
import sys

from ..object_discovery import show_command

main = functools.partial(show_command, "multi_dsprites")

if __name__ == "__main__":
    sys.exit(main())
