"""The fused C++ CPU path of the OT kernels (``backend="cpp"``; the default for CPU tensors).

Why. Slot attention solves many small problems, e.g. (B, n, m) = (64, 105, 5): one batch element is 525
numbers, so ``kernels.torch_ot`` (about 400 tensor operations per MESH call, each a pass over the whole
batch) is bound by per-operation cost, not arithmetic. ``emd_cpp/sinkhorn.cpp`` does each batch element
start to finish in one thread with its matrices in cache.

What. The backend contract of ``kernels.torch_ot`` (``sinkhorn_fwd``, ``sinkhorn_bwd``, ``mesh_fwd``),
plus ``sinkhorn_fwd_plan``, which also returns the plan from the same pass (``kernels.sinkhorn`` uses it
when a backend has it), with the same maths: the scaling form and its unrolled backward (derivation in ``kernels.torch_ot``).
The C++ loops run the same per-element accuracy checks (finite scalings, no harmful underflow, small
potentials) and report them; batch elements that fail are recomputed by ``kernels.torch_ot``, which
falls back to the log domain, so results stay finite and as accurate as the eager path. Values agree
with ``kernels.torch_ot`` to rounding (different summation order), not bit for bit.

Threads: as many as torch uses (``torch.get_num_threads()``), fewer for small batches (a thread is
only started for at least ``_WORK_PER_THREAD`` matrix entries times iterations); the GIL is released.

Known limits: CPU tensors only (CUDA tensors are the Triton path's); float32 and float64.
"""
import torch

import emd_cpp

from . import torch_ot
from ._checks import MASS_RTOL

__all__ = ["sinkhorn_fwd", "sinkhorn_fwd_plan", "sinkhorn_bwd", "mesh_fwd", "InvalidInput", "VALIDATES_INPUTS"]

# The forward loops check each element's values (those of kernels._checks.check_ot_inputs, the warm start,
# the noise, and C / tau far from overflow) as they read them, so kernels.sinkhorn / kernels.mesh skip
# their own passes over the inputs; a failing element raises InvalidInput, and the public function then
# runs the Python checks to name the problem.
VALIDATES_INPUTS = True


class InvalidInput(ValueError):
    """Some batch element's inputs fail the value checks (found by the C++ loops)."""


_WORK_PER_THREAD = 1 << 20  # n * m * Sinkhorn iterations per thread before a second one pays for its start


def _threads(C: torch.Tensor, passes: int) -> int:
    B, n, m = C.shape
    return max(1, min(torch.get_num_threads(), B, (B * n * m * passes) // _WORK_PER_THREAD))


def _np(t: torch.Tensor):
    if t.is_cuda:
        raise ValueError("backend 'cpp' runs on CPU tensors; use backend None or 'triton' for CUDA tensors")
    return t.detach().contiguous().numpy()


def _bad(ok) -> torch.Tensor | None:
    """Indices of the batch elements whose accuracy checks failed, or None."""
    if ok.all():
        return None
    return torch.from_numpy(ok == 0).nonzero().squeeze(1)


def sinkhorn_fwd(C, log_a, log_b, tau, n_iters, v0):
    """As ``torch_ot.sinkhorn_fwd``: us (n_iters, B, n), vs (n_iters + 1, B, m)."""
    us, vs, _ = sinkhorn_fwd_plan(C, log_a, log_b, tau, n_iters, v0, want_plan=False)
    return us, vs


def sinkhorn_fwd_plan(C, log_a, log_b, tau, n_iters, v0, want_plan=True):
    """``sinkhorn_fwd`` and the plan P = exp(-C / tau + u_L + v_L) (B, n, m) from the same pass."""
    us, vs, P, ok, valid = emd_cpp.sinkhorn_fwd(_np(C), _np(log_a), _np(log_b), _np(v0), float(tau), int(n_iters),
                                                _threads(C, n_iters), want_plan, MASS_RTOL)
    if not valid.all():
        raise InvalidInput("Sinkhorn inputs fail the value checks")
    us, vs = torch.from_numpy(us), torch.from_numpy(vs)
    P = torch.from_numpy(P) if want_plan else None
    bad = _bad(ok)
    if bad is not None:
        us_b, vs_b = torch_ot.sinkhorn_fwd(C[bad], log_a[bad], log_b[bad], tau, n_iters, v0[bad])
        us[:, bad], vs[:, bad] = us_b, vs_b
        if want_plan:
            P[bad] = torch.div(C[bad], -tau).add_(us_b[-1][:, :, None]).add_(vs_b[-1][:, None, :]).exp_()
    return us, vs, P


def sinkhorn_bwd(C, log_a, log_b, tau, us, vs, grad_P):
    """As ``torch_ot.sinkhorn_bwd``: grad_C (B, n, m), grad_log_a (B, n), grad_log_b (B, m), grad_v0 (B, m)."""
    g = None if grad_P is None else _np(grad_P)
    grad_C, ga, gb, gv0, ok = emd_cpp.sinkhorn_bwd(_np(C), _np(log_a), _np(log_b), _np(us), _np(vs), g, float(tau),
                                                   _threads(C, 3 * us.shape[0]))
    grad_C, ga, gb, gv0 = (torch.from_numpy(t) for t in (grad_C, ga, gb, gv0))
    bad = _bad(ok)
    if bad is not None:
        r = torch_ot.sinkhorn_bwd(C[bad], log_a[bad], log_b[bad], tau, us[:, bad], vs[:, bad],
                                  None if grad_P is None else grad_P[bad])
        grad_C[bad], ga[bad], gb[bad], gv0[bad] = r
    return grad_C, ga, gb, gv0


def mesh_fwd(C, log_a, log_b, tau, noise, noise_scale, n_mesh_iters, n_sh_iters, lr, reuse_uv):
    """As ``torch_ot.mesh_fwd``: C_T (B, n, m), u (B, n), v (B, m) (None, None for 0 steps)."""
    if n_mesh_iters == 0:
        return C + noise_scale * noise, None, None
    C_T, u, v, ok, valid = emd_cpp.mesh_fwd(_np(C), _np(noise), _np(log_a), _np(log_b), float(tau),
                                            float(noise_scale), int(n_mesh_iters), int(n_sh_iters), float(lr),
                                            bool(reuse_uv), _threads(C, 3 * n_mesh_iters * n_sh_iters), MASS_RTOL)
    if not valid.all():
        raise InvalidInput("MESH inputs fail the value checks")
    C_T, u, v = torch.from_numpy(C_T), torch.from_numpy(u), torch.from_numpy(v)
    bad = _bad(ok)
    if bad is not None:
        C_b, u_b, v_b = torch_ot.mesh_fwd(C[bad], log_a[bad], log_b[bad], tau, noise[bad], noise_scale,
                                          n_mesh_iters, n_sh_iters, lr, reuse_uv)
        C_T[bad], u[bad], v[bad] = C_b, u_b, v_b
    return C_T, u, v
