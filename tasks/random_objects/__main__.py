"""Command line of the random-objects experiment (Table 1): ``python -m tasks.random_objects --sigma 0.01``.

Trains SA, SA-SH, SA-EMD and SA-MESH at the paper's budget (20 epochs of 1,000 steps of batch 64) and
prints the table of normalized Hungarian RMSE next to the paper's figures; see ``tasks.runner`` for what is
written to the run folder. Exit status: 0 on success, 2 for bad arguments or an unusable run folder
(nothing is written then), 130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues).
"""
import sys

from .. import runner
from . import experiment

build_parser, config_from_args, main = runner.entry_points(experiment, __doc__)

if __name__ == "__main__":
    sys.exit(main())
