"""Command line of the random-objects experiment (Table 1): ``python -m tasks.random_objects --sigma 0.01``.

Trains SA, SA-SH, SA-EMD and SA-MESH at the paper's budget (20 epochs of 1,000 steps of batch 64) and
prints the table of normalized Hungarian RMSE next to the paper's figures; see ``experiment.py`` for what
is written to the run folder. Exit status: 0 on success, 2 for bad arguments or an unusable run folder
(nothing is written then), 130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues).
"""
import argparse
import math
import sys

from slots.train import TrainingInterrupted, is_main_process

from .experiment import BACKENDS, VARIANTS, ExperimentConfig, format_table, run_experiment

# --quick: about two minutes for all four variants on two CPU cores, enough to show the ordering.
QUICK = {"steps": 1_500, "n_test": 1_280, "eval_every": 250, "ckpt_every": 500}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.random_objects", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sigma", type=_positive_float, default=0.01, help="standard deviation of the objects")
    p.add_argument("--variant", action="append", choices=VARIANTS, dest="variants",
                   help="variant to train (repeatable); default: all four")
    p.add_argument("--seeds", type=_int_at_least(1), default=1, help="seeds 0..N-1; the table shows the median")
    p.add_argument("--quick", action="store_true",
                   help=f"reduced run (about two minutes for all four variants): {QUICK}")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_int_at_least(1), help="optimizer steps per run (default 20,000)")
    budget.add_argument("--epochs", type=_int_at_least(1),
                        help="epochs per run, each n_train / batch_size steps (default 20)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=64)
    p.add_argument("--n-train", type=_int_at_least(1), default=64_000, help="training examples")
    p.add_argument("--n-test", type=_int_at_least(1), help="test examples (default 6,400; --quick 1,280)")
    p.add_argument("--lr", type=_positive_float, default=4e-4, help="peak learning rate")
    p.add_argument("--eval-every", type=_int_at_least(0), help="steps between test evaluations (default 1,000)")
    p.add_argument("--ckpt-every", type=_int_at_least(0), help="steps between checkpoints (default 1,000)")
    p.add_argument("--out", help="run folder (default runs/random_objects/sigma_<sigma>)")
    p.add_argument("--resume", action="store_true",
                   help="continue runs from their checkpoints and reuse finished runs")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="OT kernels: auto = the fused C++ loops on CPU, Triton on CUDA")
    p.add_argument("--jobs", type=_int_at_least(0), default=0,
                   help="runs trained at the same time in separate processes; 0: one per core on CPU "
                        "(at most the number of runs), one on CUDA or under torchrun")
    p.add_argument("--threads", type=_int_at_least(1),
                   help="torch threads per run (default: torch's choice; with several jobs, cores / jobs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of parsed arguments (--quick first, explicit options override it)."""
    kw = dict(QUICK) if args.quick else {}
    if args.steps is not None:
        kw["steps"] = args.steps
    elif args.epochs is not None:
        kw["steps"] = args.epochs * (args.n_train // args.batch_size)
    for name in ("n_test", "eval_every", "ckpt_every"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return ExperimentConfig(sigma=args.sigma, out=args.out, variants=tuple(args.variants or VARIANTS),
                            seeds=args.seeds, n_train=args.n_train, batch_size=args.batch_size, lr=args.lr,
                            backend=args.backend, jobs=args.jobs,
                            resume=args.resume, num_threads=args.threads, progress=not args.no_progress, **kw)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        summary = run_experiment(cfg)
    except TrainingInterrupted as e:
        print(f"\n{e}; rerun with --resume to continue", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except ValueError as e:  # includes slots.train.CheckpointError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if is_main_process():
        print()
        print(format_table(summary))
        print(f"\nwritten to {cfg.out}/ (table.md, table.json, rmse_vs_steps.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
