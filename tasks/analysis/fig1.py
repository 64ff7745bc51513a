"""Fig. 1 (Sec. 4.2): entropy of the plan, and the norm of its gradient w.r.t. the cost, for Sinkhorn at
several temperatures tau and MESH at several step sizes lambda, as the cost is scaled from 1e-3 to 1e3.

Set-up (Sec. 4.2): the cost is C = -s I, a 10 x 10 identity matrix scaled by s, negated. The paper says
"starting from a 10 x 10 identity matrix, we scale it ... to obtain the cost matrix" and that at large
s "attention is confident" with low entropy. With C = +s I the diagonal would be the expensive entries
and, as s grows, the plan would spread evenly over the 90 off-diagonal entries (normalized entropy
log 9 / log 10 = 0.95, never confident); with C = -s I it tends to the identity (entropy 0), as the
paper describes. So the scaled identity is a similarity (the "attention values" of the caption), and
its negative is the cost.

For each scale s (batch element) and method, with marginals a = b = 1 (the plan's mass is 10):
    Sinkhorn(tau): P = sinkhorn(C, n_iters=5, tau), H = H(P), gradient dH/dC.
    MESH(lambda):  C' = MESH(C) (4 steps of size lambda, noise_scale 1e-3, tau 1, 5 Sinkhorn iterations,
                   reuse of u, v: the library defaults), P = sinkhorn(C', warm start), H = H(P); the
                   gradient w.r.t. C is the straight-through one SA-MESH trains with (Sec. 4.1), i.e.
                   dH/dC' at C' = MESH(C). MESH is averaged over ``draws`` noise draws per scale.
The entropy is divided by its maximum 10 log 10 (the uniform plan); the gradient norm is the Frobenius
norm of dH/dC, shown raw (Fig. 4, ``tasks.analysis.fig4``) and divided by the curve's maximum over the
scales (Fig. 1). Computed with ``kernels.sinkhorn`` / ``kernels.mesh`` in float64.

Writes fig1.png and fig1.csv (one row per method, parameter and scale).
"""
import math

import torch

import kernels
from tasks.runner import int_at_least

from .common import fmt, output_dir, plan_entropy, pyplot, save_figure, write_csv

__all__ = ["compute", "curves", "label", "plot", "plot_curves", "summary_lines", "add_arguments", "run", "TAUS",
           "MESH_LRS", "N"]

N = 10  # the identity is N x N
TAUS = (1.0, 0.1, 0.01)
MESH_LRS = (1.0, 2.0, 4.0, 8.0)


def _entropy_and_grad(s: torch.Tensor, method: str, param: float, draws: int, seed: int):
    """Normalized entropy and gradient norm (each (S, draws)) of the plans of C = -s I for scales s (S,)."""
    S = s.shape[0]
    eye = torch.eye(N, dtype=torch.float64)
    reps = draws if method == "mesh" else 1  # Sinkhorn has no noise: one draw is all draws
    C = (-s[:, None, None] * eye).repeat_interleave(reps, 0).requires_grad_(True)  # (S * reps, N, N)
    ones = torch.ones(S * reps, N, dtype=torch.float64)
    if method == "sinkhorn":
        P, _, _ = kernels.sinkhorn(C, ones, ones, n_iters=5, tau=param)
    else:
        noise = torch.randn(C.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        C2, u, v = kernels.mesh(C, ones, ones, lr=param, noise=noise)  # straight-through to C
        P, _, _ = kernels.sinkhorn(C2, ones, ones, u=u, v=v)
    H = plan_entropy(P)  # (S * reps,)
    (grad,) = torch.autograd.grad(H.sum(), C)
    norm = grad.flatten(1).norm(dim=1)
    entropy = H.detach() / (N * math.log(N))
    return entropy.reshape(S, reps).expand(S, draws), norm.reshape(S, reps).expand(S, draws)


def compute(scales=None, taus=TAUS, mesh_lrs=MESH_LRS, draws: int = 32, seed: int = 0) -> list[dict]:
    """The numbers of Fig. 1 / Fig. 4.

    Args:
        scales: (S,) scaling factors (default 61 points from 1e-3 to 1e3, log-spaced).
        taus: Sinkhorn temperatures. mesh_lrs: MESH step sizes lambda.
        draws: MESH noise draws per scale (averaged). seed: seed of the noise.

    Returns:
        One dict per (method, param, scale): method ("sinkhorn" / "mesh"), param (tau / lambda), scale,
        entropy (normalized, mean over draws), entropy_std, grad_norm (mean over draws), grad_norm_std,
        grad_norm_rel (grad_norm / the curve's maximum over the scales).
    """
    if scales is None:
        scales = torch.logspace(-3, 3, 61, dtype=torch.float64)
    scales = torch.as_tensor(scales, dtype=torch.float64)
    rows = []
    for method, params in (("sinkhorn", taus), ("mesh", mesh_lrs)):
        for param in params:
            ent, grad = _entropy_and_grad(scales, method, float(param), draws, seed)
            g_mean = grad.mean(1)
            peak = float(g_mean.max())
            for i, s in enumerate(scales.tolist()):
                rows.append({"method": method, "param": float(param), "scale": s, "entropy": float(ent[i].mean()),
                             "entropy_std": float(ent[i].std()) if draws > 1 else 0.0,
                             "grad_norm": float(g_mean[i]),
                             "grad_norm_std": float(grad[i].std()) if draws > 1 else 0.0,
                             "grad_norm_rel": float(g_mean[i]) / peak if peak > 0 else 0.0})
    return rows


def curves(rows: list[dict]) -> dict:
    """{(method, param): {column: [values in scale order]}} from :func:`compute`'s rows."""
    out = {}
    for r in rows:
        c = out.setdefault((r["method"], r["param"]), {})
        for k, v in r.items():
            c.setdefault(k, []).append(v)
    return out


def label(method: str, param: float) -> str:
    return f"SH, tau = {param:g}" if method == "sinkhorn" else f"MESH, lambda = {param:g}"


def _style(method: str, i: int) -> dict:
    """Sinkhorn dashed blues, MESH solid oranges; darker for the i-th parameter."""
    import matplotlib

    cmap = matplotlib.colormaps["Blues" if method == "sinkhorn" else "Oranges"]
    return {"color": cmap(0.45 + 0.5 * i / 3), "ls": "--" if method == "sinkhorn" else "-"}


def plot_curves(ax, rows: list[dict], column: str) -> None:
    """One line per (method, param) of ``column`` against the scale, log x axis."""
    counts = {}
    for (method, param), c in curves(rows).items():
        i = counts[method] = counts.get(method, -1) + 1
        ax.plot(c["scale"], c[column], label=label(method, param), **_style(method, i))
    ax.set_xscale("log")
    ax.set_xlabel("scaling factor s (cost = -s I, 10 x 10)")


def plot(rows: list[dict], path) -> None:
    """Fig. 1: normalized entropy (left) and per-curve normalized gradient norm (right)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_curves(left, rows, "entropy")
    left.set_ylabel("entropy of the plan / max entropy")
    left.set_title("Entropy")
    plot_curves(right, rows, "grad_norm_rel")
    right.set_ylabel("||dH/dC|| / its maximum over s")
    right.set_title("Gradient norm (normalized per curve)")
    right.legend(fontsize=8)
    save_figure(fig, path, "Fig. 1: Sinkhorn at temperature tau vs MESH at step size lambda")


def add_arguments(p) -> None:
    p.add_argument("--draws", type=int_at_least(1), default=32, help="MESH noise draws per scale (averaged)")
    p.add_argument("--seed", type=int, default=0, help="seed of the MESH noise")


def summary_lines(rows: list[dict]) -> list[str]:
    """A few numbers per curve: entropy and relative gradient norm at s = 1e-3, 1 and 1e3."""
    lines = [f"{'curve':<22} {'H(1e-3)':>8} {'H(1)':>8} {'H(1e3)':>8} {'g(1e-3)':>9} {'g(1)':>9} {'g(1e3)':>9}"
             "   (H normalized entropy, g gradient norm / curve max)"]
    for (method, param), c in curves(rows).items():
        idx = [min(range(len(c["scale"])), key=lambda i: abs(math.log10(c["scale"][i]) - t)) for t in (-3, 0, 3)]
        h = " ".join(f"{c['entropy'][i]:>8.3f}" for i in idx)
        g = " ".join(f"{fmt(c['grad_norm_rel'][i]):>9}" for i in idx)
        lines.append(f"{label(method, param):<22} {h} {g}")
    return lines


def run(args) -> list[dict]:
    out = output_dir("fig1", args.out)
    rows = compute(draws=args.draws, seed=args.seed)
    write_csv(out / "fig1.csv", rows)
    plot(rows, out / "fig1.png")
    print("\n".join(summary_lines(rows)))
    print(f"written to {out}/ (fig1.png, fig1.csv)")
    return rows
