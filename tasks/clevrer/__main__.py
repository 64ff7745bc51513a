"""Command line of the video object-discovery experiment (Table 5): ``python -m tasks.clevrer --data L``.

Trains SA, SA with fixed noise, SA with learned noise, SA-SH and SA-MESH (``--variant sa-mesh-low-lr`` adds
SA-MESH with a lower MESH step size) on two-frame CLEVRER-S (``--data S``, frames 1 and 16) or CLEVRER-L
(``--data L``, frames 1 and 128) and prints FG-ARI, FG-mIoU and temporal consistency next to the paper's
Table 5; see ``tasks.runner`` for what is written to the run folder, and ``tasks.clevrer.experiment`` for the
model and data. ``--variant`` picks models here as in every task, so the data variant the issue calls
``--variant S`` is ``--data S``. Exit status: 0 on success, 2 for bad arguments, bad input data or an unusable
run folder (nothing is written then), 130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues).
"""
import argparse
import sys

from .. import runner
from . import experiment


def build_parser() -> argparse.ArgumentParser:
    return runner.build_parser(experiment.TASK, __doc__.split("\n\n")[0])


def config_from_args(args: argparse.Namespace) -> runner.Experiment:
    """The :class:`tasks.runner.Experiment` of parsed arguments; the default run folder is
    ``runs/clevrer/<S or L>[_real]/<budget>``."""
    def default_out(cfg) -> str:
        return f"runs/clevrer/{cfg.data}{'_real' if cfg.data_dir else ''}/{args.budget}"

    return runner.experiment_from_args(experiment.TASK, args, default_out)


def main(argv=None) -> int:
    return runner.main(experiment.TASK, argv, __doc__.split("\n\n")[0], experiment=config_from_args)


if __name__ == "__main__":
    sys.exit(main())
