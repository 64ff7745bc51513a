"""Tests of the fused C++ backend (kernels/cpp_ot.py, emd_cpp/sinkhorn.cpp) at the contract level.

Referees: kernels/torch_ot.py (the PyTorch path with the same maths, itself tested against autograd
through the reference) and, in float64, autograd through kernels/reference.py. Covered: values and
gradients at slot-attention and larger shapes, warm starts, zero marginals, the entropy backward,
MESH with and without reused potentials, the per-element fallback to the PyTorch path (only the failing
elements are recomputed), several threads giving the results of one, and bad calls into the extension.
"""
import math

import numpy as np
import pytest
import torch

import emd_cpp
from kernels import cpp_ot, torch_ot
from kernels.reference import mesh_ref, sinkhorn_ref

F32, F64 = torch.float32, torch.float64


def _problem(B, n, m, seed, dtype=F64, scale=3.0, zero_row=False, zero_col=False):
    """C (B, n, m), log_a (B, n), log_b (B, m) with masses m, a warm start v0 (B, m) and noise."""
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(B, n, m, generator=g, dtype=F64) * scale
    a = torch.rand(B, n, generator=g, dtype=F64) + 0.2
    b = torch.rand(B, m, generator=g, dtype=F64) + 0.2
    if zero_row:
        a[:, 1] = 0
    if zero_col:
        b[:, 0] = 0
    a = a / a.sum(1, keepdim=True) * m
    b = b / b.sum(1, keepdim=True) * m
    v0 = 0.3 * torch.randn(B, m, generator=g, dtype=F64)
    if zero_col:
        v0[:, 0] = -math.inf
    noise = torch.randn(B, n, m, generator=g, dtype=F64)
    return [t.to(dtype) for t in (C, a.log(), b.log(), v0, noise)]


def _close(x, y, dtype, scale=1.0):
    """Equal infinities, and finite entries within rounding of the dtype (relative to max |y|)."""
    assert torch.equal(torch.isinf(x), torch.isinf(y)) and torch.equal(x[torch.isinf(x)], y[torch.isinf(y)])
    fin = torch.isfinite(y)
    assert torch.isfinite(x[fin]).all()
    tol = (2e-4 if dtype == F32 else 1e-10) * scale * max(1.0, y[fin].abs().max().item())
    err = (x[fin] - y[fin]).abs().max().item() if fin.any() else 0.0
    assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


SHAPES = [(4, 11, 5, 4), (3, 40, 64, 2), (2, 7, 3, 1), (64, 105, 5, 5), (2, 300, 11, 3)]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("B,n,m,L", SHAPES)
def test_sinkhorn_fwd_bwd_match_torch_path(B, n, m, L, dtype):
    C, la, lb, v0, _ = _problem(B, n, m, seed=B * n + m, dtype=dtype)
    us, vs = cpp_ot.sinkhorn_fwd(C, la, lb, 0.7, L, v0)
    us_t, vs_t = torch_ot.sinkhorn_fwd(C, la, lb, 0.7, L, v0)
    assert us.shape == (L, B, n) and vs.shape == (L + 1, B, m) and us.dtype == dtype
    _close(us, us_t, dtype)
    _close(vs, vs_t, dtype)
    gP = torch.randn(B, n, m, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for grad_P in (gP, None):
        out = cpp_ot.sinkhorn_bwd(C, la, lb, 0.7, us_t, vs_t, grad_P)
        ref = torch_ot.sinkhorn_bwd(C, la, lb, 0.7, us_t, vs_t, grad_P)
        for o, r in zip(out, ref):
            assert o.shape == r.shape and o.dtype == dtype
            _close(o, r, dtype, scale=10.0)  # sums of many terms with cancellation


def test_sinkhorn_grads_equal_autograd_through_the_reference():
    C, la, lb, v0, _ = _problem(3, 12, 4, seed=2)
    leaves = [t.clone().requires_grad_(True) for t in (C, la.exp(), lb.exp(), v0)]
    P_ref, _, _ = sinkhorn_ref(*leaves[:3], 4, 0.5, None, leaves[3])
    gP = torch.randn_like(C)
    ref = torch.autograd.grad((P_ref * gP).sum(), leaves)
    us, vs = cpp_ot.sinkhorn_fwd(C, la, lb, 0.5, 4, v0)
    gC, gla, glb, gv0 = cpp_ot.sinkhorn_bwd(C, la, lb, 0.5, us, vs, gP)
    P = torch.exp(-C / 0.5 + us[-1][:, :, None] + vs[-1][:, None, :])
    torch.testing.assert_close(P, P_ref.detach(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gC, ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gla / la.exp(), ref[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(glb / lb.exp(), ref[2], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gv0, ref[3], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("reuse_uv", [True, False])
@pytest.mark.parametrize("B,n,m,T,L", [(3, 20, 6, 4, 5), (2, 33, 64, 2, 3), (64, 105, 5, 4, 5)])
def test_mesh_fwd_matches_torch_path(B, n, m, T, L, reuse_uv, dtype):
    C, la, lb, _, noise = _problem(B, n, m, seed=T * L + n, dtype=dtype)
    out = cpp_ot.mesh_fwd(C, la, lb, 1.0, noise, 1e-3, T, L, 8.0, reuse_uv)
    ref = torch_ot.mesh_fwd(C, la, lb, 1.0, noise, 1e-3, T, L, 8.0, reuse_uv)
    for o, r in zip(out, ref):
        _close(o, r, dtype, scale=10.0)


def test_mesh_fwd_equals_the_reference_in_float64():
    C, la, lb, _, noise = _problem(2, 15, 4, seed=3)
    C2, u, v = cpp_ot.mesh_fwd(C, la, lb, 0.8, noise, 1e-3, 3, 4, 2.0, True)
    C2_ref, u_ref, v_ref = mesh_ref(C, la.exp(), lb.exp(), 3, 4, 2.0, noise, 1e-3, True, 0.8)
    torch.testing.assert_close(C2, C2_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(v, v_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(u, u_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_zero_marginals(dtype):
    C, la, lb, v0, noise = _problem(3, 9, 5, seed=4, dtype=dtype, zero_row=True, zero_col=True)
    us, vs = cpp_ot.sinkhorn_fwd(C, la, lb, 1.0, 3, v0)
    us_t, vs_t = torch_ot.sinkhorn_fwd(C, la, lb, 1.0, 3, v0)
    assert (us[:, :, 1] == -math.inf).all() and (vs[1:, :, 0] == -math.inf).all()
    _close(us, us_t, dtype)
    _close(vs, vs_t, dtype)
    for o, r in zip(cpp_ot.sinkhorn_bwd(C, la, lb, 1.0, us_t, vs_t, None),
                    torch_ot.sinkhorn_bwd(C, la, lb, 1.0, us_t, vs_t, None)):
        _close(o, r, dtype, scale=10.0)
    for o, r in zip(cpp_ot.mesh_fwd(C, la, lb, 1.0, noise, 1e-3, 3, 4, 8.0, True),
                    torch_ot.mesh_fwd(C, la, lb, 1.0, noise, 1e-3, 3, 4, 8.0, True)):
        _close(o, r, dtype, scale=10.0)


@pytest.mark.parametrize("which", ["sinkhorn_fwd", "sinkhorn_bwd", "mesh_fwd"])
def test_failing_elements_and_only_those_are_recomputed_by_the_torch_path(which, monkeypatch):
    """Element 1 has costs of 1e4 tau (its scalings overflow): the C++ loop flags it, torch_ot redoes it."""
    C, la, lb, v0, noise = _problem(3, 10, 4, seed=5, dtype=F32)
    C[1] *= 3e3
    tau = 1.0
    seen = []
    original = getattr(torch_ot, which)

    def spy(C_bad, *args):
        seen.append(C_bad.shape[0])
        return original(C_bad, *args)

    monkeypatch.setattr(torch_ot, which, spy)
    if which == "sinkhorn_fwd":
        out = cpp_ot.sinkhorn_fwd(C, la, lb, tau, 4, v0)
        ref = original(C, la, lb, tau, 4, v0)
    elif which == "sinkhorn_bwd":
        us, vs = torch_ot.sinkhorn_fwd(C, la, lb, tau, 4, v0)
        gP = torch.randn_like(C)
        out = cpp_ot.sinkhorn_bwd(C, la, lb, tau, us, vs, gP)
        ref = original(C, la, lb, tau, us, vs, gP)
    else:
        out = cpp_ot.mesh_fwd(C, la, lb, tau, noise, 1e-3, 2, 4, 8.0, True)
        ref = original(C, la, lb, tau, noise, 1e-3, 2, 4, 8.0, True)
    assert seen == [1], "exactly the one failing element goes to the PyTorch path"
    for o, r in zip(out, ref):
        assert torch.isfinite(o[torch.isfinite(r)]).all()
        _close(o, r, F32, scale=10.0)


def test_threads_give_the_results_of_one(monkeypatch):
    C, la, lb, v0, noise = _problem(16, 200, 7, seed=6, dtype=F32)
    monkeypatch.setattr(cpp_ot, "_WORK_PER_THREAD", 1)
    outs = []
    for threads in (1, 2, 4):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        us, vs = cpp_ot.sinkhorn_fwd(C, la, lb, 1.0, 3, v0)
        outs.append([us, vs, *cpp_ot.sinkhorn_bwd(C, la, lb, 1.0, us, vs, None),
                     *cpp_ot.mesh_fwd(C, la, lb, 1.0, noise, 1e-3, 2, 3, 8.0, True)])
    for other in outs[1:]:
        for x, y in zip(outs[0], other):
            assert torch.equal(x, y)  # each element is done by one thread in the same order


def test_extension_rejects_bad_calls_with_a_message():
    C = np.zeros((2, 3, 4), np.float32)
    la, lb, v0 = np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="log_a has the wrong shape"):
        emd_cpp.sinkhorn_fwd(C, la[:, :2], lb, v0, 1.0, 3, 1)
    with pytest.raises(ValueError, match="C must have shape"):
        emd_cpp.sinkhorn_fwd(C[0], la, lb, v0, 1.0, 3, 1)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        emd_cpp.mesh_fwd(C, C, la, lb, 1.0, 1e-3, 2, 3, 8.0, True, 0)
    with pytest.raises(ValueError, match="n_mesh_iters must be >= 1"):
        emd_cpp.mesh_fwd(C, C, la, lb, 1.0, 1e-3, 0, 3, 8.0, True, 1)
    us = np.zeros((3, 2, 3), np.float32)
    with pytest.raises(ValueError, match="vs has the wrong shape"):
        emd_cpp.sinkhorn_bwd(C, la, lb, us, np.zeros((3, 2, 4), np.float32), None, 1.0, 1)


def test_cuda_tensors_are_refused():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    C, la, lb, v0, _ = _problem(1, 4, 3, seed=7)
    with pytest.raises(ValueError, match="CPU tensors"):
        cpp_ot.sinkhorn_fwd(C.cuda(), la.cuda(), lb.cuda(), 1.0, 2, v0.cuda())


def test_empty_batch():
    C, la, lb, v0, noise = _problem(0, 4, 3, seed=8)
    us, vs = cpp_ot.sinkhorn_fwd(C, la, lb, 1.0, 2, v0)
    assert us.shape == (2, 0, 4) and vs.shape == (3, 0, 3)
    C2, u, v = cpp_ot.mesh_fwd(C, la, lb, 1.0, noise, 1e-3, 2, 2, 8.0, True)
    assert C2.shape == (0, 4, 3) and u.shape == (0, 4) and v.shape == (0, 3)


def test_a_kernel_flag_that_the_python_checks_do_not_confirm_falls_back_to_the_torch_path(monkeypatch):
    """The kernel's mass test (float64 sums of exp(log a)) and the Python one (a.sum()) can disagree
    at the tolerance's edge: the inputs are then valid, and the call is answered by the PyTorch path."""
    from kernels import mesh, sinkhorn

    C, la, lb, v0, noise = _problem(2, 8, 3, seed=9)
    a, b = la.exp(), lb.exp()

    def refuse(*args, **kwargs):
        raise cpp_ot.InvalidInput("forced")

    P_ref = sinkhorn(C, a, b, 3, v=v0, backend="torch")[0]
    C2_ref = mesh(C, a, b, 2, 3, noise=noise, backend="torch")[0]
    monkeypatch.setattr(cpp_ot, "sinkhorn_fwd_plan", refuse)
    monkeypatch.setattr(cpp_ot, "mesh_fwd", refuse)
    torch.testing.assert_close(sinkhorn(C, a, b, 3, v=v0)[0], P_ref)
    torch.testing.assert_close(mesh(C, a, b, 2, 3, noise=noise)[0], C2_ref)
    with pytest.raises(ValueError, match="marginal a has negative entries"):
        sinkhorn(C, -a, b, 3)
