"""Fig. 5 (App. I): the derivative of a learned MESH objective, trained end to end, beside the derivative
of the entropy's summand, d/dp (-p log p) = -log p - 1.

The learned objective is ``OTConfig(mesh_objective="learned")``: f, a 2-layer MLP (1 -> 32 -> 1, ReLU)
applied to every entry of the plan and summed, minimized by MESH's steps in place of the entropy, and
trained with the rest of SA-MESH on random objects (the random-objects task in its default set-up,
``tasks.analysis.training``, sigma 0.01 by default) through the MESH steps (second order:
``straight_through=False``). The default budget is short (printed;
``--paper-budget`` for Table 1's 20,000 steps). f' is shown at initialization and after training, for
p in [1e-8, 1] on a log axis (the entries of an attention plan of this model lie in [0, 1]: its input
marginals sum to 5 over 105 inputs), beside a histogram of the trained model's plan entries on test
examples. Since MESH normalizes its gradient steps, only the shape and sign of f'
matter, not its scale; the Pearson correlation of f' with -log p - 1 is printed, on a log-spaced grid
over [1e-8, 1] and on the part of it between the 1st and 99th percentile of the trained plan's entries.
f is piecewise linear, so f' is a step function.

Writes fig5.png, fig5.csv (p, the entropy's derivative, f' at initialization and after training) and
the training run (checkpoints, metrics.jsonl, results.json) under run/sa-mesh/seed<s>/; ``--run DIR`` plots
a finished run folder instead (e.g. ``runs/analysis/variants/learned-objective/sa-mesh/seed0``).
"""
import math
from pathlib import Path

import torch

from tasks.random_objects.data import make_split

from .common import output_dir, pyplot, save_figure, write_csv
from .training import add_budget_arguments, budget_from_args, initial_model, read_run, train_sa_mesh

__all__ = ["OPTIONS", "SHORT_STEPS", "compute", "plot", "add_arguments", "run"]

OPTIONS = {"mesh_objective": "learned", "straight_through": False}  # App. I, on top of the task's defaults
# The default budget: a few minutes on two CPU cores (a step of this variant costs several plain SA-MESH steps).
SHORT_STEPS = 400


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float((x * y).sum()) / denom if denom > 0 else math.nan


def compute(out_dir, budget, sigma: float = 0.01, seed: int = 0, resume: bool = False, progress: bool = True,
            points: int = 1000, run_dir=None) -> dict:
    """Train the learned objective (or read a finished run folder ``run_dir``: then sigma and seed are the
    run's, and "budget" is None) and tabulate the derivatives.

    Returns:
        {"rows": one dict per grid point p (log-spaced over [1e-8, 1]): p, entropy_derivative,
             learned_initial, learned_trained (f' at initialization and after training),
         "plan_entries": (N,) tensor of the trained model's last-iteration plan entries on 64 test examples,
         "plan_range": (their 1st, 99th percentile),
         "corr_initial", "corr_trained": Pearson correlation of f' with -log p - 1 on the grid,
         "corr_initial_in_range", "corr_trained_in_range": the same on the grid points in plan_range,
         "results": the training run's results, "budget": the budget (None for a run read back)}
    """
    if run_dir is not None:
        model, results = read_run(run_dir, OPTIONS)
        budget, sigma, seed = None, results["task_config"]["sigma"], results["task_config"]["seed"]
    else:
        model, results, _ = train_sa_mesh(OPTIONS, Path(out_dir) / "run", budget, sigma, seed, resume, progress)
    initial = initial_model(OPTIONS, sigma, seed).slot_attention.mesh_variant.objective
    trained = model.slot_attention.mesh_variant.objective
    x, _ = make_split("test", 64, sigma, 0)[torch.arange(64)]
    model.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)  # the slots' initialization and MESH's noise
        _, plan = model.slot_attention(x)  # (64, 105, 5): the last iteration's plan
    entries = plan.flatten()
    lo, hi = (float(q) for q in torch.quantile(entries.double(), torch.tensor([0.01, 0.99], dtype=torch.float64)))
    p = torch.logspace(-8, 0, points)
    entropy = -torch.log(p) - 1
    d0, d1 = initial.derivative(p), trained.derivative(p)
    rows = [{"p": float(p[i]), "entropy_derivative": float(entropy[i]), "learned_initial": float(d0[i]),
             "learned_trained": float(d1[i])} for i in range(points)]
    inside = (p >= lo) & (p <= hi)
    return {"rows": rows, "plan_entries": entries, "plan_range": (lo, hi), "results": results, "budget": budget,
            "corr_initial": _pearson(d0, entropy), "corr_trained": _pearson(d1, entropy),
            "corr_initial_in_range": _pearson(d0[inside], entropy[inside]),
            "corr_trained_in_range": _pearson(d1[inside], entropy[inside])}


def plot(data: dict, path) -> None:
    """(a) -log p - 1; (b) f' at initialization and after training; (c) histogram of plan entries."""
    plt = pyplot()
    rows = data["rows"]
    p = [r["p"] for r in rows]
    lo, hi = data["plan_range"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    a.plot(p, [r["entropy_derivative"] for r in rows], color="C0")
    a.set_title("(a) entropy: d/dp (-p log p) = -log p - 1")
    b.plot(p, [r["learned_trained"] for r in rows], color="C1", label="after training")
    b.plot(p, [r["learned_initial"] for r in rows], color="gray", ls="--", label="at initialization")
    res = data["results"]
    b.set_title(f"(b) learned f'(p), {res['step']:,} steps of batch {res['train_config']['batch_size']}")
    for ax in (a, b):
        ax.axvspan(lo, hi, color="C2", alpha=0.15, label="1st-99th percentile of plan entries")
        ax.set_xscale("log")
        ax.set_xlabel("p (plan entry)")
        ax.axhline(0, color="black", lw=0.5)
    b.legend(fontsize=8)
    c.hist(data["plan_entries"].clamp_min(1e-12).log10().numpy(), bins=60, color="C2")
    c.set_yscale("log")
    c.set_xlabel("log10 of plan entry (trained model, 64 test examples)")
    c.set_title("(c) where the plan's entries lie")
    save_figure(fig, path, "Fig. 5: derivative of the MESH objective")


def add_arguments(p) -> None:
    add_budget_arguments(p, SHORT_STEPS)
    p.add_argument("--run", help="plot a finished run folder of the learned objective (e.g. the variants command's "
                                 "learned-objective/sa-mesh/seed0) instead of training; its sigma and seed apply")


def run(args) -> dict:
    budget = budget_from_args(args)
    out = output_dir("fig5", args.out)
    if args.run is None:
        print(f"training SA-MESH with the learned objective: {budget.steps:,} steps of batch {budget.batch_size} "
              f"(Table 1: 20,000) in the random-objects task's default set-up, sigma {args.sigma:g}")
    data = compute(out, budget, args.sigma, args.seed, args.resume, not args.no_progress, run_dir=args.run)
    if args.run is not None:
        res = data["results"]
        print(f"read the finished run {args.run}: {res['step']:,} steps of batch "
              f"{res['train_config']['batch_size']} (Table 1: 20,000)")
    write_csv(out / "fig5.csv", data["rows"])
    plot(data, out / "fig5.png")
    res = data["results"]
    ms = res["train_step_ms"]
    timing = f"{ms:.0f} ms per training step" if ms is not None else "a finished run reused"
    print(f"test normalized RMSE {res['eval']['rmse_norm']:.4f} after {res['step']:,} steps ({timing})")
    lo, hi = data["plan_range"]

    def corr(key: str) -> str:
        return "undefined (f' constant there)" if math.isnan(data[key]) else f"{data[key]:.3f}"

    print(f"Pearson correlation of f' with -log p - 1 on [1e-8, 1] (log grid): {corr('corr_initial')} at "
          f"initialization, {corr('corr_trained')} after training; on [{lo:.2g}, {hi:.2g}] (1st-99th percentile "
          f"of the trained plan's entries): {corr('corr_initial_in_range')}, {corr('corr_trained_in_range')}")
    print(f"written to {out}/ (fig5.png, fig5.csv, run/)")
    return data
