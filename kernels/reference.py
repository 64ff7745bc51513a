"""Plain-autograd references for Sinkhorn and MESH, written literally from the paper.

These are what a researcher writes from Eq. 9-12 and App. A/D: log-domain Sinkhorn unrolled under
autograd, and MESH taking ``torch.autograd.grad`` of the entropy through it at every step. They are
the referees for the fast paths (``kernels.sinkhorn``, ``kernels.mesh`` and the Triton kernels) in the
tests and the naive baseline in the benchmarks. They do no input validation and no tuning.

Conventions shared by every OT function in ``kernels``:
    C (B, n, m): costs, rows are inputs, columns are slots.
    a (B, n), b (B, m): row and column marginals with a.sum(1) == b.sum(1).
    u (B, n), v (B, m): log-domain potentials, P = exp(-C / tau + u[:, :, None] + v[:, None, :]).
    One Sinkhorn iteration rescales rows to a, then columns to b, so the returned plan meets b exactly.
"""
import torch


def sinkhorn_ref(C, a, b, n_iters=5, tau=1.0, u=None, v=None):
    """Unrolled log-domain Sinkhorn under autograd.

    Args:
        C: (B, n, m) costs. a: (B, n), b: (B, m) marginals.
        n_iters: number of (row, column) rescalings, >= 1.
        u, v: optional (B, n), (B, m) warm-start potentials; only ``v`` matters, because the first
            step recomputes ``u`` from it.

    Returns:
        P (B, n, m) plan, u (B, n), v (B, m).
    """
    S = -C / tau  # (B, n, m)
    log_a, log_b = torch.log(a), torch.log(b)
    if v is None:
        v = torch.zeros_like(b)
    for _ in range(n_iters):
        u = log_a - torch.logsumexp(S + v[:, None, :], dim=2)  # (B, n): rows sum to a
        v = log_b - torch.logsumexp(S + u[:, :, None], dim=1)  # (B, m): columns sum to b
    return torch.exp(S + u[:, :, None] + v[:, None, :]), u, v


def entropy_ref(C, u, v, tau=1.0):
    """H(P) = -sum_ij P_ij log P_ij per batch element, from the potentials (B,).

    Computed from log P = -C/tau + u + v rather than log(P), so entries that underflow to 0 give a
    finite gradient (0) instead of 0 * inf.
    """
    log_P = -C / tau + u[:, :, None] + v[:, None, :]
    return -(torch.exp(log_P) * log_P).sum((1, 2))


def mesh_ref(C, a, b, n_mesh_iters=4, n_sh_iters=5, lr=8.0, noise=None, noise_scale=1e-3,
             reuse_uv=True, tau=1.0, straight_through=True):
    """MESH (Eq. 9-12) with autograd through the unrolled Sinkhorn at every step.

    C' starts at ``C + noise_scale * noise`` and takes ``n_mesh_iters`` steps
    ``C' <- C' - lr * g / ||g||`` with ``g = dH(sinkhorn(C'))/dC'`` and the norm taken per batch
    element over (n, m).

    Args:
        C: (B, n, m) costs. a: (B, n), b: (B, m) marginals.
        noise: (B, n, m) standard-normal noise; drawn with ``torch.randn_like(C)`` if None.
        reuse_uv: warm-start each step's Sinkhorn from the previous step's potentials (App. D).
        straight_through: if True the returned costs pass gradients to ``C`` unchanged (Sec. 4.1);
            if False, autograd differentiates through every step (second order).

    Returns:
        C2 (B, n, m) the optimized costs; u (B, n), v (B, m) the potentials of the last step's
        Sinkhorn (None if ``reuse_uv`` is False), to warm-start ``sinkhorn(C2, a, b, u=u, v=v)``.
    """
    if noise is None:
        noise = torch.randn_like(C)
    Cp = C + noise_scale * noise
    if straight_through:
        Cp, a, b = Cp.detach(), a.detach(), b.detach()
    u = v = None
    for _ in range(n_mesh_iters):
        with torch.enable_grad():
            if straight_through:
                Cp = Cp.detach().requires_grad_(True)
            P, u_new, v_new = sinkhorn_ref(Cp, a, b, n_sh_iters, tau, u, v)
            H = entropy_ref(Cp, u_new, v_new, tau).sum()
            (g,) = torch.autograd.grad(H, Cp, create_graph=not straight_through)
        norm = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)  # (B,)
        Cp = Cp - lr * g / norm[:, None, None]
        if reuse_uv:
            u, v = (u_new.detach(), v_new.detach()) if straight_through else (u_new, v_new)
    if straight_through:
        Cp = C + (Cp.detach() - C.detach())
    if not reuse_uv:
        u = v = None
    return Cp, u, v


def mesh_official_ref(C, a, b, n_mesh_iters=4, n_sh_iters=5, lr=8.0, noise=None, noise_scale=1e-3, tau=1.0):
    """MESH as the official code differentiates it (its ``mesh.py``): C' straight through, u and v on the graph.

    C'_0 = C + noise_scale * noise stays on the autograd graph of C; every step runs ``sinkhorn_ref`` on C'
    warm-started from the previous step's u, v (kept on the graph), takes the entropy gradient g with
    ``torch.autograd.grad`` without a graph of its own, and moves C' <- C' - lr g / ||g||. So C2 passes its
    gradient to C unchanged, and the returned u, v carry gradients through every step's Sinkhorn to C, a, b.
    (The official code's entropy is a mean over clamped plan entries; H here is ``entropy_ref``'s sum, which
    after the normalization of g gives the same step up to the clamp.)

    Returns:
        C2 (B, n, m), u (B, n), v (B, m).
    """
    if noise is None:
        noise = torch.randn_like(C)
    Cp = C + noise_scale * noise
    if not Cp.requires_grad:
        Cp = Cp.requires_grad_(True)
    u = v = None
    for _ in range(n_mesh_iters):
        with torch.enable_grad():
            P, u, v = sinkhorn_ref(Cp, a, b, n_sh_iters, tau, u, v)
            H = entropy_ref(Cp, u, v, tau).sum()
            (g,) = torch.autograd.grad(H, Cp, retain_graph=True)
        norm = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)  # (B,)
        Cp = Cp - lr * g / norm[:, None, None]
    return Cp, u, v
