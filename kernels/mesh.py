"""MESH (Eq. 9-12): move the costs to Minimize the Entropy of their Sinkhorn plan.

C'_0 = C + noise_scale * noise; then ``n_mesh_iters`` steps C' <- C' - lr * g / ||g||, with
g = dH(sinkhorn(C'))/dC' through ``n_sh_iters`` unrolled iterations, ||.|| the Frobenius norm per batch
element and H(P) = -sum P log P. With ``reuse_uv`` each step's Sinkhorn is warm-started from the previous
step's potentials (App. D); ``sinkhorn(C2, a, b, u=u, v=v)`` is then SA-MESH's plan (Eq. 10).

Gradients. C2 passes its gradient to C unchanged (straight through, Sec. 4.1). The returned potentials u, v
carry no gradient by default; with ``warm_start_grad=True`` they carry the official code's: the gradient of
u, v flows back through every step's Sinkhorn (each warm-started from the previous step's v) to C (each C'_t
is C plus a constant) and to both marginals, by a hand-written backward that chains the backends' Sinkhorn
backward. ``straight_through=False`` instead differentiates through every step with autograd
(``kernels.reference.mesh_ref``: second order, slow).

This module is callable: ``kernels.mesh(C, a, b)`` (the package attribute is this module) calls
:func:`mesh`, like ``from kernels.mesh import mesh``.
"""
import sys
import types

import torch

from ._checks import check_float, check_int, check_like, check_ot_inputs, check_tau, input_status, raise_for_status
from .backends import MeshParams, MeshTrace, check_backend, pick_backend
from .ot import log_marginals, marginal_grad, validate
from .reference import mesh_ref

__all__ = ["mesh"]


class _Mesh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, C, a, b, noise, params, warm_start_grad, be):
        ctx.set_materialize_grads(False)
        if not be.validates:
            validate(be, None, C, a, b, noise=noise, tau=params.tau)
        log_a, log_b = log_marginals(a, b)
        C_T, u, v, status, trace = be.mesh_fwd(C, log_a, log_b, noise, params, warm_start_grad)
        if be.validates:
            validate(be, status, C, a, b, tau=params.tau)
        ctx.params, ctx.be, ctx.warm_start_grad = params, be, warm_start_grad
        if warm_start_grad:
            ctx.save_for_backward(a, b, log_a, log_b, trace.C, trace.v0)
        else:
            ctx.mark_non_differentiable(u, v)
        return C_T, u, v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_C_T, grad_u, grad_v):
        grad_C, grad_a, grad_b = grad_C_T, None, None
        if ctx.warm_start_grad and (grad_u is not None or grad_v is not None):
            a, b, log_a, log_b, trace_C, trace_v0 = ctx.saved_tensors
            grad_u = torch.zeros_like(log_a) if grad_u is None else grad_u.contiguous()
            grad_v = torch.zeros_like(log_b) if grad_v is None else grad_v.contiguous()
            gC, glog_a, glog_b = ctx.be.mesh_bwd(MeshTrace(trace_C, trace_v0), log_a, log_b, ctx.params, grad_u,
                                                 grad_v)
            grad_C = gC if grad_C is None else grad_C + gC
            grad_a, grad_b = marginal_grad(ctx, 1, glog_a, a), marginal_grad(ctx, 2, glog_b, b)
        return grad_C, grad_a, grad_b, None, None, None, None


def mesh(C, a, b, n_mesh_iters=4, n_sh_iters=5, lr=8.0, noise=None, noise_scale=1e-3, reuse_uv=True, tau=1.0,
         straight_through=True, warm_start_grad=False, *, backend=None):
    """MESH (Eq. 9-12): move the costs to minimize the entropy of their Sinkhorn plan.

    Args:
        C: (B, n, m) costs; a: (B, n), b: (B, m) marginals (as in ``kernels.sinkhorn``).
        n_mesh_iters: gradient steps, >= 0. n_sh_iters: Sinkhorn iterations per step, >= 1.
        lr: step length (finite). noise_scale: finite, >= 0.
        noise: (B, n, m) standard-normal tensor, drawn with ``torch.randn_like(C)`` if None.
        reuse_uv: carry potentials from step to step.
        tau: entropic temperature, > 0.
        straight_through: if True, C2 passes gradients to C unchanged; if False, autograd differentiates
            through every step (slow, second order; ``warm_start_grad`` and ``backend`` are then ignored).
        warm_start_grad: u, v carry gradients back through every step's Sinkhorn to C, a and b (the official
            code's gradient; needs ``reuse_uv``).
        backend: None (the C++ loops on CPU, Triton on CUDA), or one of ``kernels.BACKENDS``.

    Returns:
        C2 (B, n, m) the moved costs; u (B, n), v (B, m) the potentials of the last step's Sinkhorn, or
        None, None when ``reuse_uv`` is False or ``n_mesh_iters`` is 0.

    Raises:
        ValueError naming the problem for bad inputs or options (as ``kernels.sinkhorn``).
    """
    check_ot_inputs(C, a, b, values=False)
    check_tau(tau)
    check_int(n_mesh_iters, "n_mesh_iters", 0)
    check_int(n_sh_iters, "n_sh_iters", 1)
    check_float(lr, "lr")
    check_float(noise_scale, "noise_scale", nonnegative=True)
    if not isinstance(warm_start_grad, bool):
        raise ValueError(f"warm_start_grad must be a bool, got {warm_start_grad!r}")
    if noise is None:
        noise = torch.randn_like(C)
    else:
        check_like(noise, "noise", C.shape, C)
    check_backend(backend)
    params = MeshParams(int(n_mesh_iters), int(n_sh_iters), float(lr), float(noise_scale), float(tau), bool(reuse_uv))
    if n_mesh_iters == 0 or (not straight_through and torch.is_grad_enabled()
                             and any(t.requires_grad for t in (C, a, b, noise))):
        raise_for_status(input_status(C, a, b, noise=noise, tau=tau), C, a, b, tau=tau)
        if n_mesh_iters == 0:
            return C + params.noise_scale * noise.detach(), None, None  # passes the gradient to C unchanged
        # the reference takes d/dC' inside every step, so C' must be on the graph even when C is not
        C_in = C if C.requires_grad else C.detach().requires_grad_(True)
        return mesh_ref(C_in, a, b, *params[:2], params.lr, noise, params.noise_scale, params.reuse_uv, params.tau,
                        straight_through=False)
    be = pick_backend(C, backend)
    # the trace for the warm-start backward is recorded only when a gradient can flow
    trace = warm_start_grad and params.reuse_uv and torch.is_grad_enabled() and any(
        t.requires_grad for t in (C, a, b))
    C2, u, v = _Mesh.apply(C.contiguous(), a.contiguous(), b.contiguous(), noise.detach().contiguous(), params,
                           trace, be)
    if not reuse_uv:
        u = v = None
    return C2, u, v


class _CallableModule(types.ModuleType):
    """``kernels.mesh`` is this module; calling it calls :func:`mesh`."""

    def __call__(self, *args, **kwargs):
        return mesh(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
