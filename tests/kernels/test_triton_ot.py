"""Tests of the Triton Sinkhorn / MESH kernels (kernels/triton_ot.py) against the autograd references.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (the root conftest sets
TRITON_INTERPRET=1), so shapes are small.  With a GPU the same tests run on CUDA tensors.

Error rule (STYLE.md): the kernel's error against the float64 reference may be at most twice the error of
the reference run at the kernel's own precision, plus a small atol.  Small ``block_n`` values force several
row tiles and a partial last tile, which exercises the streaming column log-sum-exp and the masking.
"""
import math

import ot
import pytest
import torch

from kernels import MeshParams, torch_ot, triton_ot
from kernels.reference import mesh_ref, sinkhorn_ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
F32, F64 = torch.float32, torch.float64
ATOL = {F32: 2e-5, F64: 1e-11}


def _on_device(p):
    """C, a, b of a conftest ``problem`` on the test device (a zero row 1, a zero column 0 if asked for)."""
    return [t.to(DEVICE) for t in p[:3]]


def _assert_close(out, ref64, ref_lo, atol):
    """|out - ref64| <= 2 |ref_lo - ref64| + atol * max(1, |ref64|), elementwise max; equal infinities."""
    out, ref64, ref_lo = out.double(), ref64.double(), ref_lo.double()
    assert torch.isfinite(out).eq(torch.isfinite(ref64)).all(), "infinite entries differ from the reference"
    inf = ~torch.isfinite(ref64)
    assert torch.equal(out[inf], ref64[inf])
    fin = ~inf
    err = (out[fin] - ref64[fin]).abs().max().item() if fin.any() else 0.0
    ref_err = (ref_lo[fin] - ref64[fin]).abs().max().item() if fin.any() else 0.0
    scale = max(1.0, ref64[fin].abs().max().item()) if fin.any() else 1.0
    assert err <= 2 * ref_err + atol * scale, f"error {err:.3g} vs reference's own {ref_err:.3g}"


def _ref_forward(C, a, b, tau, n_iters, v0):
    """(us, vs) as in the contract, from sinkhorn_ref run for 1..L iterations."""
    us, vs = [], [v0]
    for k in range(1, n_iters + 1):
        _, u, v = sinkhorn_ref(C, a, b, k, tau, None, v0)
        us.append(u)
        vs.append(v)
    return torch.stack(us), torch.stack(vs)


def _safe_entropy(C, u, v, tau):
    """sum_batch H(P) from log P, with 0 log 0 = 0 where a marginal entry is 0 (log P = -inf)."""
    log_p = -C / tau + u[:, :, None] + v[:, None, :]
    return -(torch.exp(log_p) * torch.where(torch.isinf(log_p), torch.zeros_like(log_p), log_p)).sum()


def _ref_grads(C, a, b, tau, n_iters, v0, grad_P):
    """Autograd through sinkhorn_ref: (grad_C, grad_log_a, grad_log_b, grad_v0); grad_P None = entropy."""
    C, a, b, v0 = (t.detach().clone().requires_grad_(True) for t in (C, a, b, v0))
    with torch.enable_grad():
        P, u, v = sinkhorn_ref(C, a, b, n_iters, tau, None, v0)
        out = _safe_entropy(C, u, v, tau) if grad_P is None else (P * grad_P).sum()
        gC, ga, gb, gv0 = torch.autograd.grad(out, (C, a, b, v0))
    # d/dlog a = a d/da; 0 where a = 0 (the contract's convention; autograd gives 0/0 there)
    ga = torch.where(a > 0, ga * a, torch.zeros_like(ga))
    gb = torch.where(b > 0, gb * b, torch.zeros_like(gb))
    return gC, ga.detach(), gb.detach(), gv0


def _log(x):
    return torch.log(x).contiguous()


# ---------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------
FWD_CASES = [  # (B, n, m, n_iters, block_n)
    (2, 1, 3, 3, None),
    (3, 7, 1, 2, None),
    (3, 33, 5, 4, 8),
    (2, 70, 17, 3, 16),
    (2, 7, 64, 3, None),
]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("B,n,m,n_iters,block_n", FWD_CASES)
def test_sinkhorn_fwd_matches_reference(B, n, m, n_iters, block_n, warm, dtype, problem):
    C, a, b = _on_device(problem(B, n, m, seed=n * 100 + m, scale=3.0))
    tau = 0.7
    v0 = torch.randn(B, m, dtype=F64, device=DEVICE) if warm else torch.zeros(B, m, dtype=F64, device=DEVICE)
    us64, vs64 = _ref_forward(C, a, b, tau, n_iters, v0)
    lo = [t.to(dtype) for t in (C, a, b, v0)]
    us_lo, vs_lo = _ref_forward(*lo[:3], tau, n_iters, lo[3])
    us, vs = triton_ot.launch_sinkhorn_fwd(lo[0], _log(lo[1]), _log(lo[2]), tau, n_iters, lo[3], block_n=block_n)
    assert us.shape == (n_iters, B, n) and vs.shape == (n_iters + 1, B, m) and us.dtype == dtype
    assert torch.equal(vs[0], lo[3])
    _assert_close(us, us64, us_lo, ATOL[dtype])
    _assert_close(vs, vs64, vs_lo, ATOL[dtype])
    # the plan meets the column marginals exactly after the last column update
    P = torch.exp(-lo[0] / tau + us[-1][:, :, None] + vs[-1][:, None, :])
    torch.testing.assert_close(P.sum(1), lo[2], rtol=1e-5 if dtype == F32 else 1e-12, atol=0.0)


def test_sinkhorn_fwd_default_entry_point_equals_launcher(problem):
    C, a, b = _on_device(problem(2, 9, 4, seed=3, scale=3.0))
    v0 = torch.zeros(2, 4, dtype=F64, device=DEVICE)
    us, vs = triton_ot.sinkhorn_fwd(C, _log(a), _log(b), v0, 0.5, 3)[:2]
    us2, vs2 = triton_ot.launch_sinkhorn_fwd(C, _log(a), _log(b), 0.5, 3, v0, block_n=4)
    torch.testing.assert_close(us, us2, rtol=0, atol=1e-13)
    torch.testing.assert_close(vs, vs2, rtol=0, atol=1e-13)


def test_converged_plan_matches_pot(problem):
    C, a, b = _on_device(problem(2, 7, 5, seed=11, scale=3.0))
    tau = 1.0
    us, vs = triton_ot.launch_sinkhorn_fwd(C, _log(a), _log(b), tau, 100, torch.zeros_like(b), block_n=4)
    P = torch.exp(-C / tau + us[-1][:, :, None] + vs[-1][:, None, :])
    for k in range(2):
        P_pot = ot.sinkhorn(a[k].cpu().numpy(), b[k].cpu().numpy(), C[k].cpu().numpy(), tau,
                            method="sinkhorn_log", numItermax=5000, stopThr=1e-14)
        torch.testing.assert_close(P[k].cpu(), torch.as_tensor(P_pot), rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------
BWD_CASES = [  # (B, n, m, n_iters, block_n)
    (2, 1, 3, 2, None),
    (3, 33, 5, 4, 8),
    (2, 70, 17, 3, 32),
    (2, 7, 64, 2, None),
]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("upstream", ["grad_P", "entropy"])
@pytest.mark.parametrize("B,n,m,n_iters,block_n", BWD_CASES)
def test_sinkhorn_bwd_matches_autograd(B, n, m, n_iters, block_n, upstream, dtype, problem):
    C, a, b = _on_device(problem(B, n, m, seed=n * 7 + m, scale=3.0))
    tau = 0.6
    g = torch.Generator().manual_seed(5)
    v0 = torch.randn(B, m, generator=g, dtype=F64).to(DEVICE)
    G = torch.randn(B, n, m, generator=g, dtype=F64).to(DEVICE) if upstream == "grad_P" else None
    ref64 = _ref_grads(C, a, b, tau, n_iters, v0, G)
    lo = [t.to(dtype) for t in (C, a, b, v0)]
    G_lo = None if G is None else G.to(dtype)
    ref_lo = _ref_grads(*lo[:3], tau, n_iters, lo[3], G_lo)
    us, vs = triton_ot.launch_sinkhorn_fwd(lo[0], _log(lo[1]), _log(lo[2]), tau, n_iters, lo[3], block_n=block_n)
    out = triton_ot.launch_sinkhorn_bwd(lo[0], _log(lo[1]), _log(lo[2]), tau, us, vs, G_lo, block_n=block_n)
    shapes = [(B, n, m), (B, n), (B, m), (B, m)]
    for name, o, r64, rlo, shape in zip(("grad_C", "grad_log_a", "grad_log_b", "grad_v0"), out, ref64, ref_lo,
                                        shapes):
        assert o.shape == shape and o.dtype == dtype, name
        _assert_close(o, r64, rlo, 4 * ATOL[dtype])


def test_sinkhorn_bwd_gradcheck_float64(problem):
    """The composed fwd/bwd as an autograd.Function passes torch's numerical gradient check in C and v0."""
    C, a, b = _on_device(problem(2, 6, 3, seed=21, scale=3.0))
    tau = 0.8
    la, lb = _log(a), _log(b)
    G = torch.randn(2, 6, 3, dtype=F64, device=DEVICE)

    class _Plan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, C, v0):
            us, vs = triton_ot.sinkhorn_fwd(C.contiguous(), la, lb, v0.contiguous(), tau, 3)[:2]
            ctx.save_for_backward(C, us, vs)
            return torch.exp(-C / tau + us[-1][:, :, None] + vs[-1][:, None, :])

        @staticmethod
        def backward(ctx, grad_P):
            C, us, vs = ctx.saved_tensors
            gC, _, _, gv0 = triton_ot.sinkhorn_bwd(C, la, lb, tau, us, vs, grad_P.contiguous())
            return gC, gv0

    Cr = C.clone().requires_grad_(True)
    v0 = (0.3 * torch.randn(2, 3, dtype=F64, device=DEVICE)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda C, v0: (_Plan.apply(C, v0) * G).sum(), (Cr, v0), eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------
# Zero marginal entries and extreme costs
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F64])
def test_zero_marginal_entries(dtype, problem):
    B, n, m, L, tau = 2, 9, 4, 3, 0.5
    C, a, b = _on_device(problem(B, n, m, seed=8, zero_row=True, zero_col=True, scale=3.0))
    v0 = torch.zeros(B, m, dtype=F64, device=DEVICE)
    lo = [t.to(dtype) for t in (C, a, b, v0)]
    us, vs = triton_ot.launch_sinkhorn_fwd(lo[0], _log(lo[1]), _log(lo[2]), tau, L, lo[3], block_n=4)
    us64, vs64 = _ref_forward(C, a, b, tau, L, v0)
    us_lo, vs_lo = _ref_forward(*lo[:3], tau, L, lo[3])
    _assert_close(us, us64, us_lo, ATOL[dtype])
    _assert_close(vs, vs64, vs_lo, ATOL[dtype])
    P = torch.exp(-lo[0] / tau + us[-1][:, :, None] + vs[-1][:, None, :])
    assert torch.equal(P[:, 1, :], torch.zeros_like(P[:, 0, :]))
    assert torch.equal(P[:, :, 0], torch.zeros_like(P[:, :, 1]))
    for G in (torch.randn(B, n, m, dtype=F64, device=DEVICE), None):
        out = triton_ot.launch_sinkhorn_bwd(lo[0], _log(lo[1]), _log(lo[2]), tau, us, vs,
                                            None if G is None else G.to(dtype), block_n=4)
        ref64 = _ref_grads(C, a, b, tau, L, v0, G)
        ref_lo = _ref_grads(*lo[:3], tau, L, lo[3], None if G is None else G.to(dtype))
        for o, r64, rlo in zip(out, ref64, ref_lo):
            assert torch.isfinite(o).all()
            _assert_close(o, r64, rlo, 4 * ATOL[dtype])
        gC, g_la, g_lb, _ = out
        assert torch.equal(g_la[:, 1], torch.zeros_like(g_la[:, 0]))
        assert torch.equal(g_lb[:, 0], torch.zeros_like(g_lb[:, 1]))
        assert torch.equal(gC[:, 1, :], torch.zeros_like(gC[:, 0, :]))
        # A cold start v_0 = 0 lets the zero-mass column enter u_1, so C's column gets a gradient (autograd
        # agrees, above).  Started from v_0 = log b there (-inf), the column is inert and its gradient is 0.
        v0_inert = torch.where(lo[2] > 0, lo[3], torch.full_like(lo[3], -math.inf))
        us_i, vs_i = triton_ot.launch_sinkhorn_fwd(lo[0], _log(lo[1]), _log(lo[2]), tau, L, v0_inert, block_n=4)
        gC_i, _, _, gv0_i = triton_ot.launch_sinkhorn_bwd(lo[0], _log(lo[1]), _log(lo[2]), tau, us_i, vs_i,
                                                          None if G is None else G.to(dtype), block_n=4)
        assert torch.isfinite(gC_i).all() and torch.isfinite(gv0_i).all()
        assert torch.equal(gC_i[:, :, 0], torch.zeros_like(gC_i[:, :, 1]))
        assert torch.equal(gv0_i[:, 0], torch.zeros_like(gv0_i[:, 1]))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_large_costs_small_tau_stay_finite(dtype, problem):
    B, n, m, L, tau = 2, 12, 5, 4, 1e-3
    C, a, b = _on_device(problem(B, n, m, seed=4, scale=1e4))
    Ct, la, lb = C.to(dtype), _log(a.to(dtype)), _log(b.to(dtype))
    v0 = torch.zeros(B, m, dtype=dtype, device=DEVICE)
    us, vs = triton_ot.launch_sinkhorn_fwd(Ct, la, lb, tau, L, v0, block_n=4)
    assert torch.isfinite(us).all() and torch.isfinite(vs).all()
    for G in (torch.randn(B, n, m, dtype=dtype, device=DEVICE), None):
        for t in triton_ot.launch_sinkhorn_bwd(Ct, la, lb, tau, us, vs, G, block_n=4):
            assert torch.isfinite(t).all()
    noise = torch.randn(B, n, m, dtype=dtype, device=DEVICE)
    for t in triton_ot.launch_mesh_fwd(Ct, la, lb, noise, MeshParams(2, 3, 8.0, 1e-3, tau, True), block_n=8)[:3]:
        assert torch.isfinite(t).all()
    if dtype == F64:  # in float64 the log-domain iterates still agree with the reference at this scale
        us64, vs64 = _ref_forward(C, a, b, tau, L, v0)
        torch.testing.assert_close(us, us64, rtol=1e-12, atol=1e-6)
        torch.testing.assert_close(vs, vs64, rtol=1e-12, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# MESH
# ---------------------------------------------------------------------------------------------------------
def _mesh_ref_safe(C, a, b, T, L, lr, noise, noise_scale, reuse_uv, tau):
    """mesh_ref with the 0 log 0 = 0 entropy (mesh_ref's entropy is NaN where a marginal entry is 0)."""
    Ct, v = C + noise_scale * noise, None
    for _ in range(T):
        Cg = Ct.detach().requires_grad_(True)
        with torch.enable_grad():
            _, u_new, v_new = sinkhorn_ref(Cg, a, b, L, tau, None, v)
            (g,) = torch.autograd.grad(_safe_entropy(Cg, u_new, v_new, tau), Cg)
        norm = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)
        Ct = Ct - lr * g / norm[:, None, None]
        v = v_new.detach() if reuse_uv else None
    return Ct, u_new.detach(), v_new.detach()


def _mesh_ref_all(C, a, b, T, L, lr, noise, noise_scale, reuse_uv, tau):
    """(C_T, u_L, v_L) of the last step, from mesh_ref (for reuse_uv False via T-1 steps + a cold Sinkhorn)."""
    C_T, u, v = mesh_ref(C, a, b, T, L, lr, noise, noise_scale, reuse_uv, tau)
    if not reuse_uv:  # the last step ran a cold Sinkhorn on C'_{T-1}
        C_prev = C + noise_scale * noise
        if T > 1:
            C_prev = mesh_ref(C, a, b, T - 1, L, lr, noise, noise_scale, False, tau)[0]
        _, u, v = sinkhorn_ref(C_prev, a, b, L, tau)
    return C_T, u, v


MESH_CASES = [  # (B, n, m, T, L, block_n)
    (2, 7, 3, 3, 4, None),
    (2, 33, 5, 2, 3, 16),
    (2, 5, 17, 2, 2, None),
]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("reuse_uv", [True, False])
@pytest.mark.parametrize("B,n,m,T,L,block_n", MESH_CASES)
def test_mesh_fwd_matches_reference(B, n, m, T, L, block_n, reuse_uv, dtype, problem):
    C, a, b = _on_device(problem(B, n, m, seed=n + 13 * m, scale=3.0))
    tau, lr, noise_scale = 0.5, 2.0, 1e-3
    noise = torch.randn(B, n, m, generator=torch.Generator().manual_seed(2), dtype=F64).to(DEVICE)
    ref64 = _mesh_ref_all(C, a, b, T, L, lr, noise, noise_scale, reuse_uv, tau)
    lo = [t.to(dtype) for t in (C, a, b, noise)]
    ref_lo = _mesh_ref_all(lo[0], lo[1], lo[2], T, L, lr, lo[3], noise_scale, reuse_uv, tau)
    out = triton_ot.launch_mesh_fwd(lo[0], _log(lo[1]), _log(lo[2]), lo[3], MeshParams(T, L, lr, noise_scale, tau, reuse_uv),
                                    block_n=block_n)[:3]
    for o, r64, rlo, shape in zip(out, ref64, ref_lo, [(B, n, m), (B, n), (B, m)]):
        assert o.shape == shape and o.dtype == dtype
        _assert_close(o, r64, rlo, 4 * ATOL[dtype])
    # every step moves C' by exactly lr in Frobenius norm per batch element (the gradient is never 0 here)
    moved = (out[0].double() - (C + noise_scale * noise)).flatten(1).norm(dim=1)
    assert (moved > 0.5 * lr).all() and (moved <= T * lr * (1 + 1e-4)).all()


def test_mesh_fwd_single_step_moves_by_lr(problem):
    C, a, b = _on_device(problem(3, 8, 4, seed=31, scale=3.0))
    noise = torch.randn(3, 8, 4, dtype=F64, device=DEVICE)
    C_T, _, _ = triton_ot.mesh_fwd(C, _log(a), _log(b), noise, MeshParams(1, 3, 0.25, 1e-3, 0.5, True))[:3]
    step = (C_T - (C + 1e-3 * noise)).flatten(1).norm(dim=1)
    torch.testing.assert_close(step, torch.full_like(step, 0.25), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_mesh_fwd_zero_marginal_entries(dtype, problem):
    B, n, m, T, L, tau, lr = 2, 9, 4, 2, 3, 0.5, 2.0
    C, a, b = _on_device(problem(B, n, m, seed=17, zero_row=True, zero_col=True, scale=3.0))
    noise = torch.randn(B, n, m, generator=torch.Generator().manual_seed(4), dtype=F64).to(DEVICE)
    ref64 = _mesh_ref_safe(C, a, b, T, L, lr, noise, 1e-3, True, tau)
    lo = [t.to(dtype) for t in (C, a, b, noise)]
    ref_lo = _mesh_ref_safe(lo[0], lo[1], lo[2], T, L, lr, lo[3], 1e-3, True, tau)
    out = triton_ot.launch_mesh_fwd(lo[0], _log(lo[1]), _log(lo[2]), lo[3], MeshParams(T, L, lr, 1e-3, tau, True),
                                    block_n=4)[:3]
    for o, r64, rlo in zip(out, ref64, ref_lo):
        _assert_close(o, r64, rlo, 4 * ATOL[dtype])
    C0 = lo[0] + 1e-3 * lo[3]
    # no gradient flows into the zero-mass row: its costs stay at C'_0 (the zero-mass column does get one on
    # the cold first step, through u_1, as test_zero_marginal_entries explains; the reference agrees above)
    assert torch.equal(out[0][:, 1, :], C0[:, 1, :])
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1][:, [0, *range(2, n)]]).all()
    assert torch.equal(out[2][:, 0], torch.full_like(out[2][:, 1], -math.inf))


def test_mesh_breaks_ties_between_identical_columns(problem):
    """Two identical slots get identical Sinkhorn columns; after MESH their columns differ clearly."""
    B, n, m, tau = 2, 12, 4, 1.0
    C, a, b = _on_device(problem(B, n, m, seed=40, scale=3.0))
    C[:, :, 1] = C[:, :, 0]
    b[:, 1] = b[:, 0]
    b = b / b.sum(1, keepdim=True) * a.sum(1, keepdim=True)
    la, lb = _log(a), _log(b)
    noise = torch.randn(B, n, m, generator=torch.Generator().manual_seed(6), dtype=F64).to(DEVICE)
    us, vs = triton_ot.sinkhorn_fwd(C, la, lb, torch.zeros_like(b), tau, 5)[:2]
    P = torch.exp(-C / tau + us[-1][:, :, None] + vs[-1][:, None, :])
    torch.testing.assert_close(P[:, :, 0], P[:, :, 1], rtol=1e-12, atol=1e-14)
    C2, u, v = triton_ot.mesh_fwd(C, la, lb, noise, MeshParams(4, 5, 8.0, 1e-3, tau, True))[:3]
    us2, vs2 = triton_ot.sinkhorn_fwd(C2, la, lb, v, tau, 5)[:2]
    P2 = torch.exp(-C2 / tau + us2[-1][:, :, None] + vs2[-1][:, None, :])
    assert ((P2[:, :, 0] - P2[:, :, 1]).abs().sum(1) > 0.1 * b[:, 0]).all()

    def entropy(P):
        return -(P * torch.log(P)).sum((1, 2))

    assert (entropy(P2) < entropy(P) - 0.1).all()


# ---------------------------------------------------------------------------------------------------------
# Against the PyTorch path (when it exists) and launcher validation
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F64])
def test_matches_torch_path(dtype, problem):
    """Same contract, same numbers: triton_ot against torch_ot, with a zero row and a zero column."""
    B, n, m, L, tau = 2, 11, 5, 3, 0.6
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else dict(rtol=1e-10, atol=1e-10)
    C, a, b = (t.to(dtype) for t in _on_device(problem(B, n, m, seed=77, zero_row=True, zero_col=True, scale=3.0)))
    la, lb = _log(a), _log(b)
    for v0 in (torch.zeros(B, m, dtype=dtype, device=DEVICE), torch.randn(B, m, dtype=dtype, device=DEVICE)):
        us, vs = triton_ot.sinkhorn_fwd(C, la, lb, v0, tau, L)[:2]
        us_t, vs_t = torch_ot.sinkhorn_fwd(C, la, lb, v0, tau, L)[:2]
        torch.testing.assert_close(us, us_t, **tol)
        torch.testing.assert_close(vs, vs_t, **tol)
        for grad_P in (torch.randn(B, n, m, dtype=dtype, device=DEVICE), None):
            for x, y in zip(triton_ot.sinkhorn_bwd(C, la, lb, tau, us, vs, grad_P),
                            torch_ot.sinkhorn_bwd(C, la, lb, tau, us, vs, grad_P)):
                torch.testing.assert_close(x, y, **tol)
    noise = torch.randn(B, n, m, dtype=dtype, device=DEVICE)
    for reuse_uv in (True, False):
        for x, y in zip(triton_ot.mesh_fwd(C, la, lb, noise, MeshParams(3, L, 4.0, 1e-3, tau, reuse_uv))[:3],
                        torch_ot.mesh_fwd(C, la, lb, noise, MeshParams(3, L, 4.0, 1e-3, tau, reuse_uv))[:3]):
            torch.testing.assert_close(x, y, **tol)


def test_launchers_reject_bad_input(problem):
    C, a, b = _on_device(problem(2, 5, 3, seed=1, scale=3.0))
    la, lb = _log(a), _log(b)
    v0 = torch.zeros(2, 3, dtype=F64, device=DEVICE)
    with pytest.raises(ValueError, match="n_iters"):
        triton_ot.sinkhorn_fwd(C, la, lb, v0, 1.0, 0)[:2]
    with pytest.raises(ValueError, match="v0"):
        triton_ot.sinkhorn_fwd(C, la, lb, v0[:, :2], 1.0, 2)[:2]
    with pytest.raises(ValueError, match="log_b"):
        triton_ot.sinkhorn_fwd(C, la, lb[:, :2].contiguous(), v0, 1.0, 2)
    with pytest.raises(ValueError, match="contiguous"):
        triton_ot.sinkhorn_fwd(C.transpose(1, 2).contiguous().transpose(1, 2), la, lb, v0, 1.0, 2)
    with pytest.raises(ValueError, match="dtype"):
        triton_ot.sinkhorn_fwd(C, la.float(), lb, v0, 1.0, 2)[:2]
    with pytest.raises(ValueError, match="tau"):
        triton_ot.sinkhorn_fwd(C, la, lb, v0, -1.0, 2)[:2]
    with pytest.raises(ValueError, match="block_n"):
        triton_ot.launch_sinkhorn_fwd(C, la, lb, 1.0, 2, v0, block_n=3)
    us, vs = triton_ot.sinkhorn_fwd(C, la, lb, v0, 1.0, 2)[:2]
    with pytest.raises(ValueError, match="grad_P"):
        triton_ot.sinkhorn_bwd(C, la, lb, 1.0, us, vs, torch.zeros(2, 5, 2, dtype=F64, device=DEVICE))
    with pytest.raises(ValueError, match="vs"):
        triton_ot.sinkhorn_bwd(C, la, lb, 1.0, us, vs[1:], None)
    with pytest.raises(ValueError, match="n_mesh_iters"):
        triton_ot.mesh_fwd(C, la, lb, torch.zeros_like(C), MeshParams(0, 2, 1.0, 1e-3, 1.0, True))[:3]
    with pytest.raises(ValueError, match="lr"):
        triton_ot.mesh_fwd(C, la, lb, torch.zeros_like(C), MeshParams(1, 2, math.inf, 1e-3, 1.0, True))[:3]


_COMPILE_SCRIPT = r"""
import sys
import torch
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:
    sys.exit(77)
from kernels import triton_ot as T

for dtype, n, m in ((torch.float32, 4096, 11), (torch.float64, 100, 64)):
    block_n, block_m, num_warps = T._blocks(n, m, dtype)
    ptr = "*fp32" if dtype == torch.float32 else "*fp64"
    for fn, extra in ((T._sinkhorn_fwd_kernel, {}), (T._sinkhorn_bwd_kernel, {"HAS_G": True, "HAS_UV": True}),
                      (T._sinkhorn_bwd_kernel, {"HAS_G": False, "HAS_UV": False}), (T._mesh_kernel, {"TRACE": False}),
                      (T._mesh_kernel, {"TRACE": True})):
        consts = dict(extra, BLOCK_N=block_n, BLOCK_M=block_m)
        sig = {a: "constexpr" if a in consts else ptr if a.endswith("_ptr") else "i32" for a in fn.arg_names}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        assert len(k.asm["cubin"]) > 0
        print(fn.__name__, dtype, consts, "ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the other tests compile and run the kernels")
def test_kernels_compile_for_sm90(tmp_path):
    """The interpreter does not type-check like the compiler: build every kernel to a cubin for sm_90.

    Runs in a subprocess because TRITON_INTERPRET=1 (set for this process) turns @triton.jit functions
    into interpreted ones that cannot be compiled.  Needs no GPU, only the ptxas bundled with triton.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 77:
        pytest.skip("this triton has no ahead-of-time compile API (triton.compiler.ASTSource / GPUTarget)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" ok") == 10
