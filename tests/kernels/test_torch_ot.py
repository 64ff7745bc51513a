"""What is particular to the PyTorch backend (kernels/torch_ot.py): its two paths.

The fast path (scaling vectors on one matrix K) and the log-domain fallback must each equal autograd through
the reference, alone and mixed within one batch (some batch elements falling back), for the plain backward,
the entropy backward (grad_P=None), the whole MESH loop and MESH's warm-start backward. The contract shared
with the other backends is tested in test_ot.py.
"""
import math

import pytest
import torch

from kernels import MeshParams, mesh_official_ref, torch_ot
from kernels.reference import entropy_ref, mesh_ref, sinkhorn_ref

F64 = torch.float64


@pytest.fixture(params=["fast", "log", "mixed"])
def path(request, monkeypatch):
    """Which batch elements take the fast path: all, none, or every other one."""
    if request.param != "fast":
        ok = torch_ot._scaling_ok

        def forced(xmax, *args):
            keep = torch.zeros_like(xmax, dtype=torch.bool)
            if request.param == "mixed":
                keep[::2] = True
            return ok(xmax, *args) & keep

        monkeypatch.setattr(torch_ot, "_scaling_ok", forced)
    return request.param


def _count_log_forward(monkeypatch):
    calls = []
    log_forward = torch_ot._log_forward
    monkeypatch.setattr(torch_ot, "_log_forward", lambda *args: calls.append(args[0].shape[0]) or log_forward(*args))
    return calls


@pytest.mark.parametrize("B,n,m,L", [(4, 11, 5, 4), (3, 40, 64, 2), (2, 7, 3, 1)])
def test_sinkhorn_fwd_bwd_match_autograd(path, monkeypatch, B, n, m, L, problem):
    calls = _count_log_forward(monkeypatch)
    C, a, b, v0 = problem(B, n, m, seed=n * m, scale=3.0)[:4]
    tau = 0.6
    us, vs = torch_ot.sinkhorn_fwd(C, a.log(), b.log(), v0, tau, L)[:2]
    assert us.shape == (L, B, n) and vs.shape == (L + 1, B, m)
    assert calls == {"fast": [], "log": [B], "mixed": [B // 2]}[path]
    leaves = [t.clone().requires_grad_(True) for t in (C, a, b, v0)]
    u = v = leaves[3]
    for k in range(L):  # the reference, keeping every iterate
        P, u, v = sinkhorn_ref(leaves[0], leaves[1], leaves[2], 1, tau, None, v)
        torch.testing.assert_close(us[k], u.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(vs[k + 1], v.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vs[0], v0)
    gP = torch.randn(B, n, m, dtype=F64)
    for grad_P, loss in ((gP, (P * gP).sum()), (None, entropy_ref(leaves[0], u, v, tau).sum())):
        ref = torch.autograd.grad(loss, leaves, retain_graph=True)
        grad_C, glog_a, glog_b, gv0 = torch_ot.sinkhorn_bwd(C, a.log(), b.log(), tau, us, vs, grad_P)
        torch.testing.assert_close(grad_C, ref[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(glog_a, ref[1] * a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(glog_b, ref[2] * b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gv0, ref[3], rtol=1e-10, atol=1e-12)


def test_zero_marginals_in_every_path(path, problem):
    C, a, b, v0 = problem(4, 9, 4, seed=1, zero_row=True, zero_col=True, scale=3.0)[:4]
    la, lb = a.log(), b.log()
    us, vs = torch_ot.sinkhorn_fwd(C, la, lb, v0, 1.0, 3)[:2]
    assert (us[:, :, 1] == -math.inf).all() and (vs[1:, :, 0] == -math.inf).all()
    assert torch.isfinite(us[:, :, 2:]).all() and torch.isfinite(vs[:, :, 1:]).all()
    P = torch.exp(-C + us[-1][:, :, None] + vs[-1][:, None, :])
    torch.testing.assert_close(P.sum(1), b, rtol=1e-12, atol=1e-12)
    for grad_P in (torch.randn_like(C), None):
        out = torch_ot.sinkhorn_bwd(C, la, lb, 1.0, us, vs, grad_P)
        for t in out:
            assert torch.isfinite(t).all()
        assert (out[1][:, 1] == 0).all() and (out[2][:, 0] == 0).all()
    C_T, u, v = torch_ot.mesh_fwd(C, la, lb, torch.randn_like(C), MeshParams(3, 4, 8.0, 1e-3, 1.0, True))[:3]
    assert torch.isfinite(C_T).all() and (u[:, 1] == -math.inf).all() and (v[:, 0] == -math.inf).all()


@pytest.mark.parametrize("reuse_uv", [True, False])
def test_mesh_fwd_matches_reference(path, reuse_uv, problem):
    C, a, b, _ = problem(4, 30, 6, seed=2, scale=3.0)[:4]
    noise = torch.randn(4, 30, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    C_T, u, v = torch_ot.mesh_fwd(C, a.log(), b.log(), noise, MeshParams(3, 5, 4.0, 1e-2, 0.8, reuse_uv))[:3]
    ref = mesh_ref(C, a, b, 3, 5, 4.0, noise, 1e-2, reuse_uv, 0.8)
    torch.testing.assert_close(C_T, ref[0], rtol=1e-10, atol=1e-10)
    if reuse_uv:
        u_ref, v_ref = ref[1], ref[2]
    else:  # the backend still returns the last step's potentials, from a cold start on C'_2
        C_prev = mesh_ref(C, a, b, 2, 5, 4.0, noise, 1e-2, False, 0.8)[0]
        _, u_ref, v_ref = sinkhorn_ref(C_prev, a, b, 5, 0.8)
    torch.testing.assert_close(u, u_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-10)


def test_mesh_warm_start_backward_matches_the_official_formulation(path, problem):
    """mesh_bwd (fast path, log domain, or both in one batch) is autograd through the official MESH's u, v."""
    C, a, b, _ = problem(4, 12, 5, seed=6)[:4]
    noise = torch.randn(4, 12, 5, dtype=F64, generator=torch.Generator().manual_seed(7))
    gu, gv = torch.randn(4, 12, dtype=F64), torch.randn(4, 5, dtype=F64)
    p = MeshParams(3, 4, 2.0, 1e-2, 0.9, True)
    trace = torch_ot.mesh_fwd(C, a.log(), b.log(), noise, p, True)[4]
    grad_C, glog_a, glog_b = torch_ot.mesh_bwd(trace, a.log(), b.log(), p, gu, gv)
    leaves = [t.clone().requires_grad_(True) for t in (C, a, b)]
    _, u, v = mesh_official_ref(*leaves, 3, 4, 2.0, noise, 1e-2, 0.9)
    ref = torch.autograd.grad((u * gu).sum() + (v * gv).sum(), leaves)
    torch.testing.assert_close(grad_C, ref[0], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(glog_a, ref[1] * a, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(glog_b, ref[2] * b, rtol=1e-9, atol=1e-11)


def test_scaling_check_rejects_what_it_cannot_represent(problem):
    """Cold start with a slot 2000 tau dearer than the others: its column of K underflows to 0, the
    check fails, and the log domain still gives the exact result."""
    C, a, b, _ = problem(3, 12, 4, seed=5, scale=3.0)[:4]
    C[:, :, 0] += 2000.0
    v0 = torch.zeros(3, 4, dtype=F64)
    la, lb = a.log(), b.log()
    logKt = torch.add(v0[:, :, None], C.transpose(1, 2), alpha=-1.0).contiguous()
    work = torch_ot._workspace(C, 3, 4, 12, 3, backward=False)
    _, _, _, _, XT, YT, yL = torch_ot._scaled_forward(logKt, a, b, 3, False, work)
    assert not torch_ot._scaled_check(XT, YT, yL, torch_ot._log_min_mass(la, lb), 3).any()
    us, vs = torch_ot.sinkhorn_fwd(C, la, lb, v0, 1.0, 3)[:2]
    _, u_ref, v_ref = sinkhorn_ref(C, a, b, 3, 1.0)
    torch.testing.assert_close(us[-1], u_ref, rtol=1e-12, atol=1e-8)
    torch.testing.assert_close(vs[-1], v_ref, rtol=1e-12, atol=1e-8)
