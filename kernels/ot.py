"""Batched unrolled log-domain Sinkhorn (App. A, D): validation, backend dispatch and autograd.

Each iteration rescales the rows of P = exp(-C / tau + u + v) to sum to ``a``, then the columns to sum to
``b`` (warm-startable from ``v``). The numerical work is done by a backend of ``kernels.backends`` (the C++
loops on CPU, Triton on CUDA, ``backend="torch"`` the plain PyTorch path), wrapped here in a
``torch.autograd.Function`` whose backward is the backend's hand-written one.

Known limits: the returned potentials carry no gradient (they are warm starts); the backward is not itself
differentiable (double backward raises).
"""
import torch
from torch.autograd.function import once_differentiable

from ._checks import check_int, check_like, check_ot_inputs, check_tau, input_status, raise_for_status
from .backends import pick_backend

__all__ = ["sinkhorn"]


def validate(be, status, C, a, b, v=None, noise=None, tau=None) -> None:
    """Raise for bad input values: the kernel's statuses, or (a backend that does not check) Python's."""
    if not be.validates:
        status = input_status(C, a, b, v, noise, tau)
    raise_for_status(status, C, a, b, v, tau)


def log_marginals(a: torch.Tensor, b: torch.Tensor):
    with torch.no_grad():
        return torch.log(a).contiguous(), torch.log(b).contiguous()


class _Sinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, C, a, b, v0, tau, n_iters, be):
        if not be.validates:
            validate(be, None, C, a, b, v0, tau=tau)
        log_a, log_b = log_marginals(a, b)
        us, vs, P, status = be.sinkhorn_fwd(C, log_a, log_b, v0, tau, n_iters, True)
        if be.validates:
            validate(be, status, C, a, b, v0, tau=tau)
        ctx.save_for_backward(C, a, b, log_a, log_b, us, vs)
        ctx.tau, ctx.be = tau, be
        u, v = us[-1].clone(), vs[-1].clone()
        ctx.mark_non_differentiable(u, v)
        return P, u, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_P, grad_u, grad_v):
        C, a, b, log_a, log_b, us, vs = ctx.saved_tensors
        grad_C, glog_a, glog_b, gv0 = ctx.be.sinkhorn_bwd(C, log_a, log_b, ctx.tau, us, vs, grad_P.contiguous())
        return grad_C, marginal_grad(ctx, 1, glog_a, a), marginal_grad(ctx, 2, glog_b, b), gv0, None, None, None


def marginal_grad(ctx, index: int, glog: torch.Tensor, m: torch.Tensor):
    """d/dm from d/dlog m (0 where m is 0), or None when input ``index`` needs no gradient."""
    if not ctx.needs_input_grad[index]:
        return None
    return torch.where(m > 0, glog / m, torch.zeros_like(m))


def sinkhorn(C, a, b, n_iters=5, tau=1.0, u=None, v=None, *, backend=None):
    """Batched unrolled log-domain Sinkhorn (App. A, D).

    Args:
        C: (B, n, m) costs, rows are inputs, columns are slots; float32 or float64, finite.
        a: (B, n) row marginals, b: (B, m) column marginals; >= 0, a.sum(1) == b.sum(1).
        n_iters: number of (row, column) rescalings, >= 1.
        tau: entropic temperature, > 0.
        u: (B, n) or None; accepted for symmetry and ignored (the first row rescaling recomputes it).
        v: (B, m) or None; warm-start column potentials (zeros if None), -inf allowed at columns that should
            start with no mass; differentiable.
        backend: None (the C++ loops on CPU, Triton on CUDA), or one of ``kernels.BACKENDS``.

    Returns:
        P (B, n, m) the plan, differentiable in C, a, b and v; u (B, n), v (B, m) the final log-domain
        potentials, P = exp(-C / tau + u[:, :, None] + v[:, None, :]), without gradient.

    Raises:
        ValueError naming the problem for bad shapes, dtypes, non-finite costs, negative or all-zero
        marginals, unequal masses, tau <= 0, n_iters < 1, malformed warm starts or C / tau overflowing.
    """
    check_ot_inputs(C, a, b, values=False)
    check_tau(tau)
    check_int(n_iters, "n_iters", 1)
    be = pick_backend(C, backend)
    B, n, m = C.shape
    if u is not None:
        check_like(u, "u", (B, n), C)
        if torch.isnan(u.detach().sum()) and torch.isnan(u).any():  # NaN, or +inf and -inf together
            raise ValueError("warm-start u has NaN entries")
    if v is not None:
        check_like(v, "v", (B, m), C)
    v0 = torch.zeros_like(b) if v is None else v
    return _Sinkhorn.apply(C.contiguous(), a.contiguous(), b.contiguous(), v0.contiguous(), float(tau), int(n_iters),
                           be)
