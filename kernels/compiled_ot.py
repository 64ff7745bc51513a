"""The PyTorch path under ``torch.compile`` (``backend="compile"``; on CPU the default C++ loops of
``kernels.cpp_ot`` are faster at every measured shape, see BENCHMARKS.md).

Why. At slot-attention sizes such as (B, n, m) = (64, 105, 5) every operation of ``kernels.torch_ot``
touches only ~34k numbers, so a MESH call (4 steps of 5 Sinkhorn iterations, forward and hand-written
backward: ~400 operations) is bound by per-operation dispatch, not by arithmetic. ``torch.compile``
(Inductor) fuses the whole call into a few C++ loops. It is opt-in (``backend="compile"`` in
``kernels.sinkhorn`` / ``kernels.mesh``): the first call for a new shape, dtype or option set compiles
for tens of seconds (cached on disk by Inductor for later processes), which only pays off in long runs.

What. The same maths and backend contract as ``kernels.torch_ot`` (``sinkhorn_fwd``, ``sinkhorn_bwd``,
``mesh_fwd``), written without in-place writes into shared buffers so that it traces as one graph:
the scaling form, K = exp(S + v0 - r) formed once per MESH step, each Sinkhorn iteration two batched
mat-vecs, the unrolled backward of the entropy as mat-vecs plus K times a sum of rank-one terms
(derivation in ``kernels.torch_ot``). The compiled functions also return, per batch element, the
accuracy checks of ``kernels.torch_ot`` (finite scalings, no harmful underflow, small potentials);
batch elements that fail any of them are recomputed by ``kernels.torch_ot`` (which falls back to the
log domain step by step), so results stay finite and as accurate as the eager path.
``sinkhorn_bwd`` is ``kernels.torch_ot``'s (one call per training step; not worth a compile).

Known limits: compile time (first call per shape; ``dynamic=None`` recompiles once with a symbolic
batch size when a second batch size is seen); values agree with ``kernels.torch_ot`` to rounding, not
bit for bit (fused arithmetic). CPU and CUDA tensors both work, but on CUDA the Triton kernels of
``kernels.triton_ot`` are the intended path.
"""
import torch

from . import torch_ot
from .torch_ot import _log_min_mass, _magnitude_ok, _neg_big, _scaling_ok

__all__ = ["sinkhorn_fwd", "sinkhorn_bwd", "mesh_fwd"]

sinkhorn_bwd = torch_ot.sinkhorn_bwd


def _forward(Kt, a, b, n_iters: int):
    """Sinkhorn in scaling form on Kt (B, m, n) = K^T (entries in [0, 1]).

    Returns lists qs, ss of q_k = K y_{k-1} (B, n) and s_k = K^T x_k (B, m), xs = [x_1..x_L],
    ys = [y_0..y_L] and the check values xmax, ymax (B,).
    """
    tiny = torch.finfo(Kt.dtype).tiny
    y = torch.ones_like(b)
    qs, ss, xs, ys = [], [], [], [y]
    for _ in range(n_iters):
        q = (Kt * y[:, :, None]).sum(1).clamp_min(tiny)  # (B, n) = K y: read nm
        x = a / q
        s = (Kt * x[:, None, :]).sum(2)  # (B, m) = K^T x: read nm
        y = b / s.clamp_min(tiny)
        qs.append(q)
        ss.append(s)
        xs.append(x)
        ys.append(y)
    xmax = torch.stack(xs).amax((0, 2))
    ymax = torch.stack(ys).amax((0, 2))
    return qs, ss, xs, ys, xmax, ymax


def _sinkhorn_core(C, log_a, log_b, v0, tau: float, n_iters: int):
    """C (B, n, m) -> us (L, B, n), vs (L + 1, B, m), ok (B,) as in ``torch_ot.sinkhorn_fwd``."""
    B, n, m = C.shape
    tiny = torch.finfo(C.dtype).tiny
    v0f = v0.clamp_min(_neg_big(C.dtype))
    logKt = v0f[:, :, None] - C.transpose(1, 2) / tau  # (B, m, n) = (S + v0)^T
    r = logKt.amax(1)  # (B, n)
    Kt = torch.exp(logKt - r[:, None, :])
    qs, ss, _, _, xmax, ymax = _forward(Kt, log_a.exp(), log_b.exp(), n_iters)
    us = torch.stack([log_a - r - torch.log(q) for q in qs])  # (L, B, n)
    vs = torch.stack([v0] + [v0f + log_b - torch.log(s.clamp_min(tiny)) for s in ss])  # (L + 1, B, m)
    ok = _scaling_ok(xmax, ymax, _log_min_mass(log_a, log_b), n, m)
    return us, vs, ok & _magnitude_ok(us, vs)


def _mesh_core(C, noise, log_a, log_b, tau: float, noise_scale: float, n_mesh_iters: int, n_sh_iters: int,
               lr: float, reuse_uv: bool):
    """The MESH loop of ``torch_ot.mesh_fwd`` as one graph.

    C, noise (B, n, m); log_a (B, n), log_b (B, m). Returns C_T (B, n, m), u_L (B, n), v_L (B, m) and
    ok (B,): every step of this batch element passed the scaling checks.
    """
    B, n, m = C.shape
    L = n_sh_iters
    tiny = torch.finfo(C.dtype).tiny
    neg = _neg_big(C.dtype)
    a, b = log_a.exp(), log_b.exp()
    log_min_mass = _log_min_mass(log_a, log_b)
    Ct = C.transpose(1, 2) + noise_scale * noise.transpose(1, 2)  # (B, m, n) = C'_0^T
    v0 = torch.zeros_like(b)
    ok = torch.ones(B, dtype=torch.bool, device=C.device)
    uL = vL = None
    for _ in range(n_mesh_iters):
        v0f = v0.clamp_min(neg)
        logKt = v0f[:, :, None] - Ct / tau  # (S + v0)^T
        r = logKt.amax(1)  # (B, n)
        logKt = logKt - r[:, None, :]
        Kt = torch.exp(logKt)  # (B, m, n): read nm, write nm
        qs, ss, xs, ys, xmax, ymax = _forward(Kt, a, b, L)
        ok = ok & _scaling_ok(xmax, ymax, log_min_mass, n, m)
        uL = log_a - r - torch.log(qs[-1])
        vL = v0f + log_b - torch.log(ss[-1].clamp_min(tiny))
        ok = ok & _magnitude_ok(uL[None], torch.stack([v0, vL]))
        # D = +P (log P + 1): the entropy's direct term; P = K x_L y_L^T, log P = log K + log x_L + log y_L
        xL, yL = xs[-1], ys[-1]
        lx = torch.log(xL.clamp_min(tiny)) + 1
        ly = torch.log(yL.clamp_min(tiny))
        D = (logKt + lx[:, None, :] + ly[:, :, None]) * (Kt * xL[:, None, :] * yL[:, :, None])
        gu, gv = D.sum(1), D.sum(2)  # (B, n), (B, m)
        # reverse sweep; the rank-one terms of gS are collected in XT (B, 2L, n), YT (B, 2L, m)
        x_rows, y_rows = [], []
        for k in range(L, 0, -1):
            t = gv / ss[k - 1].clamp_min(tiny)  # (B, m): gv * y_k / b
            gu = gu - xs[k - 1] * (Kt * t[:, :, None]).sum(1)  # read nm
            t2 = gu / qs[k - 1]  # (B, n): gu * x_k / a
            x_rows += [xs[k - 1], t2]
            y_rows += [t, ys[k - 1]]
            if k > 1:
                gv = -ys[k - 1] * (Kt * t2[:, None, :]).sum(2)  # read nm
            gu = torch.zeros_like(gu)
        M = sum(yr[:, :, None] * xr[:, None, :] for yr, xr in zip(y_rows, x_rows))  # (B, m, n): 2L rank-one terms
        D = D - Kt * M
        # g = dH/dC' = D^T / tau;  C' <- C' - lr g / max(||g||, tiny)
        norm = torch.linalg.vector_norm(D, dim=(1, 2)) / tau  # (B,)
        inv = 1.0 / norm.clamp_min(tiny)
        coef = (-lr / tau) * inv
        step = torch.where(torch.isfinite(coef)[:, None, None], D * coef[:, None, None],
                           (D * inv[:, None, None]) * (-lr / tau))
        Ct = Ct + step
        v0 = vL if reuse_uv else torch.zeros_like(b)
    return Ct.transpose(1, 2).contiguous(), uL, vL, ok


_COMPILED = {}


def _compiled(fn):
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=None)
    return _COMPILED[fn]


def sinkhorn_fwd(C, log_a, log_b, tau, n_iters, v0):
    """As ``torch_ot.sinkhorn_fwd``: us (n_iters, B, n), vs (n_iters + 1, B, m)."""
    us, vs, ok = _compiled(_sinkhorn_core)(C, log_a, log_b, v0, float(tau), int(n_iters))
    if not bool(ok.all()):
        bad = (~ok).nonzero().squeeze(1)
        us_b, vs_b = torch_ot.sinkhorn_fwd(C[bad], log_a[bad], log_b[bad], tau, n_iters, v0[bad])
        us, vs = us.clone(), vs.clone()
        us[:, bad], vs[:, bad] = us_b, vs_b
    return us, vs


def mesh_fwd(C, log_a, log_b, tau, noise, noise_scale, n_mesh_iters, n_sh_iters, lr, reuse_uv):
    """As ``torch_ot.mesh_fwd``: C_T (B, n, m), u (B, n), v (B, m) (None, None for 0 steps)."""
    if n_mesh_iters == 0:
        return C + noise_scale * noise, None, None
    C_T, u, v, ok = _compiled(_mesh_core)(C, noise, log_a, log_b, float(tau), float(noise_scale),
                                         int(n_mesh_iters), int(n_sh_iters), float(lr), bool(reuse_uv))
    if not bool(ok.all()):
        bad = (~ok).nonzero().squeeze(1)
        C_b, u_b, v_b = torch_ot.mesh_fwd(C[bad], log_a[bad], log_b[bad], tau, noise[bad], noise_scale,
                                          n_mesh_iters, n_sh_iters, lr, reuse_uv)
        C_T, u, v = C_T.clone(), u.clone(), v.clone()
        C_T[bad], u[bad], v[bad] = C_b, u_b, v_b
    return C_T, u, v
