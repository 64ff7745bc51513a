"""Command line of the random-objects experiment (Table 1): ``python -m tasks.random_objects --sigma 0.01``.

Trains SA, SA-SH, SA-EMD and SA-MESH at the paper's budget (20 epochs of 1,000 steps of batch 64) and
prints the table of normalized Hungarian RMSE next to the paper's figures; see ``tasks.runner`` for what is
written to the run folder. Exit status: 0 on success, 2 for bad arguments or an unusable run folder
(nothing is written then), 130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues).
"""
import argparse
import dataclasses
import sys

from .. import runner
from . import experiment


def build_parser() -> argparse.ArgumentParser:
    return runner.build_parser(experiment.TASK, __doc__.split("\n\n")[0])


def _default_out(cfg) -> str:
    return f"runs/random_objects/sigma_{cfg.sigma:g}"


def config_from_args(args: argparse.Namespace) -> runner.Experiment:
    """The :class:`tasks.runner.Experiment` of parsed arguments (budget first, explicit options override it;
    ``--epochs`` is steps = epochs * (n_train // batch_size))."""
    exp = runner.experiment_from_args(experiment.TASK, args, _default_out)
    if args.epochs is not None:
        exp.budget = dataclasses.replace(exp.budget, steps=args.epochs * (exp.config.n_train // exp.budget.batch_size))
    return exp


def main(argv=None) -> int:
    return runner.main(experiment.TASK, argv, __doc__.split("\n\n")[0], experiment=config_from_args)


if __name__ == "__main__":
    sys.exit(main())
