"""The PyTorch backend of the OT kernels (``backend="torch"``; the reference the C++ and Triton paths are
tested against, and the per-element fallback of the C++ loops): batched unrolled Sinkhorn, its hand-written
backward, MESH and MESH's warm-start backward (the contract is in ``kernels.backends``).

Maths (Eq. 9-12, App. A and D). With S = -C / tau and v_0 given, iteration k = 1..L is
    u_k = log a - LSE_j(S_ij + v_{k-1,j}),   v_k = log b - LSE_i(S_ij + u_{k,i}),
and P = exp(S + u_L + v_L). With P^k = exp(S + u_k + v_k) and R^k = exp(S + u_k + v_{k-1}), the backward
from upstream gradients gu_k, gv_k of the potentials is
    gS -= P^k * (gv_k / b)[None, :],   gu_k -= (P^k * (gv_k / b)).sum(j),
    gS -= R^k * (gu_k / a)[:, None],   gv_{k-1} -= (R^k * (gu_k / a)).sum(i),
    grad log a += gu_k,  grad log b += gv_k,
from G = grad_P * P: gS = G, gu_L = G.sum(j) (+ grad u_L), gv_L = G.sum(i) (+ grad v_L). For the entropy
H(P) = -sum P log P, grad_P = -(log P + 1).

Two evaluations. The scaling form (fast): every P^k, R^k is one matrix K = exp(S + v_0 - r) (r the row
maxima) rescaled by vectors, so an iteration is two batched mat-vecs (q = K y, x = a / q, s = K^T x,
y = b / s) and the backward is mat-vecs with K plus K times a sum of 2L rank-one terms. The log domain
(``_log_forward``, ``_log_backward``): log-sum-exps and softmaxes, always finite. Each batch element's
scaling form is checked (finite scalings; the mass that underflow can lose below eps times the smallest
positive marginal; potentials below 2^-13 / eps); elements that fail are redone in the log domain.

Shapes: C (B, n, m); inside, matrices are held transposed, (B, m, n), so the long axis n is innermost.

Known limits: the fallback is per batch element and per call (a MESH step falls back as a whole) and 3-8x
slower than the scaling form; it is taken for costs spanning more than ~60 (float32) or ~650 (float64) units
of tau between warm start and solution, for potentials beyond ~1e3 in float32, and for some zero-marginal
patterns. The gradient is the unrolled one, as in the paper (no implicit differentiation).
"""
import math

import torch

from .backends import Backend, MeshTrace

__all__ = ["sinkhorn_fwd", "sinkhorn_bwd", "mesh_fwd", "mesh_bwd", "chain_mesh_bwd", "BACKEND"]

# Layout. Inside this module every (B, n, m) matrix is held transposed, as a contiguous (B, m, n)
# tensor (names end in ``t``). With m <= 64 slots and n up to 16k inputs this puts the long axis
# innermost: broadcasts of per-slot vectors and per-input vectors both run along contiguous memory
# (8x faster on CPU than broadcasting along an inner axis of 7), and both mat-vecs take the fast
# "row vector times matrix" form of bmm.


def _neg_big(dtype: torch.dtype) -> float:
    """A finite stand-in for -inf in potentials: exp() of it is 0 and sums of three stay finite."""
    return -torch.finfo(dtype).max / 8


def _KTx(Kt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """K^T @ x for K = Kt^T: Kt (B, m, n), x (B, n) -> (B, m). Reads nm."""
    return torch.bmm(x.unsqueeze(1), Kt.transpose(1, 2)).squeeze(1)


def _log_min_mass(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """log of the smallest positive marginal entry per batch element (B,)."""
    inf = torch.tensor(math.inf, dtype=log_a.dtype, device=log_a.device)
    la = torch.where(log_a > -math.inf, log_a, inf).amin(1)
    lb = torch.where(log_b > -math.inf, log_b, inf).amin(1)
    return torch.minimum(la, lb)


def _scaling_ok(xmax: torch.Tensor, ymax: torch.Tensor, log_min_mass: torch.Tensor, n: int, m: int):
    """Per batch element (B,): is the representation P^k = K * x_k y_k^T accurate?

    xmax, ymax (B,): largest row and column scalings over all k (NaN/inf propagate into them).
    Entries of K, or products inside the mat-vecs, that underflow are < tiny, so they change a row or
    column mass by at most tiny * max(1, max x) * max(1, max y) * max(n, m); we ask that to be below
    eps times the smallest positive marginal, and everything finite.
    """
    fi = torch.finfo(xmax.dtype)
    bound = math.log(fi.eps) - math.log(fi.tiny) - math.log(max(n, m))
    span = torch.log(xmax.clamp_min(1)) + torch.log(ymax.clamp_min(1)) - log_min_mass
    return torch.isfinite(xmax) & torch.isfinite(ymax) & (span <= bound)


def _magnitude_ok(us: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:
    """Per batch element (B,): are the potentials small enough for the scaling form?

    us (L, B, n), vs (L', B, m). Potentials of size |u| carry rounding errors of eps |u| (and so do
    S + v - r, from which K is built). The log domain recomputes its softmaxes from S + u, so they stay
    normalized; the scaling form multiplies such errors into every P^k. Past eps |u| = 2^-13 (float32:
    |u| ~ 1e3, that is costs beyond ~1e3 tau) the log domain is used.
    """
    big = torch.maximum(torch.where(us > -math.inf, us.abs(), 0).amax((0, 2)),
                        torch.where(vs > -math.inf, vs.abs(), 0).amax((0, 2)))
    return big * torch.finfo(us.dtype).eps <= 2.0 ** -13


def _split(ok: torch.Tensor):
    """Indices (1-D) of the batch elements that failed the scaling check, or None if all passed."""
    if bool(ok.all()):
        return None
    return (~ok).nonzero().squeeze(1)


# ----------------------------------------------------------------------------------------------
# Log domain (always safe; the fallback). Also in the transposed (B, m, n) layout: St = S^T.
# ----------------------------------------------------------------------------------------------

def _log_forward(St, log_a, log_b, v0, n_iters):
    """Unrolled log-domain Sinkhorn. St (B, m, n); returns us (L, B, n), vs (L + 1, B, m)."""
    B, m, n = St.shape
    us = St.new_empty(n_iters, B, n)
    vs = St.new_empty(n_iters + 1, B, m)
    vs[0] = v0
    v = v0
    for k in range(n_iters):
        u = log_a - torch.logsumexp(St + v[:, :, None], dim=1)  # (B, n): rows sum to a
        v = log_b - torch.logsumexp(St + u[:, None, :], dim=2)  # (B, m): columns sum to b
        us[k] = u
        vs[k + 1] = v
    return us, vs


def _inv_mass(log_m: torch.Tensor) -> torch.Tensor:
    """1 / marginal, 0 where the marginal is 0 (those rows/columns carry no mass and no gradient)."""
    return torch.where(log_m > -math.inf, torch.exp(-log_m), torch.zeros_like(log_m))


def _log_backward(St, us, vs, Gt, gu, gv):
    """Reverse sweep in the log domain, transposed layout.

    St (B, m, n); us (L, B, n), vs (L + 1, B, m); Gt (B, m, n) the direct gS^T term (grad_P * P),
    updated in place; gu (B, n), gv (B, m) the direct gradients of u_L, v_L.
    P^k / b and R^k / a are recomputed as softmaxes of S + u_k over i and of S + v_{k-1} over j, as
    autograd through the log-sum-exps does: they sum to 1 exactly, so the cancellations of a saturated
    plan stay at rounding level even when the potentials are huge (costs of 1e7 tau).
    Returns gS^T (B, m, n), grad_log_a (B, n), grad_log_b (B, m), grad_v0 (B, m).
    """
    gSt = Gt
    glog_a = torch.zeros_like(gu)
    glog_b = torch.zeros_like(gv)
    for k in range(us.shape[0], 0, -1):
        glog_b += gv
        W = St + us[k - 1][:, None, :]
        W = W.sub_(torch.logsumexp(W, dim=2, keepdim=True)).exp_()  # (B, m, n) = (P^k / b)^T: column step
        W.mul_(gv[:, :, None])
        gSt -= W
        gu = gu - W.sum(1)
        glog_a += gu
        W = St + vs[k - 1][:, :, None]
        W = W.sub_(torch.logsumexp(W, dim=1, keepdim=True)).exp_()  # (B, m, n) = (R^k / a)^T: row step
        W.mul_(gu[:, None, :])
        gSt -= W
        gv = -W.sum(2)
        gu = torch.zeros_like(gu)
    return gSt, glog_a, glog_b, gv


def _log_entropy_grad(St, log_a, log_b, v0, n_iters):
    """Log-domain Sinkhorn and d(sum_batch H(P))/dS. St (B, m, n).

    Returns u_L (B, n), v_L (B, m), (dH/dS)^T (B, m, n).
    """
    us, vs = _log_forward(St, log_a, log_b, v0, n_iters)
    neg = _neg_big(St.dtype)
    logPt = St + us[-1].clamp_min(neg)[:, None, :] + vs[-1].clamp_min(neg)[:, :, None]
    Pt = torch.exp(logPt)
    Gt = logPt.add_(1).mul_(Pt).neg_()  # grad_P * P = -P (log P + 1)
    gSt = _log_backward(St, us, vs, Gt, Gt.sum(1), Gt.sum(2))[0]
    return us[-1], vs[-1], gSt


# ----------------------------------------------------------------------------------------------
# Scaling form (fast path). Transposed (B, m, n) layout.
# ----------------------------------------------------------------------------------------------

def _workspace(like: torch.Tensor, B: int, m: int, n: int, n_iters: int, backward: bool) -> dict:
    """Buffers of the fast path, allocated once per call and reused by every MESH step.

    (Fresh multi-megabyte tensors cost page faults on every allocation: at (64, 16384, 11) they were
    a third of a MESH call.) ``backward``: also the buffers that only the backward needs.
    """
    work = {
        "logKt": like.new_empty(B, m, n), "qs": like.new_empty(n_iters, B, n),
        "ss": like.new_empty(n_iters, B, m), "XT": like.new_empty(B, 2 * n_iters, n),
        "YT": like.new_empty(B, 2 * n_iters, m),
    }
    if backward:
        work.update(Kt=like.new_empty(B, m, n), M=like.new_empty(B, m, n),
                    xa=like.new_empty(n_iters, B, n), tmp=like.new_empty(B, n))
    return work


def _scaled_forward(logKt, a, b, n_iters, keep_log, work):
    """Sinkhorn with scaling vectors on K = exp(S + v0 - r).

    logKt (B, m, n) holds (S + v0)^T on entry; it is shifted in place by the row maxima r (B, n), so K
    has entries in [0, 1] and a 1 in every row. a (B, n), b (B, m) marginals. Returns
        Kt (B, m, n) = K^T; r (B, n); qs (L, B, n), ss (L, B, m) with q_k = K y_{k-1}, s_k = K^T x_k;
        XT (B, 2L, n) whose rows 0..L-1 are x_1..x_L (x_k = a / q_k);
        YT (B, 2L, m) whose rows L..2L-1 are y_0..y_{L-1} (y_0 = 1, y_k = b / s_k); y_L (B, m).
    Rows 0..L-1 of YT and L..2L-1 of XT are left for the backward. No checks here.
    If ``keep_log`` is False, logKt is overwritten by K. ``work``: buffers from ``_workspace``.
    """
    B, m, n = logKt.shape
    tiny = torch.finfo(logKt.dtype).tiny
    r = logKt.amax(1)  # (B, n): read nm
    logKt.sub_(r[:, None, :])  # read/write nm
    Kt = torch.exp(logKt, out=work["Kt"]) if keep_log else logKt.exp_()  # read nm, write nm
    qs, ss, XT, YT = work["qs"], work["ss"], work["XT"], work["YT"]
    yL = torch.empty_like(b)
    YT[:, n_iters] = 1
    y = YT[:, n_iters]
    for k in range(n_iters):
        q = torch.bmm(y.unsqueeze(1), Kt, out=qs[k].unsqueeze(1)).squeeze(1)  # K y: read nm
        x = torch.div(a, q.clamp_min_(tiny), out=XT[:, k])
        s = torch.bmm(x.unsqueeze(1), Kt.transpose(1, 2), out=ss[k].unsqueeze(1)).squeeze(1)  # K^T x
        y = torch.div(b, s.clamp_min(tiny), out=YT[:, n_iters + k + 1] if k + 1 < n_iters else yL)
    return Kt, r, qs, ss, XT, YT, yL


def _scaled_check(XT, YT, yL, log_min_mass, n_iters):
    """_scaling_ok for the scalings stored by ``_scaled_forward`` (B,)."""
    n, m = XT.shape[2], YT.shape[2]
    xmax = XT[:, :n_iters].amax((1, 2))
    ymax = torch.maximum(YT[:, n_iters:].amax((1, 2)), yL.amax(1))
    return _scaling_ok(xmax, ymax, log_min_mass, n, m)


def _scaled_potentials(log_a, log_b, v0f, r, q, s):
    """u = log a - r - log q, v = v0 + log b - log s (any leading dims; -inf at zero marginals)."""
    tiny = torch.finfo(q.dtype).tiny
    return log_a - r - torch.log(q.clamp_min(tiny)), v0f + log_b - torch.log(s.clamp_min(tiny))


def _scaled_backward(Kt, G, gu, gv, XT, YT, xa, yb, need_marg, M=None, tmp=None):
    """Reverse sweep with P^k = K * x_k y_k^T and R^k = K * x_k y_{k-1}^T, in (B, m, n) layout.

    Kt (B, m, n); G (B, m, n) the direct gS term (transposed), updated in place to gS^T; gu (B, n),
    gv (B, m) direct gradients of u_L, v_L (gu is used as a buffer); XT (B, 2L, n) with x_1..x_L in
    rows 0..L-1; YT (B, 2L, m) with y_0..y_{L-1} in rows L..2L-1; xa (L, B, n) = x_k / a and yb (L, B, m) = y_k / b, 0 where the
    marginal is 0. The free rows of XT and YT receive the other halves of the rank-one terms.
    M, tmp: optional (B, m, n) and (B, n) buffers.
    Returns gS^T (B, m, n) and, if ``need_marg``, grad_log_a (B, n), grad_log_b (B, m), grad_v0 (B, m).
    """
    L = xa.shape[0]
    glog_a = torch.zeros_like(gu) if need_marg else None
    glog_b = torch.zeros_like(gv) if need_marg else None
    for k in range(L, 0, -1):
        if need_marg:
            glog_b += gv
        t = torch.mul(gv, yb[k - 1], out=YT[:, k - 1])  # (B, m)
        Ky = torch.bmm(t.unsqueeze(1), Kt, out=None if tmp is None else tmp.unsqueeze(1)).squeeze(1)
        gu.addcmul_(XT[:, k - 1], Ky, value=-1)  # (B, n): read nm
        if need_marg:
            glog_a += gu
        t = torch.mul(gu, xa[k - 1], out=XT[:, L + k - 1])  # (B, n)
        if k > 1 or need_marg:
            gv = -YT[:, L + k - 1] * _KTx(Kt, t)  # (B, m): read nm
        gu.zero_()
    M = torch.bmm(YT.transpose(1, 2), XT, out=M)  # (B, m, n): write nm, the 2L rank-one terms summed
    G.addcmul_(Kt, M, value=-1)  # read 3nm, write nm
    return G, glog_a, glog_b, gv


# ----------------------------------------------------------------------------------------------
# Backend contract
# ----------------------------------------------------------------------------------------------

def sinkhorn_fwd(C, log_a, log_b, v0, tau, n_iters, want_plan=False):
    """Unrolled Sinkhorn forward.

    Args:
        C (B, n, m) costs; log_a (B, n), log_b (B, m) log marginals (-inf where a marginal is 0);
        v0 (B, m) warm-start column potentials (zeros for a cold start); tau > 0; n_iters >= 1.

    Returns:
        us (n_iters, B, n) = u_1..u_L, vs (n_iters + 1, B, m) = v_0..v_L, the plan
        P = exp(-C / tau + u_L + v_L) (B, n, m) if ``want_plan`` else None, and None (no status: the values
        are checked before).
    """
    B, n, m = C.shape
    v0f = v0.clamp_min(_neg_big(C.dtype))
    work = _workspace(C, B, m, n, n_iters, backward=False)
    logKt = torch.add(v0f[:, :, None], C.transpose(1, 2), alpha=-1.0 / tau, out=work["logKt"])  # (S + v0)^T
    Kt, r, qs, ss, XT, YT, yL = _scaled_forward(logKt, log_a.exp(), log_b.exp(), n_iters, False, work)
    del Kt, logKt
    us = C.new_empty(n_iters, B, n)
    vs = C.new_empty(n_iters + 1, B, m)
    us[:], vs[1:] = _scaled_potentials(log_a, log_b, v0f, r, qs, ss)
    vs[0] = v0
    bad = _split(_scaled_check(XT, YT, yL, _log_min_mass(log_a, log_b), n_iters) & _magnitude_ok(us, vs))
    if bad is not None:
        St = (C[bad] / -tau).transpose(1, 2).contiguous()  # (B', m, n)
        us[:, bad], vs[:, bad] = _log_forward(St, log_a[bad], log_b[bad], v0[bad], n_iters)
    P = None
    if want_plan:
        P = torch.div(C, -tau).add_(us[-1][:, :, None]).add_(vs[-1][:, None, :]).exp_()  # (B, n, m)
    return us, vs, P, None


def sinkhorn_bwd(C, log_a, log_b, tau, us, vs, grad_P, grad_u=None, grad_v=None):
    """Backward of P = exp(-C / tau + u_L + v_L) and of (u_L, v_L) through the unrolled iterations.

    Args:
        C, log_a, log_b, tau: as in ``sinkhorn_fwd``; us (L, B, n), vs (L + 1, B, m) its outputs.
        grad_P: (B, n, m) upstream gradient of P, or None for the gradient of sum_batch H(P).
        grad_u (B, n), grad_v (B, m): upstream gradients of u_L and v_L, or None.

    Returns:
        grad_C (B, n, m), grad_log_a (B, n), grad_log_b (B, m), grad_v0 (B, m).
    """
    B, n, m = C.shape
    L = us.shape[0]
    neg = _neg_big(C.dtype)
    usf, vsf = us.clamp_min(neg), vs.clamp_min(neg)
    uL, vL = usf[-1], vsf[-1]
    logPt = C.new_empty(B, m, n)
    torch.add(uL[:, None, :], C.transpose(1, 2), alpha=-1.0 / tau, out=logPt)  # read nm, write nm
    logPt.add_(vL[:, :, None])  # (B, m, n) = (log P)^T
    Pt = torch.exp(logPt)
    if grad_P is None:
        # seed with +P (log P + 1) = -(grad_P * P); the sweep is linear, so flip the sign at the end
        sign = -1.0
        G = logPt.add_(1).mul_(Pt)
    else:
        sign = 1.0
        G = torch.mul(Pt, grad_P.transpose(1, 2), out=logPt)
    gu, gv = G.sum(1), G.sum(2)
    if grad_u is not None:  # the sweep is linear: seeds carry the sign of G
        gu.add_(grad_u, alpha=sign)
    if grad_v is not None:
        gv.add_(grad_v, alpha=sign)
    # P^k = P * A_k B_k^T with A_k = exp(u_k - u_L) (k = 1..L), B_k = exp(v_k - v_L) (k = 0..L)
    XT = C.new_empty(B, 2 * L, n)
    YT = C.new_empty(B, 2 * L, m)
    A = torch.exp(usf - uL)  # (L, B, n)
    Bc = torch.exp(vsf[:L] - vL)  # (L, B, m): B_0..B_{L-1}; B_L = 1
    XT[:, :L] = A.transpose(0, 1)
    YT[:, L:] = Bc.transpose(0, 1)
    xmax = A.amax((0, 2))
    ymax = Bc.amax((0, 2)).clamp_min(1)
    ok = _scaling_ok(xmax, ymax, _log_min_mass(log_a, log_b), n, m)
    bad = _split(ok & _magnitude_ok(us, vs))
    if bad is not None:  # copies of the direct terms for the log-domain redo (G is updated in place)
        direct_bad = (G[bad], gu[bad], gv[bad])
    inv_b = _inv_mass(log_b)
    yb = torch.cat([Bc[1:], torch.ones_like(Bc[:1])]) * inv_b  # (L, B, m): B_k / b, k = 1..L
    gSt, glog_a, glog_b, gv0 = _scaled_backward(Pt, G, gu, gv, XT, YT, A * _inv_mass(log_a), yb, True)
    grad_C = C.new_empty(B, n, m)
    torch.mul(gSt.transpose(1, 2), sign * (-1.0 / tau), out=grad_C)  # gC = -gS / tau: read/write nm
    if bad is not None:
        St = (C[bad] / -tau).transpose(1, 2).contiguous()  # (B', m, n)
        r = _log_backward(St, us[:, bad], vs[:, bad], *direct_bad)
        grad_C[bad] = r[0].transpose(1, 2) * (sign * (-1.0 / tau))
        glog_a[bad], glog_b[bad], gv0[bad] = r[1], r[2], r[3]
    if sign < 0:
        glog_a, glog_b, gv0 = glog_a.neg_(), glog_b.neg_(), gv0.neg_()
    return grad_C, glog_a, glog_b, gv0


def _mesh_step(Ct, log_a, log_b, a, b, tau, v0, n_iters, log_min_mass, work):
    """One MESH step: Sinkhorn on C' warm-started from v0, and the entropy gradient through it.

    Ct (B, m, n) = C'^T. Returns u_L (B, n), v_L (B, m) and Dt (B, m, n) = -(dH/dS)^T with
    S = -C' / tau, i.e. dH/dC' = Dt^T / tau. ``work``: buffers from ``_workspace`` (Dt is one of them).
    """
    B, m, n = Ct.shape
    tiny = torch.finfo(Ct.dtype).tiny
    v0f = v0.clamp_min(_neg_big(Ct.dtype))
    logKt = torch.add(v0f[:, :, None], Ct, alpha=-1.0 / tau, out=work["logKt"])  # (S + v0)^T: read/write nm
    Kt, r, qs, ss, XT, YT, yL = _scaled_forward(logKt, a, b, n_iters, True, work)
    ok = _scaled_check(XT, YT, yL, log_min_mass, n_iters)
    uL, vL = _scaled_potentials(log_a, log_b, v0f, r, qs[-1], ss[-1])
    ok &= _magnitude_ok(uL[None], torch.stack([v0, vL]))
    # seed D = +P (log P + 1) with P = K x_L y_L^T and log P = log K + log x_L + log y_L
    xL = XT[:, n_iters - 1]
    lx = torch.log(xL.clamp_min(tiny)).add_(1)  # (B, n); +1 of dH/dP folded in
    ly = torch.log(yL.clamp_min(tiny))  # (B, m)
    D = logKt.add_(lx[:, None, :]).add_(ly[:, :, None])  # log P + 1: 2 passes, in place
    D.mul_(Kt).mul_(xL[:, None, :]).mul_(yL[:, :, None])  # times P: 3 passes
    gu, gv = D.sum(1), D.sum(2)
    xa = torch.reciprocal(qs, out=work["xa"])  # (L, B, n): x_k / a (q already clamped to >= tiny)
    yb = 1.0 / ss.clamp_min(tiny)  # (L, B, m): y_k / b
    D = _scaled_backward(Kt, D, gu, gv, XT, YT, xa, yb, False, work["M"], work["tmp"])[0]
    bad = _split(ok)
    if bad is not None:
        u_b, v_b, gSt_b = _log_entropy_grad(Ct[bad] / -tau, log_a[bad], log_b[bad], v0[bad], n_iters)
        uL[bad], vL[bad] = u_b, v_b
        D[bad] = gSt_b.neg_()
    return uL, vL, D


def mesh_fwd(C, log_a, log_b, noise, params, trace=False):
    """The MESH loop (Eq. 9-12) without autograd.

    Args:
        C (B, n, m) costs; log_a (B, n), log_b (B, m) log marginals; noise (B, n, m) standard normal;
        params: ``kernels.MeshParams`` (n_mesh_iters >= 1); trace: also return the costs and warm starts of
        every step (for ``mesh_bwd``).

    Returns:
        C_T (B, n, m) the moved costs, u (B, n), v (B, m) of the last step's Sinkhorn, None (no status) and
        the ``MeshTrace`` or None.
    """
    tau, lr, n_sh_iters = params.tau, params.lr, params.n_sh_iters
    B, n, m = C.shape
    Ct = C.new_empty(B, m, n)
    torch.add(C.transpose(1, 2), noise.transpose(1, 2), alpha=params.noise_scale, out=Ct)  # C'_0^T
    a, b = log_a.exp(), log_b.exp()
    zeros = torch.zeros_like(b)
    log_min_mass = _log_min_mass(log_a, log_b)
    tiny = torch.finfo(C.dtype).tiny
    u = v = None
    v0 = zeros
    work = _workspace(C, B, m, n, n_sh_iters, backward=True)
    tr = MeshTrace(C.new_empty(params.n_mesh_iters, B, n, m), C.new_empty(params.n_mesh_iters, B, m)) if trace else None
    for t in range(params.n_mesh_iters):
        if trace:
            tr.C[t], tr.v0[t] = Ct.transpose(1, 2), v0
        u, v, D = _mesh_step(Ct, log_a, log_b, a, b, tau, v0, n_sh_iters, log_min_mass, work)
        # g = dH/dC' = D^T / tau;  C' <- C' - lr g / max(||g||, tiny)
        norm = torch.linalg.vector_norm(D, dim=(1, 2)) / tau  # (B,) = ||g||_F: read nm
        inv = 1.0 / norm.clamp_min(tiny)
        coef = (-lr / tau) * inv
        if not bool(torch.isfinite(coef).all()):
            # a (numerically) zero gradient: normalize first, as g / max(||g||, tiny) does
            D.mul_(inv[:, None, None])
            coef = torch.full_like(coef, -lr / tau)
        Ct.addcmul_(D, coef[:, None, None])  # read 2nm, write nm
        v0 = v if params.reuse_uv else zeros
    return Ct.transpose(1, 2).contiguous(), u, v, None, tr


def chain_mesh_bwd(sinkhorn_fwd, sinkhorn_bwd, trace, log_a, log_b, params, grad_u, grad_v):
    """MESH's warm-start gradient from a backend's Sinkhorn forward and backward.

    Step t's Sinkhorn is recomputed from the recorded C'_t and warm start v_t, then swept backward with the
    seeds (grad_u, grad_v) on the last step and (0, the gradient of the next step's warm start) before it; C'_t
    passes its gradient to C unchanged (straight through), so the costs' gradient is the sum over steps.
    trace: ``MeshTrace`` (T, B, n, m), (T, B, m); grad_u (B, n), grad_v (B, m).
    Returns grad_C (B, n, m), grad_log_a (B, n), grad_log_b (B, m).
    """
    T = params.n_mesh_iters
    grad_C, ga, gb = torch.zeros_like(trace.C[0]), torch.zeros_like(log_a), torch.zeros_like(log_b)
    no_plan_grad = torch.zeros_like(trace.C[0])
    gu, gv = grad_u, grad_v
    for t in range(T - 1, -1 if params.reuse_uv else T - 2, -1):  # cold starts cut the chain
        us, vs, _, _ = sinkhorn_fwd(trace.C[t], log_a, log_b, trace.v0[t], params.tau, params.n_sh_iters, False)
        gC, gla, glb, gv = sinkhorn_bwd(trace.C[t], log_a, log_b, params.tau, us, vs, no_plan_grad, gu, gv)
        grad_C += gC
        ga += gla
        gb += glb
        gu = None
    return grad_C, ga, gb


def mesh_bwd(trace, log_a, log_b, params, grad_u, grad_v):
    """``chain_mesh_bwd`` with this module's Sinkhorn."""
    return chain_mesh_bwd(sinkhorn_fwd, sinkhorn_bwd, trace, log_a, log_b, params, grad_u, grad_v)


BACKEND = Backend(sinkhorn_fwd, sinkhorn_bwd, mesh_fwd, mesh_bwd, validates=False, device=None)
