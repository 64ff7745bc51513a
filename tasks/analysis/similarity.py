"""App. B on the paper's example: MESH with and without the similarity regulariser (Eq. 13).

Three inputs (alpha, beta, gamma) and three slots Z = [x, x, y]; alpha and beta prefer x, gamma prefers y:
the cost is 2 * [[0, 0, 1], [0, 0, 1], [1, 1, 0]] (rows inputs, columns slots), marginals a = b = 1, and S
is the example's column-normalized similarity [[.5, .5, 0], [.5, .5, 0], [0, 0, 1]] (Eq. 17). Over
``draws`` draws of the noise, at several noise scales (App. B: the regulariser is only needed for noise
like N(0, I)), MESH (4 steps of size 4, ``slots.mesh_autograd``) with alpha = 0 (plain) and alpha = 1;
then the plan sinkhorn(C'). Counted per setting: draws where gamma stays on y (P[2, 2] > 0.99), where
the twins are split (one entry of the x-block above 0.99), and which of the two solutions T1 / T2 of
Eq. 14 was reached.

Writes similarity.csv (one row per noise scale and alpha) and similarity.png.
"""
import torch

import kernels
from slots import mesh_autograd

from .common import output_dir, pyplot, save_figure, write_csv

__all__ = ["example", "compute", "plot", "add_arguments", "run"]

NOISE_SCALES = (1e-3, 0.3, 1.0)
ALPHAS = (0.0, 1.0)


def example(draws: int):
    """The App. B example batched ``draws`` times: C (draws, 3, 3), marginals (draws, 3), S (draws, 3, 3)."""
    C = 2.0 * torch.tensor([[0, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.float64).expand(draws, 3, 3)
    ones = torch.ones(draws, 3, dtype=torch.float64)
    S = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]], dtype=torch.float64).expand(draws, 3, 3)
    return C, ones, S


@torch.no_grad()
def compute(draws: int = 1000, seed: int = 0, noise_scales=NOISE_SCALES, alphas=ALPHAS) -> list[dict]:
    """One dict per (noise_scale, alpha): draws, y_stays, twins_split, t1, t2 (counts of draws), and the
    mean entropy of the plan."""
    C, ones, S = example(draws)
    noise = torch.randn(draws, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows = []
    for noise_scale in noise_scales:  # values only: mesh_autograd runs first order under no_grad
        for alpha in alphas:
            C2, u, v = mesh_autograd(C, ones, ones, lr=4.0, noise=noise, noise_scale=noise_scale, similarity=S,
                                     alpha=alpha)
            P, _, _ = kernels.sinkhorn(C2, ones, ones, u=u, v=v)  # (draws, 3, 3)
            H = -(P * P.clamp_min(1e-300).log()).sum((1, 2))
            rows.append({"noise_scale": noise_scale, "alpha": alpha, "draws": draws,
                         "y_stays": int((P[:, 2, 2] > 0.99).sum()),
                         "twins_split": int((P[:, :2, :2].amax((1, 2)) > 0.99).sum()),
                         "t1": int(((P[:, 0, 0] > 0.99) & (P[:, 1, 1] > 0.99) & (P[:, 2, 2] > 0.99)).sum()),
                         "t2": int(((P[:, 0, 1] > 0.99) & (P[:, 1, 0] > 0.99) & (P[:, 2, 2] > 0.99)).sum()),
                         "mean_entropy": float(H.mean())})
    return rows


def plot(rows: list[dict], path) -> None:
    """Left: draws where gamma leaves y. Right: fractions of draws reaching T1 and T2 (Eq. 14)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"noise {r['noise_scale']:g}\nalpha {r['alpha']:g}" for r in rows]
    xs = list(range(len(rows)))
    left.bar(xs, [r["draws"] - r["y_stays"] for r in rows], color=["C3" if r["alpha"] == 0 else "C2" for r in rows])
    left.set_ylabel(f"draws (of {rows[0]['draws']}) where gamma leaves y")
    left.set_title("y's column must not move")
    for k, (key, name) in enumerate((("t1", "T1 reached"), ("t2", "T2 reached"))):
        right.bar([x + (k - 0.5) * 0.4 for x in xs], [r[key] / r["draws"] for r in rows], 0.4, label=name,
                  color=f"C{k}")
    right.set_ylabel("fraction of draws")
    right.set_ylim(0, 0.7)
    right.set_title("the twins may swap (T1 or T2, picked by the noise)")
    right.legend(fontsize=8, loc="lower right")
    for ax in (left, right):
        ax.set_xticks(xs, labels, fontsize=8)
    save_figure(fig, path, "App. B: slots [x, x, y], MESH with the similarity regulariser (alpha = 1) or without "
                           "(alpha = 0)")


def add_arguments(p) -> None:
    p.add_argument("--draws", type=int, default=1000, help="noise draws per setting")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> list[dict]:
    if args.draws < 1:
        raise ValueError("--draws must be >= 1")
    out = output_dir("similarity", args.out)
    rows = compute(draws=args.draws, seed=args.seed)
    write_csv(out / "similarity.csv", rows)
    plot(rows, out / "similarity.png")
    print(f"{'noise':>6} {'alpha':>5} {'gamma on y':>10} {'twins split':>11} {'T1':>5} {'T2':>5} {'mean H':>7}"
          f"   (counts of {args.draws} draws)")
    for r in rows:
        print(f"{r['noise_scale']:>6g} {r['alpha']:>5g} {r['y_stays']:>10} {r['twins_split']:>11} {r['t1']:>5} "
              f"{r['t2']:>5} {r['mean_entropy']:>7.3f}")
    print(f"written to {out}/ (similarity.png, similarity.csv)")
    return rows
