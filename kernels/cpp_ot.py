"""The fused C++ CPU loops of ``emd_cpp/sinkhorn.cpp`` as an OT backend (``backend="cpp"``, the CPU default).

Slot attention solves many small problems, e.g. (B, n, m) = (64, 105, 5), where ``kernels.torch_ot`` is bound
by per-operation cost; the C++ loops do each batch element start to finish in one thread with its matrices
in cache. Same maths as ``kernels.torch_ot`` (the scaling form and its unrolled backward); values agree with
it to rounding, not bit for bit. The loops check each element's input values as they read them and report a
status per element; elements whose scaling form fails its accuracy checks (status LOG_DOMAIN) are redone by
``kernels.torch_ot``, which falls back to the log domain.

Threads: as many as torch uses (``torch.get_num_threads()``), fewer for small batches; the GIL is released.
An element's result does not depend on the number of threads.

Known limits: CPU tensors only; float32 and float64.
"""
import numpy as np
import torch

import emd_cpp

from . import torch_ot
from ._checks import MASS_RTOL, Status
from .backends import Backend, MeshTrace

__all__ = ["sinkhorn_fwd", "sinkhorn_bwd", "mesh_fwd", "mesh_bwd", "BACKEND"]

_WORK_PER_THREAD = 1 << 20  # n * m * Sinkhorn iterations per thread before a second one pays for its start


def _threads(C: torch.Tensor, passes: int) -> int:
    B, n, m = C.shape
    return max(1, min(torch.get_num_threads(), B, (B * n * m * passes) // _WORK_PER_THREAD))


def _np(t: torch.Tensor | None):
    return None if t is None else t.detach().contiguous().numpy()


def _redo(status) -> torch.Tensor | None:
    """Indices of the elements to redo in the log domain (only when every element is valid), or None."""
    if not status.any():  # all OPTIMAL (0)
        return None
    redo = status == int(Status.LOG_DOMAIN)
    if not redo.any() or ((status != int(Status.OPTIMAL)) & ~redo).any():
        return None
    return torch.from_numpy(np.flatnonzero(redo))


def sinkhorn_fwd(C, log_a, log_b, v0, tau, n_iters, want_plan):
    us, vs, P, status = emd_cpp.sinkhorn_fwd(_np(C), _np(log_a), _np(log_b), _np(v0), float(tau), int(n_iters),
                                             _threads(C, n_iters), want_plan, MASS_RTOL)
    us, vs = torch.from_numpy(us), torch.from_numpy(vs)
    P = torch.from_numpy(P) if want_plan else None
    bad = _redo(status)
    if bad is not None:
        us_b, vs_b, P_b, _ = torch_ot.sinkhorn_fwd(C[bad], log_a[bad], log_b[bad], v0[bad], tau, n_iters, want_plan)
        us[:, bad], vs[:, bad] = us_b, vs_b
        if want_plan:
            P[bad] = P_b
    return us, vs, P, status


def sinkhorn_bwd(C, log_a, log_b, tau, us, vs, grad_P, grad_u=None, grad_v=None):
    *grads, status = emd_cpp.sinkhorn_bwd(_np(C), _np(log_a), _np(log_b), _np(us), _np(vs), _np(grad_P), _np(grad_u),
                                          _np(grad_v), float(tau), _threads(C, 3 * us.shape[0]))
    grads = [torch.from_numpy(g) for g in grads]
    bad = _redo(status)
    if bad is not None:
        pick = (lambda t: None if t is None else t[bad])
        redone = torch_ot.sinkhorn_bwd(C[bad], log_a[bad], log_b[bad], tau, us[:, bad], vs[:, bad], pick(grad_P),
                                       pick(grad_u), pick(grad_v))
        for g, r in zip(grads, redone):
            g[bad] = r
    return tuple(grads)


def mesh_fwd(C, log_a, log_b, noise, params, trace=False):
    C_T, u, v, status, tr = emd_cpp.mesh_fwd(_np(C), _np(noise), _np(log_a), _np(log_b), params, trace,
                                             _threads(C, 3 * params.n_mesh_iters * params.n_sh_iters), MASS_RTOL)
    C_T, u, v = torch.from_numpy(C_T), torch.from_numpy(u), torch.from_numpy(v)
    tr = None if tr is None else MeshTrace(*(torch.from_numpy(t) for t in tr))
    bad = _redo(status)
    if bad is not None:
        C_b, u_b, v_b, _, tr_b = torch_ot.mesh_fwd(C[bad], log_a[bad], log_b[bad], noise[bad], params, trace)
        C_T[bad], u[bad], v[bad] = C_b, u_b, v_b
        if trace:
            tr.C[:, bad], tr.v0[:, bad] = tr_b
    return C_T, u, v, status, tr


def mesh_bwd(trace, log_a, log_b, params, grad_u, grad_v):
    grad_C, ga, gb, status = emd_cpp.mesh_bwd(_np(trace.C), _np(trace.v0), _np(log_a), _np(log_b), _np(grad_u),
                                              _np(grad_v), params,
                                              _threads(trace.C[0], 4 * params.n_mesh_iters * params.n_sh_iters))
    grads = [torch.from_numpy(g) for g in (grad_C, ga, gb)]
    bad = _redo(status)
    if bad is not None:
        redone = torch_ot.mesh_bwd(MeshTrace(trace.C[:, bad], trace.v0[:, bad]), log_a[bad], log_b[bad], params,
                                   grad_u[bad], grad_v[bad])
        for g, r in zip(grads, redone):
            g[bad] = r
    return tuple(grads)


BACKEND = Backend(sinkhorn_fwd, sinkhorn_bwd, mesh_fwd, mesh_bwd, validates=True, device="cpu")
