"""Command line of the CLEVR property-prediction experiment (Tables 2 and 6): ``python -m tasks.clevr``.

Trains SA, SA-SH, SA-EMD and SA-MESH on CLEVR set prediction (generated scenes, or CLEVR v1.0 with
``--data-dir``) and prints AP per distance threshold next to the paper's Table 2 (Table 6 with
``--no-implicit-grad``); see ``tasks.runner`` for what is written to the run folder. Exit status: 0 on
success, 2 for bad arguments, bad data (named in the message) or an unusable run folder (nothing is
written then), 130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues).
"""
import sys

from .. import runner
from . import experiment

build_parser, config_from_args, main = runner.entry_points(experiment, __doc__)

if __name__ == "__main__":
    sys.exit(main())
