"""Random objects over a range of sigma (beyond the paper's three): where does each variant break?

Trains SA, SA-SH, SA-EMD and SA-MESH at each sigma (1, 0.3, 0.1, 0.03, 0.01, 0.003 by default) through the
random-objects task itself (``tasks.random_objects``: the runner, its default set-up and budget, so the sweep
cannot drift from Table 1's set-up; ``--quick`` or ``--steps`` shorten it), and plots against sigma the
normalized RMSE on the test set and ``background_mass``, the share of the learned input marginal on the zero
inputs (uniform: 100 / 105 = 0.952; near 1 is the marginal trap). The runs of sigma s go to
``<out>/sigma_<s>/`` as the task writes them (``--resume`` continues and reuses them). Writes sigma_sweep.csv
(one row per sigma and variant: the median over seeds of both numbers, and the per-seed values) and
sigma_sweep.png.
"""
import json
import statistics

from tasks.random_objects import TASK, VARIANTS
from tasks.random_objects.__main__ import build_parser as task_parser
from tasks.random_objects.__main__ import config_from_args

from .. import runner
from ..runner import int_at_least, positive_float
from .common import output_dir, pyplot, save_figure, write_csv

__all__ = ["SIGMAS", "compute", "plot", "add_arguments", "run"]

SIGMAS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)


def _task_argv(args, sigma: float, out) -> list[str]:
    """The random-objects command line of one sigma: the task's defaults, changed only where asked."""
    argv = ["--sigma", repr(sigma), "--out", str(out / f"sigma_{sigma:g}"), "--seeds", str(args.seeds)]
    for v in args.variants or VARIANTS:
        argv += ["--variant", v]
    if args.quick:
        argv.append("--quick")
    for flag, value in (("--steps", args.steps), ("--jobs", args.jobs), ("--threads", args.threads)):
        if value is not None:
            argv += [flag, str(value)]
    if args.resume:
        argv.append("--resume")
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def compute(args, out) -> list[dict]:
    """Run (or reuse, with ``--resume``) every sigma; one dict per (sigma, variant): sigma, variant, rmse_norm
    and background_mass (medians over seeds; background_mass is empty for SA, which has no marginal), and
    their per-seed values."""
    rows = []
    for sigma in args.sigmas:
        exp = config_from_args(task_parser().parse_args(_task_argv(args, sigma, out)))
        exp.variants = tuple(dict.fromkeys(exp.variants))
        print(f"== sigma {sigma:g}: {', '.join(exp.variants)}, {exp.budget.steps:,} steps, {exp.seeds} seed(s) "
              f"-> {exp.out}", flush=True)
        runner.run(TASK, exp)
        for v in exp.variants:
            evals = [json.loads((runner.run_dir(exp, v, s) / "results.json").read_text())["eval"]
                     for s in range(exp.seeds)]
            rmse = [e["rmse_norm"] for e in evals]
            mass = [e["background_mass"] for e in evals if "background_mass" in e]
            rows.append({"sigma": sigma, "variant": v, "rmse_norm": statistics.median(rmse),
                         "background_mass": statistics.median(mass) if mass else "",
                         "rmse_per_seed": " ".join(f"{x:.4f}" for x in rmse),
                         "background_mass_per_seed": " ".join(f"{x:.4f}" for x in mass)})
    return rows


def plot(rows: list[dict], path) -> None:
    plt = pyplot()
    fig, (ax_rmse, ax_mass) = plt.subplots(1, 2, figsize=(10, 4))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for i, v in enumerate(variants):
        mine = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["sigma"])
        sigmas = [r["sigma"] for r in mine]
        ax_rmse.plot(sigmas, [r["rmse_norm"] for r in mine], marker="o", color=f"C{i}", label=v)
        with_mass = [r for r in mine if r["background_mass"] != ""]
        if with_mass:
            ax_mass.plot([r["sigma"] for r in with_mass], [r["background_mass"] for r in with_mass], marker="o",
                         color=f"C{i}", label=v)
    ax_rmse.axhline(1.0, color="gray", ls="--", lw=1, label="always zeros")
    ax_mass.axhline(100 / 105, color="gray", ls=":", lw=1, label="uniform marginal")
    for ax, label in ((ax_rmse, "test RMSE / sigma"), (ax_mass, "input marginal's share on the zero inputs")):
        ax.set_xscale("log")
        ax.set_xlabel("sigma (scale of the objects)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    save_figure(fig, path, "Random objects against sigma (Table 1's set-up)")


def add_arguments(p) -> None:
    p.add_argument("--sigmas", type=positive_float, nargs="+", default=list(SIGMAS), help="the sigmas to train")
    p.add_argument("--variant", action="append", choices=list(VARIANTS), dest="variants",
                   help="variant to train (repeatable; default: all four)")
    p.add_argument("--seeds", type=int_at_least(1), default=1, help="seeds 0..N-1 per sigma (the median is shown)")
    p.add_argument("--quick", action="store_true", help="the random-objects task's quick budget (not a result)")
    p.add_argument("--steps", type=int_at_least(1), help="steps per run (default: the task's budget)")
    p.add_argument("--jobs", type=int_at_least(1), help="runs at once (default: the task's, one per core)")
    p.add_argument("--threads", type=int_at_least(1), help="torch threads per run")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs and reuse finished ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> list[dict]:
    args.sigmas = list(dict.fromkeys(args.sigmas))
    out = output_dir("sigma_sweep", args.out)
    rows = compute(args, out)
    write_csv(out / "sigma_sweep.csv", rows)
    plot(rows, out / "sigma_sweep.png")
    print(f"{'sigma':>7} {'variant':<8} {'RMSE / sigma':>12} {'marginal on zeros':>17}")
    for r in rows:
        mass = f"{r['background_mass']:.3f}" if r["background_mass"] != "" else "-"
        print(f"{r['sigma']:>7g} {r['variant']:<8} {r['rmse_norm']:>12.3f} {mass:>17}")
    print(f"written to {out}/ (sigma_sweep.png, sigma_sweep.csv, one folder per sigma)")
    return rows
