"""Command line of the video object-discovery experiment (Table 5): ``python -m tasks.clevrer --data L``.

Trains SA, SA with fixed noise, SA with learned noise, SA-SH and SA-MESH (``--variant sa-mesh-low-lr`` adds
SA-MESH with a lower MESH step size) on two-frame CLEVRER-S (``--data S``, frames 1 and 16) or CLEVRER-L
(``--data L``, frames 1 and 128) and prints FG-ARI, FG-mIoU and temporal consistency next to the paper's
Table 5; see ``tasks.runner`` for what is written to the run folder, and ``tasks.clevrer.experiment`` for the
model and data. ``--variant`` picks models here as in every task, so the data variant the issue calls
``--variant S`` is ``--data S``. Exit status: 0 on success, 2 for bad arguments, bad input data or an unusable
run folder (nothing is written then), 130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues).
"""
import sys

from .. import runner
from . import experiment

build_parser, config_from_args, main = runner.entry_points(experiment, __doc__)

if __name__ == "__main__":
    sys.exit(main())
