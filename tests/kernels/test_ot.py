"""The backend contract suite: the public Sinkhorn and MESH (kernels/ot.py, kernels/mesh.py) with every backend
(the ``backend`` fixture: the C++ loops, the PyTorch path, Triton in its interpreter without a GPU), plus the
public API's own behaviour (dispatch, options, imports).

Referees: POT's log-domain Sinkhorn for converged plans, the plain-autograd references of kernels/reference.py
for the unrolled values and gradients (``mesh_official_ref`` for MESH's warm-start gradient),
torch.autograd.gradcheck in float64; the closeness rule is the ``close`` fixture's (tests/kernels/conftest.py).
"""
import math

import numpy as np
import ot as pot
import pytest
import torch

import kernels
from kernels import BACKENDS, mesh, sinkhorn, torch_ot
from kernels.backends import get_backend
from kernels.reference import entropy_ref, mesh_official_ref, mesh_ref, sinkhorn_ref

F32, F64 = torch.float32, torch.float64
ATOL = {F32: 1e-5, F64: 1e-12}


def _grads(fn, C, a, b, v, gP):
    """(P, u, v) and d<P, gP>/d(C, a, b, v) of fn(C, a, b, v) -> (P, u, v)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (C, a, b, v)]
    P, u, vv = fn(*leaves)
    grads = torch.autograd.grad((P * gP.to(P.dtype)).sum(), leaves)
    return (P.detach(), u.detach(), vv.detach()), grads


# ------------------------------------------------------------------------------------------------
# Converged plans against POT
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,m,tau", [(30, 7, 0.5), (12, 40, 1.0), (64, 5, 0.2)])
def test_converged_plan_equals_pot_sinkhorn_log(n, m, tau, problem):
    C, a, b = problem(3, n, m, seed=n + m)[:3]
    P, u, v = sinkhorn(C, a, b, n_iters=600, tau=tau)
    for k in range(3):
        # POT: rows of M follow a, reg is the entropic temperature
        ref = pot.sinkhorn(a[k].numpy(), b[k].numpy(), C[k].numpy(), tau, method="sinkhorn_log",
                           numItermax=5000, stopThr=1e-14)
        np.testing.assert_allclose(P[k].numpy(), ref, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(P.sum(2), a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(P.sum(1), b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(P, torch.exp(-C / tau + u[:, :, None] + v[:, None, :]))


# ------------------------------------------------------------------------------------------------
# Unrolled values and gradients against autograd through the reference
# ------------------------------------------------------------------------------------------------

SHAPES = [(2, 13, 64, 5), (3, 100, 7, 5), (2, 37, 5, 3), (4, 9, 1, 2), (2, 1, 6, 1)]


@pytest.mark.large_shapes
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("B,n,m,L", SHAPES)
def test_sinkhorn_values_and_grads_match_autograd(B, n, m, L, warm, dtype, problem, close, backend):
    C, a, b = problem(B, n, m, seed=B * n + m)[:3]
    tau = 0.7
    g = torch.Generator().manual_seed(1)
    v = torch.randn(B, m, generator=g, dtype=F64) if warm else torch.zeros(B, m, dtype=F64)
    gP = torch.randn(B, n, m, generator=g, dtype=F64)

    def ours(C, a, b, v):
        return sinkhorn(C, a, b, L, tau, v=v, backend=backend)

    def ref(C, a, b, v):
        return sinkhorn_ref(C, a, b, L, tau, None, v)

    lo = [t.to(dtype) for t in (C, a, b, v)]
    out, grads = _grads(ours, *lo, gP)
    ref64, rgrads64 = _grads(ref, C, a, b, v, gP)
    ref_lo, rgrads_lo = _grads(ref, *lo, gP)
    for o, r, rl in zip(out + grads, ref64 + rgrads64, ref_lo + rgrads_lo):
        assert o.dtype == dtype
        close(o, r, rl, ATOL[dtype])


@pytest.mark.large_shapes  # test_triton_ot.py: its gradcheck and tie-breaking tests
@pytest.mark.parametrize("B,n,m", [(2, 5, 3), (1, 4, 6)])
def test_sinkhorn_gradcheck(B, n, m, problem, backend):
    C, a, b = problem(B, n, m, seed=3)[:3]
    v = torch.randn(B, m, dtype=F64, generator=torch.Generator().manual_seed(4))
    inputs = [t.clone().requires_grad_(True) for t in (C, a, b, v)]
    # a and b are perturbed independently by gradcheck, so their masses differ by ~1e-6: allowed by
    # the mass check's relative tolerance of 1e-4.
    assert torch.autograd.gradcheck(lambda C, a, b, v: sinkhorn(C, a, b, 4, 0.6, v=v, backend=backend)[0], inputs)


def test_sinkhorn_entropy_gradient_matches_autograd(problem):
    """The gradient of H(P) (the MESH objective) through the public function."""
    C, a, b = problem(3, 20, 6, seed=5)[:3]
    Cg = C.clone().requires_grad_(True)
    P, u, v = sinkhorn(Cg, a, b, 5, 0.8)
    log_P = torch.log(P)
    (g,) = torch.autograd.grad(-(P * log_P).sum(), Cg)
    Cr = C.clone().requires_grad_(True)
    _, ur, vr = sinkhorn_ref(Cr, a, b, 5, 0.8)
    (gr,) = torch.autograd.grad(entropy_ref(Cr, ur, vr, 0.8).sum(), Cr)
    torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-12)


def test_potentials_carry_no_gradient_and_u_is_ignored(problem):
    C, a, b = problem(2, 8, 3, seed=6)[:3]
    C.requires_grad_(True)
    P, u, v = sinkhorn(C, a, b, 3)
    assert P.requires_grad and not u.requires_grad and not v.requires_grad
    P2, u2, v2 = sinkhorn(C, a, b, 3, u=torch.randn(2, 8, dtype=F64))
    assert torch.equal(P, P2) and torch.equal(u, u2)


def test_warm_start_converges_faster(problem):
    """App. D: starting from converged potentials, one iteration stays at the converged plan."""
    C, a, b = problem(2, 50, 6, seed=7)[:3]
    P_conv, u, v = sinkhorn(C, a, b, 500, 0.3)
    P_warm, _, _ = sinkhorn(C, a, b, 1, 0.3, u=u, v=v)
    P_cold, _, _ = sinkhorn(C, a, b, 1, 0.3)
    assert (P_warm - P_conv).abs().max() < 1e-12
    assert (P_cold - P_conv).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------
# MESH
# ------------------------------------------------------------------------------------------------

@pytest.mark.large_shapes
@pytest.mark.parametrize("reuse_uv", [True, False])
@pytest.mark.parametrize("B,n,m,T,L", [(3, 20, 6, 4, 5), (2, 33, 64, 2, 3), (4, 105, 5, 3, 5)])
def test_mesh_equals_reference(B, n, m, T, L, reuse_uv, problem, backend):
    C, a, b = problem(B, n, m, seed=n + T)[:3]
    noise = torch.randn(B, n, m, dtype=F64, generator=torch.Generator().manual_seed(8))
    out = mesh(C, a, b, T, L, lr=6.0, noise=noise, noise_scale=1e-2, reuse_uv=reuse_uv, tau=0.9, backend=backend)
    ref = mesh_ref(C, a, b, T, L, 6.0, noise, 1e-2, reuse_uv, 0.9)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-10, atol=1e-10)
    if reuse_uv:
        torch.testing.assert_close(out[1], ref[1], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out[2], ref[2], rtol=1e-10, atol=1e-10)
    else:
        assert out[1] is None and out[2] is None


def test_mesh_single_slot_keeps_the_plan(problem):
    """With m = 1 the plan is a whatever the costs: dH/dC' is 0 up to rounding, and MESH stays finite."""
    C, a, b = problem(2, 7, 1, seed=28)[:3]
    C2, u, v = mesh(C, a, b, 3, 2, noise=torch.zeros_like(C))
    assert torch.isfinite(C2).all()
    P, _, _ = sinkhorn(C2, a, b, 2, u=u, v=v)
    torch.testing.assert_close(P[:, :, 0], a)


@pytest.mark.large_shapes
def test_mesh_float32_matches_float64_reference(problem, close, backend):
    C, a, b = problem(4, 64, 7, seed=9)[:3]
    noise = torch.randn(4, 64, 7, dtype=F64, generator=torch.Generator().manual_seed(10))
    ref64 = mesh_ref(C, a, b, noise=noise)
    lo = [t.float() for t in (C, a, b, noise)]
    ref32 = mesh_ref(lo[0], lo[1], lo[2], noise=lo[3])
    out = mesh(lo[0], lo[1], lo[2], noise=lo[3], backend=backend)
    for o, r, rl in zip(out, ref64, ref32):
        assert o.dtype == F32
        close(o, r, rl, 1e-5)


def test_mesh_straight_through_gradient(problem):
    C, a, b = problem(2, 10, 4, seed=11)[:3]
    C.requires_grad_(True)
    a.requires_grad_(True)
    gC2 = torch.randn(2, 10, 4, dtype=F64)
    C2, u, v = mesh(C, a, b)
    assert C2.requires_grad and not u.requires_grad and not v.requires_grad
    (C2 * gC2).sum().backward()
    assert torch.equal(C.grad, gC2)
    assert a.grad is None


def test_mesh_zero_steps_returns_noisy_costs(problem):
    C, a, b = problem(2, 6, 3, seed=12)[:3]
    noise = torch.randn_like(C)
    C2, u, v = mesh(C, a, b, n_mesh_iters=0, noise=noise, noise_scale=0.1)
    torch.testing.assert_close(C2, C + 0.1 * noise)
    assert u is None and v is None


def test_mesh_not_straight_through_differs_and_matches_autograd(problem):
    C, a, b = problem(1, 5, 3, seed=13)[:3]
    noise = torch.randn(1, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(14))
    gC2 = torch.randn(1, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(15))

    def full(C):
        return mesh(C, a, b, 2, 3, lr=0.5, noise=noise, straight_through=False)[0]

    Cg = C.clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad((full(Cg) * gC2).sum(), Cg)
    Cs = C.clone().requires_grad_(True)
    (g_st,) = torch.autograd.grad((mesh(Cs, a, b, 2, 3, lr=0.5, noise=noise)[0] * gC2).sum(), Cs)
    assert torch.equal(g_st, gC2)
    assert (g_full - g_st).abs().max() > 1e-3
    # the same values as the straight-through path, and a correct derivative through all steps
    torch.testing.assert_close(full(C), mesh(C, a, b, 2, 3, lr=0.5, noise=noise)[0], rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(full, (C.clone().requires_grad_(True),))


# ------------------------------------------------------------------------------------------------
# Tie-breaking (Sec. 4, App. C)
# ------------------------------------------------------------------------------------------------

def _entropy(P):
    return -(torch.xlogy(P, P)).sum((1, 2))


@pytest.mark.large_shapes  # test_triton_ot.py: its gradcheck and tie-breaking tests
@pytest.mark.parametrize("dtype", [F32, F64])
def test_identical_slots_tie_in_sinkhorn_and_break_in_mesh(dtype, backend):
    B, n, m = 4, 8, 3
    g = torch.Generator().manual_seed(16)
    C = torch.rand(B, n, m, generator=g, dtype=dtype)
    C[:, :, 1] = C[:, :, 0]  # slots 0 and 1 are identical
    a = torch.full((B, n), m / n, dtype=dtype)
    b = torch.ones(B, m, dtype=dtype)
    P, _, _ = sinkhorn(C, a, b, 20, backend=backend)
    assert torch.equal(P[:, :, 0], P[:, :, 1])
    C2, u, v = mesh(C, a, b, n_sh_iters=20, noise=torch.randn(B, n, m, generator=g, dtype=dtype), backend=backend)
    P2, _, _ = sinkhorn(C2, a, b, 20, u=u, v=v, backend=backend)
    # every batch element tells the two slots apart (columns carry mass 1 each)
    assert ((P2[:, :, 0] - P2[:, :, 1]).abs().amax(1) > 0.2).all()
    assert (_entropy(P2) < _entropy(P) - 1.0).all()
    torch.testing.assert_close(P2.sum(1), b)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

def _good(problem):
    return problem(2, 5, 3, seed=17)[:3]


@pytest.mark.parametrize("fn", [sinkhorn, mesh])
@pytest.mark.parametrize("case,match", [
    ("C_2d", "C must have shape"),
    ("a_shape", "a must have shape"),
    ("b_shape", "b must have shape"),
    ("C_nan", "C has NaN or Inf"),
    ("C_inf", "C has NaN or Inf"),
    ("a_neg", "marginal a has negative"),
    ("b_neg", "marginal b has negative"),
    ("a_zero", "marginal a is all zero"),
    ("b_zero", "marginal b is all zero"),
    ("a_nan", "marginal a has NaN"),
    ("mass", "row and column masses differ"),
    ("int", "must be float32 or float64"),
    ("dtype_mix", "share a dtype"),
    ("tau_zero", "tau must be"),
    ("tau_neg", "tau must be"),
    ("tau_nan", "tau must be"),
    ("overflow", "C / tau overflows"),
    ("backend", "backend must be"),
])
def test_bad_input_raises_value_error(fn, case, match, problem, backend):
    """Every backend reports a deliberately broken input with the same message (the statuses of the C++ loops,
    or Python's checks, both worded by kernels._checks.raise_for_status)."""
    C, a, b = _good(problem)
    kw = {}
    if case == "C_2d":
        C = C[0]
    elif case == "a_shape":
        a = a[:, :4]
    elif case == "b_shape":
        b = b[:1]
    elif case == "C_nan":
        C[1, 2, 0] = math.nan
    elif case == "C_inf":
        C[0, 0, 0] = math.inf
    elif case == "a_neg":
        a[0, 0] = -0.1
    elif case == "b_neg":
        b[1, 1] = -1e-3
    elif case == "a_zero":
        a[1] = 0
    elif case == "b_zero":
        b[0] = 0
    elif case == "a_nan":
        a[0, 1] = math.nan
    elif case == "mass":
        b = b * 1.01
    elif case == "int":
        C = C.long()
    elif case == "dtype_mix":
        a = a.float()
    elif case == "tau_zero":
        kw["tau"] = 0.0
    elif case == "tau_neg":
        kw["tau"] = -1.0
    elif case == "tau_nan":
        kw["tau"] = math.nan
    elif case == "overflow":
        C = C.float() * 1e30
        a, b = a.float(), b.float()
        kw["tau"] = 1e-10
    elif case == "backend":
        kw["backend"] = "cuda"
    kw.setdefault("backend", backend)
    with pytest.raises(ValueError, match=match):
        fn(C, a, b, **kw)


@pytest.mark.parametrize("kw,match", [
    ({"n_iters": 0}, "n_iters must be an integer >= 1"),
    ({"n_iters": 2.5}, "n_iters must be an integer"),
    ({"v": torch.zeros(2, 4, dtype=F64)}, "v must have shape"),
    ({"u": torch.zeros(3, 5, dtype=F64)}, "u must have shape"),
    ({"v": torch.zeros(2, 3, dtype=F32)}, "v must have C's dtype"),
    ({"v": torch.tensor([[0.0, math.nan, 0.0], [0.0, 0.0, 0.0]], dtype=F64)}, "v has NaN"),
    ({"v": torch.tensor([[0.0, math.inf, 0.0], [0.0, 0.0, 0.0]], dtype=F64)}, r"v has NaN or \+Inf"),
    ({"v": torch.full((2, 3), -math.inf, dtype=F64)}, "-Inf in every column"),
])
def test_sinkhorn_bad_options(kw, match, problem, backend):
    C, a, b = _good(problem)
    with pytest.raises(ValueError, match=match):
        sinkhorn(C, a, b, **kw, backend=backend)


@pytest.mark.parametrize("kw,match", [
    ({"n_mesh_iters": -1}, "n_mesh_iters must be an integer >= 0"),
    ({"n_sh_iters": 0}, "n_sh_iters must be an integer >= 1"),
    ({"lr": math.nan}, "lr must be a finite number"),
    ({"lr": math.inf}, "lr must be a finite number"),
    ({"noise_scale": -1e-3}, "noise_scale must be a finite number >= 0"),
    ({"noise": torch.zeros(2, 5, 4, dtype=F64)}, "noise must have shape"),
    ({"noise": torch.zeros(2, 5, 3, dtype=F32)}, "noise must have C's dtype"),
    ({"noise": torch.full((2, 5, 3), math.nan, dtype=F64)}, "noise has NaN or Inf"),
])
def test_mesh_bad_options(kw, match, problem, backend):
    C, a, b = _good(problem)
    with pytest.raises(ValueError, match=match):
        mesh(C, a, b, **kw, backend=backend)


# ------------------------------------------------------------------------------------------------
# Extreme scales and zero marginals stay finite and correct
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cpp", "torch"])  # the paths with a scaling form and its log-domain fallback
@pytest.mark.parametrize("dtype", [F32, F64])
def test_large_costs_small_tau_finite_and_correct(dtype, monkeypatch, problem, close, backend):
    calls = []
    log_forward = torch_ot._log_forward
    monkeypatch.setattr(torch_ot, "_log_forward", lambda *args: calls.append(1) or log_forward(*args))
    C, a, b = problem(3, 16, 5, seed=18, scale=1e4)[:3]
    tau = 1e-3
    gP = torch.randn(3, 16, 5, dtype=F64, generator=torch.Generator().manual_seed(19))
    lo = [t.to(dtype) for t in (C, a, b, torch.zeros_like(b))]
    out, grads = _grads(lambda C, a, b, v: sinkhorn(C, a, b, 5, tau, v=v, backend=backend), *lo, gP)
    assert calls, "the over/underflow of the scalings was not detected"
    # float32 cannot hold these costs to better than ~1 tau; the referee is the float64 reference on
    # the rounded inputs, and the float32 reference's own error sets the tolerance
    ref64, rgrads64 = _grads(lambda C, a, b, v: sinkhorn_ref(C, a, b, 5, tau, None, v), *[t.double() for t in lo], gP)
    ref_lo, rgrads_lo = _grads(lambda C, a, b, v: sinkhorn_ref(C, a, b, 5, tau, None, v), *lo, gP)
    # in float64 both run at the same precision: allow the conditioning, eps * max|C| / tau
    atol = ATOL[F32] if dtype == F32 else 100 * torch.finfo(F64).eps * C.abs().max().item() / tau
    for o, r, rl in zip(out + grads, ref64 + rgrads64, ref_lo + rgrads_lo):
        assert torch.isfinite(o).all()
        close(o, r, rl, atol)
    if dtype == F64:
        torch.testing.assert_close(out[0].sum(1), b, rtol=1e-7, atol=1e-7)
    noise = torch.randn(3, 16, 5, dtype=dtype, generator=torch.Generator().manual_seed(20))
    C_ = lo[0].clone().requires_grad_(True)
    C2, u, v = mesh(C_, lo[1], lo[2], tau=tau, noise=noise, backend=backend)
    P2, _, _ = sinkhorn(C2, lo[1], lo[2], 5, tau, u=u, v=v, backend=backend)
    P2.sum().backward()
    for t in (C2, u, v, P2, C_.grad):
        assert torch.isfinite(t).all()
    # (the entropy gradient of such a saturated plan is below rounding, so its normalized direction,
    # here and in the reference, is noise: only finiteness and the plan's marginals are asserted)
    if dtype == F64:
        torch.testing.assert_close(P2.sum(1), b, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_tiny_marginals_and_sharp_costs(dtype, problem, close, backend):
    """Marginals down to 1e-20 and costs spanning 200 tau: the scaling check must catch what it cannot do."""
    C, a, b = problem(2, 30, 4, seed=21, scale=200.0)[:3]
    a[:, :5] = 1e-20
    b[:, 0] = 1e-20
    b = b / b.sum(1, keepdim=True) * a.sum(1, keepdim=True)
    gP = torch.randn(2, 30, 4, dtype=F64, generator=torch.Generator().manual_seed(22))
    v = torch.zeros(2, 4, dtype=F64)
    lo = [t.to(dtype) for t in (C, a, b, v)]
    out, grads = _grads(lambda C, a, b, v: sinkhorn(C, a, b, 5, 1.0, v=v, backend=backend), *lo, gP)
    ref64, rgrads64 = _grads(lambda C, a, b, v: sinkhorn_ref(C, a, b, 5, 1.0, None, v), C, a, b, v, gP)
    ref_lo, rgrads_lo = _grads(lambda C, a, b, v: sinkhorn_ref(C, a, b, 5, 1.0, None, v), *lo, gP)
    for o, r, rl in zip(out + grads[:1] + grads[3:], ref64 + rgrads64[:1] + rgrads64[3:],
                        ref_lo + rgrads_lo[:1] + rgrads_lo[3:]):
        close(o, r, rl, ATOL[dtype])


def test_zero_marginals_equal_the_problem_without_them(problem, backend):
    """A row with a = 0 (and a column with b = 0 whose warm start is -inf) is as if it were not there."""
    C, a, b = problem(2, 9, 5, seed=23)[:3]
    a[:, 3] = 0
    b[:, 2] = 0
    b = b / b.sum(1, keepdim=True) * a.sum(1, keepdim=True)
    v = torch.randn(2, 5, dtype=F64, generator=torch.Generator().manual_seed(24))
    v[:, 2] = -math.inf
    rows, cols = [0, 1, 2, 4, 5, 6, 7, 8], [0, 1, 3, 4]
    leaves = [t.clone().requires_grad_(True) for t in (C, a, b, v)]
    P, u, vv = sinkhorn(*leaves[:3], 6, 0.8, v=leaves[3], backend=backend)
    gP = torch.randn(2, 9, 5, dtype=F64)
    grads = torch.autograd.grad((P * gP).sum(), leaves)
    sub = [C[:, rows][:, :, cols], a[:, rows], b[:, cols], v[:, cols]]
    sub = [t.clone().requires_grad_(True) for t in sub]
    Ps, us, vs = sinkhorn(*sub[:3], 6, 0.8, v=sub[3], backend=backend)
    sgrads = torch.autograd.grad((Ps * gP[:, rows][:, :, cols]).sum(), sub)
    torch.testing.assert_close(P[:, rows][:, :, cols], Ps, rtol=1e-12, atol=1e-14)
    assert (P[:, 3] == 0).all() and (P[:, :, 2] == 0).all()
    assert (u[:, 3] == -math.inf).all() and (vv[:, 2] == -math.inf).all()
    torch.testing.assert_close(grads[0][:, rows][:, :, cols], sgrads[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1][:, rows], sgrads[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[2][:, cols], sgrads[2], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[3][:, cols], sgrads[3], rtol=1e-10, atol=1e-12)
    for g in grads:
        assert torch.isfinite(g).all()
    assert (grads[1][:, 3] == 0).all() and (grads[2][:, 2] == 0).all() and (grads[3][:, 2] == 0).all()
    # MESH with zero marginals stays finite and warm-starts through the -inf potentials
    C2, u2, v2 = mesh(C, a, b, backend=backend)
    assert torch.isfinite(C2).all() and (u2[:, 3] == -math.inf).all() and (v2[:, 2] == -math.inf).all()
    assert torch.isfinite(sinkhorn(C2, a, b, u=u2, v=v2, backend=backend)[0]).all()


def test_empty_batch(backend):
    P, u, v = sinkhorn(torch.zeros(0, 3, 2), torch.ones(0, 3), torch.ones(0, 2), backend=backend)
    assert P.shape == (0, 3, 2) and u.shape == (0, 3) and v.shape == (0, 2)
    C2, u, v = mesh(torch.zeros(0, 3, 2), torch.ones(0, 3), torch.ones(0, 2), backend=backend)
    assert C2.shape == (0, 3, 2)


# ------------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [(None, "cpp"), ("cpp", "cpp"), ("torch", "torch"), ("triton", "triton")])
def test_cpu_dispatch(name, expected, problem):
    from kernels.backends import pick_backend

    C = problem(1, 4, 2, seed=25).C
    assert pick_backend(C, name) is get_backend(expected)
    assert kernels.BACKENDS == BACKENDS == ("torch", "cpp", "triton")


def test_seeded_sinkhorn_backward_matches_autograd(problem, backend):
    """The backends' Sinkhorn backward with gradients of u_L and v_L as well as of P (what MESH's warm-start
    gradient chains), against autograd through the reference."""
    C, a, b, v0, _ = problem(3, 11, 4, seed=29)
    g = torch.Generator().manual_seed(30)
    gP, gu, gv = torch.randn(3, 11, 4, generator=g, dtype=F64), torch.randn(3, 11, generator=g, dtype=F64), \
        torch.randn(3, 4, generator=g, dtype=F64)
    leaves = [t.clone().requires_grad_(True) for t in (C, a, b, v0)]
    P, u, v = sinkhorn_ref(*leaves[:3], 4, 0.7, None, leaves[3])
    ref = torch.autograd.grad((P * gP).sum() + (u * gu).sum() + (v * gv).sum(), leaves)
    be = get_backend(backend)
    us, vs, _, _ = be.sinkhorn_fwd(C, a.log(), b.log(), v0, 0.7, 4, False)
    gC, gla, glb, gv0 = be.sinkhorn_bwd(C, a.log(), b.log(), 0.7, us, vs, gP, gu, gv)
    for ours, theirs in zip((gC, gla / a, glb / b, gv0), ref):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11)


def _sa_mesh_grads(C, a, b, noise, gP, run):
    """d<P, gP>/d(C, a, b) of SA-MESH's plan P = sinkhorn(MESH(C), warm-started), and its forward values."""
    leaves = [t.clone().requires_grad_(True) for t in (C, a, b)]
    C2, u, v, P = run(*leaves)
    return (C2.detach(), u.detach(), v.detach()), torch.autograd.grad((P * gP).sum(), leaves)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("B,n,m,T,L", [(2, 9, 4, 3, 4), (2, 30, 7, 2, 3)])
def test_mesh_warm_start_gradient_matches_the_official_formulation(B, n, m, T, L, dtype, problem, close, backend):
    """warm_start_grad=True: values and gradients of SA-MESH's plan equal autograd through a literal
    re-implementation of the official MESH (kernels.reference.mesh_official_ref)."""
    C, a, b, _, noise = problem(B, n, m, seed=31 + n)
    gP = torch.randn(B, n, m, dtype=F64, generator=torch.Generator().manual_seed(32))

    def official(C, a, b):
        C2, u, v = mesh_official_ref(C, a, b, T, L, 3.0, noise.to(C.dtype), 1e-2, 0.8)
        return C2, u, v, sinkhorn_ref(C2, a, b, L, 0.8, u, v)[0]

    def ours(C, a, b):
        C2, u, v = mesh(C, a, b, T, L, 3.0, noise.to(C.dtype), 1e-2, tau=0.8, warm_start_grad=True, backend=backend)
        return C2, u, v, sinkhorn(C2, a, b, L, 0.8, u=u, v=v, backend=backend)[0]

    lo = [t.to(dtype) for t in (C, a, b)]
    out, grads = _sa_mesh_grads(*lo, noise, gP.to(dtype), ours)
    ref64, rgrads64 = _sa_mesh_grads(C, a, b, noise, gP, official)
    ref_lo, rgrads_lo = _sa_mesh_grads(*lo, noise, gP.to(dtype), official)
    for o, r, rl in zip(out + grads, ref64 + rgrads64, ref_lo + rgrads_lo):
        assert o.dtype == dtype
        close(o, r, rl, 1e-5 if dtype == F32 else 1e-10)
    # the default (potentials as constants) is a different gradient: the comparison above can fail
    _, plain = _sa_mesh_grads(C, a, b, noise, gP, lambda C, a, b: (
        *(out := mesh(C, a, b, T, L, 3.0, noise, 1e-2, tau=0.8, backend=backend)),
        sinkhorn(out[0], a, b, L, 0.8, u=out[1], v=out[2], backend=backend)[0]))
    assert max(float((x - y).abs().max()) for x, y in zip(plain, rgrads64)) > 1e-4


def test_mesh_warm_start_backward_gradcheck(problem, backend):
    """The hand-written backward (``mesh_bwd``) is the derivative of the chain of each step's Sinkhorn on
    C + (C'_t - C) with the offsets held fixed (what straight-through C' means), warm-started step to step."""
    from kernels import MeshParams
    from kernels.backends import MeshTrace

    B, n, m, T, L = (1, 4, 2, 2, 2) if backend == "triton" else (2, 6, 3, 3, 4)  # the interpreter is slow
    C, a, b, _, noise = problem(B, n, m, seed=33)
    be, p = get_backend(backend), MeshParams(T, L, 2.0, 1e-2, 0.9, True)
    offsets = be.mesh_fwd(C, a.log(), b.log(), noise, p, True)[4].C - C  # (T, B, n, m)

    class Chain(torch.autograd.Function):
        @staticmethod
        def forward(ctx, C, a, b):
            la, lb = a.log(), b.log()
            v, warm = torch.zeros_like(b), []
            for t in range(p.n_mesh_iters):
                warm.append(v)
                us, vs, _, _ = be.sinkhorn_fwd(C + offsets[t], la, lb, v, p.tau, p.n_sh_iters, False)
                v = vs[-1]
            ctx.save_for_backward(C, a, b, torch.stack(warm))
            return us[-1], v

        @staticmethod
        def backward(ctx, gu, gv):
            C, a, b, warm = ctx.saved_tensors
            gC, gla, glb = be.mesh_bwd(MeshTrace(C + offsets, warm), a.log(), b.log(), p, gu, gv)
            return gC, gla / a, glb / b

    assert torch.autograd.gradcheck(Chain.apply, [t.clone().requires_grad_(True) for t in (C, a, b)])


def test_mesh_warm_start_gradient_needs_reuse_uv_and_a_bool(problem):
    C, a, b = problem(2, 6, 3, seed=34)[:3]
    C.requires_grad_(True)
    C2, u, v = mesh(C, a, b, warm_start_grad=True, reuse_uv=False)
    assert u is None and v is None
    (C2.sum()).backward()
    assert torch.equal(C.grad, torch.ones_like(C))
    with pytest.raises(ValueError, match="warm_start_grad must be a bool"):
        mesh(C, a, b, warm_start_grad=1)


def test_kernels_mesh_imports_and_calls():
    """``import kernels.mesh``, ``from kernels.mesh import mesh`` and ``from kernels import mesh`` all work, and
    ``kernels.mesh(...)`` (a callable module) is the function."""
    import importlib

    import kernels.mesh
    from kernels import mesh as from_package
    from kernels.mesh import mesh as function

    assert from_package is kernels.mesh is importlib.import_module("kernels.mesh") and callable(kernels.mesh)
    C = torch.rand(2, 5, 3, dtype=F64)
    a, b = torch.full((2, 5), 0.6, dtype=F64), torch.ones(2, 3, dtype=F64)
    noise = torch.randn_like(C)
    for x, y in zip(kernels.mesh(C, a, b, noise=noise), function(C, a, b, noise=noise)):
        assert torch.equal(x, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_torch_path_matches_cpu(problem):
    C, a, b = problem(3, 40, 7, seed=27)[:3]
    P_cpu, u_cpu, v_cpu = sinkhorn(C, a, b, 5)
    P, u, v = sinkhorn(C.cuda(), a.cuda(), b.cuda(), 5, backend="torch")
    torch.testing.assert_close(P.cpu(), P_cpu)
    torch.testing.assert_close(u.cpu(), u_cpu)
    noise = torch.randn_like(C)
    C2_cpu = mesh(C, a, b, noise=noise)[0]
    C2 = mesh(C.cuda(), a.cuda(), b.cuda(), noise=noise.cuda(), backend="torch")[0]
    torch.testing.assert_close(C2.cpu(), C2_cpu)


def test_slot_attention_passes_warm_start_grad_to_mesh():
    """``slots.OTConfig(warm_start_grad=True)`` reaches ``kernels.mesh``: SA-MESH's parameter gradients change,
    its forward does not."""
    from slots import OTConfig, SlotAttention, SlotAttentionConfig

    x = torch.randn(4, 20, 8, generator=torch.Generator().manual_seed(35))
    grads, outs = [], []
    for wsg in (False, True):
        torch.manual_seed(0)
        sa = SlotAttention(SlotAttentionConfig(n_slots=3, dim=8, input_dim=8, variant="sa-mesh",
                                               ot=OTConfig(warm_start_grad=wsg)))
        torch.manual_seed(1)
        slots, _ = sa(x)
        slots.square().sum().backward()
        outs.append(slots.detach())
        grads.append(sa.to_k.weight.grad.clone())
    assert torch.equal(outs[0], outs[1])
    assert (grads[0] - grads[1]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="warm_start_grad must be a bool"):
        OTConfig(warm_start_grad="yes")
    with pytest.raises(ValueError, match="OTConfig.backend must be None or one of 'torch', 'cpp', 'triton'"):
        OTConfig(backend="compile")
