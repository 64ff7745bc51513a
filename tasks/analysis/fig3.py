"""Fig. 3 (App. D): how far MESH's 5-iteration Sinkhorn plans are from a fully converged Sinkhorn, over
MESH iterations 1..T, with and without reusing the potentials u, v from the previous iteration.

MESH iteration t (1-based) runs Sinkhorn on C'_{t-1} (C'_0 = C + 1e-3 noise) to take its gradient step.
Its plan is P_t = sinkhorn(C'_{t-1}, 5 iterations), started from the potentials of iteration t - 1
("reuse u, v") or from zero ("no reuse"); iteration 1 has nothing to reuse, so the two agree there. The
ideal is P*_t = sinkhorn(C'_{t-1}) run until its row sums are within 1e-12 of a. The gap is
mean |P_t - P*_t| over the entries and the problem instances. Each variant follows its own trajectory
C'_t (its steps use its own plans), as MESH does; C'_{t-1} and the potentials come from
``kernels.mesh(..., n_mesh_iters=t - 1)`` with the same noise, the plans from ``kernels.sinkhorn``.

Problem instances (averaged over): ``instances`` independent costs C_ij = ||x_i - z_j|| between n = 64
inputs and m = 8 slots drawn from N(0, I_d) in d = 8 dimensions, uniform marginals a = m / n, b = 1; MESH
with the library defaults (step size 8, tau 1, noise 1e-3); float64.

Writes fig3.png and fig3.csv (one row per variant and MESH iteration).
"""
import torch

import kernels

from .common import fmt, output_dir, pyplot, save_figure, write_csv

__all__ = ["compute", "converged_sinkhorn", "plot", "add_arguments", "run"]


def converged_sinkhorn(C, a, b, tol: float = 1e-12, chunk: int = 200, max_chunks: int = 500) -> torch.Tensor:
    """Sinkhorn run until every row sum is within ``tol`` of ``a``: C (B, n, m), a (B, n), b (B, m) -> P.

    Raises:
        ValueError if it has not converged after ``chunk * max_chunks`` iterations.
    """
    v = None
    for _ in range(max_chunks):
        P, _, v = kernels.sinkhorn(C, a, b, n_iters=chunk, v=v)
        if float((P.sum(2) - a).abs().max()) < tol:
            return P
    raise ValueError(f"Sinkhorn did not converge to {tol} in {chunk * max_chunks} iterations")


def compute(instances: int = 256, n: int = 64, m: int = 8, dim: int = 8, mesh_iters: int = 10, n_sh_iters: int = 5,
            lr: float = 8.0, seed: int = 0) -> list[dict]:
    """The numbers of Fig. 3.

    Returns:
        One dict per (reuse_uv, MESH iteration t = 1..mesh_iters): reuse_uv, mesh_iter, mae (mean over the
        entries and instances of |P_t - P*_t|), mae_std (the standard deviation over instances of each
        instance's mean absolute error), max_abs_error.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(instances, n, dim, generator=g, dtype=torch.float64)
    z = torch.randn(instances, m, dim, generator=g, dtype=torch.float64)
    C = torch.cdist(x, z)  # (instances, n, m): rows are inputs, columns are slots
    a = torch.full((instances, n), m / n, dtype=torch.float64)
    b = torch.ones(instances, m, dtype=torch.float64)
    noise = torch.randn(C.shape, generator=g, dtype=torch.float64)
    rows = []
    for reuse in (False, True):
        for t in range(1, mesh_iters + 1):
            Ct, u, v = kernels.mesh(C, a, b, n_mesh_iters=t - 1, n_sh_iters=n_sh_iters, lr=lr, noise=noise,
                                    reuse_uv=reuse)  # C'_{t-1}, potentials of iteration t - 1 (None if no reuse)
            P, _, _ = kernels.sinkhorn(Ct, a, b, n_iters=n_sh_iters, u=u, v=v)
            err = (P - converged_sinkhorn(Ct, a, b)).abs()  # (instances, n, m)
            per_instance = err.mean((1, 2))
            rows.append({"reuse_uv": reuse, "mesh_iter": t, "mae": float(per_instance.mean()),
                         "mae_std": float(per_instance.std()), "max_abs_error": float(err.max())})
    return rows


def plot(rows: list[dict], path) -> None:
    """Mean absolute error against the MESH iteration, one line per variant, log y axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for reuse, style in ((False, {"color": "C0", "marker": "o", "label": "no reuse (start from zero)"}),
                         (True, {"color": "C1", "marker": "s", "label": "reuse u, v"})):
        sel = [r for r in rows if r["reuse_uv"] == reuse]
        ax.plot([r["mesh_iter"] for r in sel], [r["mae"] for r in sel], **style)
    ax.set_yscale("log")
    ax.set_xlabel("MESH iteration")
    ax.set_ylabel("mean |P - P*| (P*: converged Sinkhorn)")
    ax.set_title("Fig. 3: 5 Sinkhorn iterations per MESH step")
    ax.legend()
    save_figure(fig, path)


def add_arguments(p) -> None:
    p.add_argument("--instances", type=int, default=256, help="problem instances averaged over")
    p.add_argument("--mesh-iters", type=int, default=10, help="MESH iterations T on the x axis")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> list[dict]:
    if args.instances < 2 or args.mesh_iters < 1:
        raise ValueError("--instances must be >= 2 and --mesh-iters >= 1")
    out = output_dir("fig3", args.out)
    rows = compute(instances=args.instances, mesh_iters=args.mesh_iters, seed=args.seed)
    write_csv(out / "fig3.csv", rows)
    plot(rows, out / "fig3.png")
    no, yes = ([r for r in rows if r["reuse_uv"] == reuse] for reuse in (False, True))
    print(f"{'MESH iteration':>14} {'no reuse':>10} {'reuse u, v':>10}   mean |P - P*|, {args.instances} instances")
    for r0, r1 in zip(no, yes):
        print(f"{r0['mesh_iter']:>14} {fmt(r0['mae']):>10} {fmt(r1['mae']):>10}")
    print(f"written to {out}/ (fig3.png, fig3.csv)")
    return rows
