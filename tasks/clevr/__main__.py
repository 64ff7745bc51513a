"""Command line of the CLEVR property-prediction experiment (Tables 2 and 6): ``python -m tasks.clevr``.

Trains SA, SA-SH, SA-EMD and SA-MESH on CLEVR set prediction (generated scenes, or CLEVR v1.0 with
``--data-dir``) and prints AP per distance threshold next to the paper's Table 2 (Table 6 with
``--no-implicit-grad``); see ``tasks.runner`` for what is written to the run folder. Exit status: 0 on
success, 2 for bad arguments, bad data (named in the message) or an unusable run folder (nothing is
written then), 130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues).
"""
import argparse
import sys

from .. import runner
from . import experiment


def build_parser() -> argparse.ArgumentParser:
    return runner.build_parser(experiment.TASK, __doc__.split("\n\n")[0])


def config_from_args(args: argparse.Namespace) -> runner.Experiment:
    """The :class:`tasks.runner.Experiment` of parsed arguments; the default run folder is
    ``runs/clevr/<budget>[-real][-no-implicit]``."""
    suffix = ("-real" if args.data_dir else "") + ("-no-implicit" if args.no_implicit_grad else "")
    return runner.experiment_from_args(experiment.TASK, args, lambda cfg: f"runs/clevr/{args.budget}{suffix}")


def main(argv=None) -> int:
    return runner.main(experiment.TASK, argv, __doc__.split("\n\n")[0], experiment=config_from_args)


if __name__ == "__main__":
    sys.exit(main())
