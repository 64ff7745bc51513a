"""Tests of kernels/compiled_ot.py (the PyTorch path under torch.compile) through the public API.

Referees: the plain-autograd references of kernels/reference.py (values and gradients) and the eager
PyTorch path kernels/torch_ot.py, whose log-domain fallback must take over where the compiled scaling
form is inaccurate. Every distinct shape, dtype and option set compiles once (tens of seconds on two
cores; a new float option value recompiles too), so the tests share one shape and the default options.
"""
import pytest
import torch

from kernels import compiled_ot, torch_ot
from kernels.ot import mesh, sinkhorn
from kernels.reference import mesh_ref, sinkhorn_ref

F32, F64 = torch.float32, torch.float64


def _problem(B, n, m, seed, dtype=F64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(B, n, m, generator=g, dtype=F64) * scale
    a = torch.rand(B, n, generator=g, dtype=F64) + 0.2
    b = torch.rand(B, m, generator=g, dtype=F64) + 0.2
    a = a / a.sum(1, keepdim=True) * m
    b = b / b.sum(1, keepdim=True) * m
    noise = torch.randn(B, n, m, generator=g, dtype=F64)
    return C.to(dtype), a.to(dtype), b.to(dtype), noise.to(dtype)


def test_mesh_equals_reference_float64():
    C, a, b, noise = _problem(3, 21, 5, seed=1)
    out = mesh(C, a, b, noise=noise, backend="compile")
    ref = mesh_ref(C, a, b, noise=noise)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-9)


def test_mesh_float32_error_within_twice_the_reference_error():
    C, a, b, noise = _problem(3, 21, 5, seed=2)
    ref64 = mesh_ref(C, a, b, noise=noise)
    lo = [t.float() for t in (C, a, b, noise)]
    ref32 = mesh_ref(*lo[:3], noise=lo[3])
    out = mesh(*lo[:3], noise=lo[3], backend="compile")
    for o, r, rl in zip(out, ref64, ref32):
        assert o.dtype == F32
        err = (o.double() - r).abs().max().item()
        ref_err = (rl.double() - r).abs().max().item()
        assert err <= 2 * ref_err + 1e-5 * max(1.0, r.abs().max().item()), (err, ref_err)


def test_mesh_breaks_a_tie_like_the_eager_path():
    """Two identical slot columns: the compiled MESH separates them exactly as the eager path does."""
    C, a, b, noise = _problem(3, 21, 5, seed=3)
    C[:, :, 1] = C[:, :, 0]
    b = torch.ones_like(b)
    P_sh, _, _ = sinkhorn(C, a, b, backend="compile")
    torch.testing.assert_close(P_sh[:, :, 0], P_sh[:, :, 1])
    C2, u, v = mesh(C, a, b, noise=noise, backend="compile")
    P, _, _ = sinkhorn(C2, a, b, u=u, v=v, backend="compile")
    assert (P[:, :, 0] - P[:, :, 1]).abs().amax(1).min() > 0.1
    C2e, _, _ = mesh(C, a, b, noise=noise, backend="torch")
    torch.testing.assert_close(C2, C2e, rtol=1e-9, atol=1e-9)


def test_sinkhorn_values_and_grads_match_reference():
    C, a, b, _ = _problem(3, 21, 5, seed=4)
    gP = torch.randn(3, 21, 5, dtype=F64, generator=torch.Generator().manual_seed(5))
    v0 = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(6))
    outs = []
    for fn in (lambda *t: sinkhorn(*t[:3], v=t[3], backend="compile"), lambda *t: sinkhorn_ref(*t[:3], v=t[3])):
        leaves = [t.clone().requires_grad_(True) for t in (C, a, b, v0)]
        P, u, v = fn(*leaves)
        outs.append([P, u, v, *torch.autograd.grad((P * gP).sum(), leaves)])
    for o, r in zip(*outs):
        torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("which", ["sinkhorn", "mesh"])
def test_scaling_failures_fall_back_to_the_eager_path(which, monkeypatch):
    """float32 costs of ~1e4 tau make potentials whose rounding the scaling form would multiply into the
    plan: that batch element (and only that one) is recomputed by kernels.torch_ot, and the results
    equal the eager path's."""
    C, a, b, noise = _problem(3, 21, 5, seed=7, dtype=F32)
    C[1] *= 1e4
    calls = []
    eager = getattr(torch_ot, f"{which}_fwd")
    monkeypatch.setattr(torch_ot, f"{which}_fwd", lambda C, *args: calls.append(C.shape[0]) or eager(C, *args))
    if which == "sinkhorn":
        out = sinkhorn(C, a, b, backend="compile")
        monkeypatch.setattr(torch_ot, "sinkhorn_fwd", eager)
        ref = sinkhorn(C, a, b, backend="torch")
    else:
        out = mesh(C, a, b, noise=noise, backend="compile")
        monkeypatch.setattr(torch_ot, "mesh_fwd", eager)
        ref = mesh(C, a, b, noise=noise, backend="torch")
    assert calls == [1], "exactly the one batch element with huge potentials should be recomputed eagerly"
    for o, r in zip(out, ref):
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_zero_mesh_steps_and_backend_contract():
    C, a, b, noise = _problem(2, 21, 5, seed=8)
    C2, u, v = compiled_ot.mesh_fwd(C, a.log(), b.log(), 1.0, noise, 0.1, 0, 5, 8.0, True)
    torch.testing.assert_close(C2, C + 0.1 * noise)
    assert u is None and v is None
    assert compiled_ot.sinkhorn_bwd is torch_ot.sinkhorn_bwd
