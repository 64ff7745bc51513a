"""SA-MESH with its appendix variants on random objects (the Table 1 set-up), trained side by side:

    entropy              the default SA-MESH: entropy objective, straight-through gradients (Sec. 4.1)
    entropy-2nd-order    the same, differentiated through the MESH steps (``straight_through=False``):
                         the like-for-like reference of the next two
    learned-objective    App. I: the learned objective in place of the entropy (second order)
    similarity           App. B: the similarity regulariser with alpha = 1 (second order)
    learned-lr           a learned MESH step size, starting at the task's (1), first-order gradient (as
                         the official code's ``learn_mesh_lr``)

Each is one run of the random-objects task in its default set-up with the variant's options
(``tasks.analysis.training``: same data, seed and schedule; the budget is printed: short by default,
``--paper-budget`` for Table 1's). The paper expects no gain from App. I and says App. B is not needed at low
noise. Writes variants.csv (one row per variant: final test normalized RMSE, step
time, the learned step size where there is one), variants.png (test RMSE against steps) and the runs
under <name>/.
"""
import math

import torch

from .common import output_dir, pyplot, save_figure, write_csv
from .training import add_budget_arguments, budget_from_args, eval_curve, train_sa_mesh

__all__ = ["VARIANTS", "compute", "plot", "add_arguments", "run"]

# name -> the random-objects options (``tasks.random_objects.RandomObjectsConfig``) that make the variant
VARIANTS = {
    "entropy": {},
    "entropy-2nd-order": {"straight_through": False},
    "learned-objective": {"mesh_objective": "learned", "straight_through": False},
    "similarity": {"similarity_alpha": 1.0, "straight_through": False},
    "learned-lr": {"learn_mesh_lr": True},
}


def compute(out_dir, budget, names=tuple(VARIANTS), sigma: float = 0.01, seed: int = 0, resume: bool = False,
            progress: bool = True) -> list[dict]:
    """Train each named variant; one dict per variant: name, steps, rmse_norm, train_step_ms, mesh_lr
    (the learned step size at the end, else the fixed one), run_dir."""
    rows = []
    for name in names:
        model, results, run_dir = train_sa_mesh(VARIANTS[name], out_dir / name, budget, sigma, seed, resume,
                                                progress)
        variant = model.slot_attention.mesh_variant
        lr = float(torch.as_tensor(variant.step_size()).detach()) if variant is not None \
            else model.slot_attention.config.ot.mesh_lr
        rows.append({"name": name, "steps": results["step"], "rmse_norm": results["eval"]["rmse_norm"],
                     "train_step_ms": results["train_step_ms"] or math.nan, "mesh_lr": lr, "run_dir": str(run_dir)})
    return rows


def plot(rows: list[dict], path, sigma: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, r in enumerate(rows):
        steps, rmse = eval_curve(r["run_dir"])
        ax.plot(steps, rmse, marker="o", ms=3, color=f"C{i}", label=f"{r['name']} ({r['rmse_norm']:.3f})")
    ax.set_xlabel("training step (batch 64)")
    ax.set_ylabel("test RMSE / sigma")
    ax.set_title(f"SA-MESH variants, random objects, sigma = {sigma:g}")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def add_arguments(p) -> None:
    p.add_argument("--only", action="append", choices=list(VARIANTS), help="variant to train (repeatable; "
                                                                             "default: all)")
    add_budget_arguments(p, short_steps=1_000)


def run(args) -> list[dict]:
    budget = budget_from_args(args)
    names = tuple(dict.fromkeys(args.only or VARIANTS))
    out = output_dir("variants", args.out)
    print(f"{len(names)} run(s) of {budget.steps:,} steps of batch {budget.batch_size} (Table 1: 20,000) in the "
          f"random-objects task's default set-up, sigma {args.sigma:g}, seed {args.seed}")
    rows = compute(out, budget, names, args.sigma, args.seed, args.resume, not args.no_progress)
    write_csv(out / "variants.csv", rows)
    plot(rows, out / "variants.png", args.sigma)
    print(f"{'variant':<20} {'test RMSE / sigma':>17} {'step ms':>8} {'MESH step size':>14}")
    for r in rows:
        print(f"{r['name']:<20} {r['rmse_norm']:>17.4f} {r['train_step_ms']:>8.1f} {r['mesh_lr']:>14.3f}")
    print(f"written to {out}/ (variants.png, variants.csv, one folder per run)")
    return rows
