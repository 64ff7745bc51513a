"""Public batched Sinkhorn and MESH: validation, backend dispatch and autograd.

``sinkhorn`` is the unrolled log-domain Sinkhorn of App. A/D (rows rescaled to ``a``, then columns to
``b``, warm-startable from ``v``), differentiable in ``C``, ``a``, ``b`` and the warm start ``v``
through a hand-written backward of the unrolled iterations. ``mesh`` is MESH, Eq. 9-12 of the paper:
``n_mesh_iters`` normalized gradient steps on the costs that lower the entropy of the Sinkhorn plan,
starting from ``C + noise_scale * noise``; its output passes gradients straight through to ``C``
(Sec. 4.1, "Gradients"), or, with ``straight_through=False``, is differentiated through every step.

The numerical work is done by a backend with a fixed contract (``sinkhorn_fwd``, ``sinkhorn_bwd``,
``mesh_fwd``): ``kernels.triton_ot`` for CUDA tensors when Triton imports (``kernels.torch_ot``
when it does not), ``kernels.cpp_ot`` (the fused C++ loops of ``emd_cpp``) for CPU tensors.
``backend="torch"`` forces the plain PyTorch path (the reference the others are tested against; it runs
on any device), ``"cpp"`` / ``"triton"`` force theirs, and ``"compile"`` is ``kernels.compiled_ot``, the
PyTorch path under ``torch.compile`` (opt-in: its first call per shape compiles). The backends never
build an autograd graph; this module wraps them in ``torch.autograd.Function``.

Known limits: the returned potentials ``u``, ``v`` carry no gradient (they are for warm starts); a
gradient that reaches them is an error from autograd, not a silent zero. ``sinkhorn``'s backward is
not itself differentiable (double backward raises). ``straight_through=False``
runs the plain-autograd reference (``kernels.reference.mesh_ref``): correct, second order, slow.
"""
import importlib
import importlib.util
import math
import numbers

import torch
from torch.autograd.function import once_differentiable

from . import cpp_ot, torch_ot
from ._checks import check_ot_inputs, check_tau
from .reference import mesh_ref

__all__ = ["sinkhorn", "mesh"]

_BACKENDS = (None, "torch", "cpp", "compile", "triton")


def _triton_backend():
    return importlib.import_module("kernels.triton_ot")


def _check_backend(backend) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be None, 'torch', 'cpp', 'compile' or 'triton', got {backend!r}")


def _pick_backend(C: torch.Tensor, backend):
    """The backend module for ``C``: the C++ loops on CPU; Triton on CUDA when it imports, else PyTorch."""
    _check_backend(backend)
    if backend == "torch":
        return torch_ot
    if backend == "triton":
        return _triton_backend()
    if backend == "compile":
        return importlib.import_module("kernels.compiled_ot")
    if backend == "cpp" or (backend is None and C.device.type == "cpu"):
        if C.device.type != "cpu":
            raise ValueError(f"backend 'cpp' runs on CPU tensors, got C on {C.device}")
        return cpp_ot
    if C.is_cuda and importlib.util.find_spec("triton") is not None:
        try:
            return _triton_backend()
        except ModuleNotFoundError as e:
            if e.name not in ("kernels.triton_ot", "triton"):
                raise
    return torch_ot


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(value, name: str, nonnegative: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (nonnegative and value < 0):
        kind = "a finite number >= 0" if nonnegative else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _check_scale(C: torch.Tensor, tau: float) -> None:
    """-C / tau must stay far from overflow (the kernels add three such terms)."""
    if C.numel() == 0:
        return
    cmax = float(C.detach().abs().amax())
    if cmax / tau > torch.finfo(C.dtype).max / 64:
        raise ValueError(f"C / tau overflows {C.dtype}: max |C| = {cmax:.3g}, tau = {tau!r}")


def _check_values(C, a, b, u, v, tau, noise=None) -> None:
    """All value checks of ``sinkhorn`` / ``mesh``, in the order of their error messages."""
    check_ot_inputs(C, a, b)
    _check_warm_start(C, u, v)
    if noise is not None and not bool(torch.isfinite(noise.detach().sum())):
        if not bool(torch.isfinite(noise).all()):
            raise ValueError("noise has NaN or Inf entries")
    _check_scale(C, tau)


def _check_like(t, name: str, shape, C: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} to match C {tuple(C.shape)}, got {tuple(t.shape)}")
    if t.dtype != C.dtype or t.device != C.device:
        raise ValueError(f"{name} must have C's dtype and device ({C.dtype}, {C.device}), got {t.dtype}, {t.device}")


def _check_warm_start(C: torch.Tensor, u, v, values: bool = True) -> None:
    """Shapes of the warm starts, and (``values``) their values; u is checked for NaN either way."""
    B, n, m = C.shape
    if u is not None:
        _check_like(u, "u", (B, n), C)
        if torch.isnan(u.detach().sum()):  # NaN, or +inf and -inf together
            if torch.isnan(u).any():
                raise ValueError("warm-start u has NaN entries")
    if v is not None:
        _check_like(v, "v", (B, m), C)
        if not values:
            return
        with torch.no_grad():
            if torch.isnan(v).any() or (v == math.inf).any():
                raise ValueError("warm-start v has NaN or +Inf entries")
            if B and (v == -math.inf).all(1).any():
                raise ValueError("warm-start v is -Inf in every column of some batch element")


class _Sinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, C, a, b, v0, tau, n_iters, be):
        log_a, log_b = torch.log(a), torch.log(b)
        if hasattr(be, "sinkhorn_fwd_plan"):  # the plan from the same pass
            us, vs, P = be.sinkhorn_fwd_plan(C, log_a, log_b, tau, n_iters, v0)
            u, v = us[-1], vs[-1]
        else:
            us, vs = be.sinkhorn_fwd(C, log_a, log_b, tau, n_iters, v0)
            u, v = us[-1], vs[-1]
            P = torch.div(C, -tau).add_(u[:, :, None]).add_(v[:, None, :]).exp_()  # (B, n, m)
        ctx.save_for_backward(C, a, b, log_a, log_b, us, vs)
        ctx.tau, ctx.be = tau, be
        u, v = u.clone(), v.clone()
        ctx.mark_non_differentiable(u, v)
        return P, u, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_P, grad_u, grad_v):
        C, a, b, log_a, log_b, us, vs = ctx.saved_tensors
        grad_C, glog_a, glog_b, gv0 = ctx.be.sinkhorn_bwd(C, log_a, log_b, ctx.tau, us, vs, grad_P.contiguous())
        zero_a, zero_b = torch.zeros_like(a), torch.zeros_like(b)
        grad_a = torch.where(a > 0, glog_a / a, zero_a) if ctx.needs_input_grad[1] else None
        grad_b = torch.where(b > 0, glog_b / b, zero_b) if ctx.needs_input_grad[2] else None
        return grad_C, grad_a, grad_b, gv0, None, None, None


class _MeshStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, C, log_a, log_b, noise, tau, noise_scale, n_mesh_iters, n_sh_iters, lr, reuse_uv, be):
        C_T, u, v = be.mesh_fwd(C, log_a, log_b, tau, noise, noise_scale, n_mesh_iters, n_sh_iters, lr, reuse_uv)
        ctx.mark_non_differentiable(u, v)
        return C_T, u, v

    @staticmethod
    def backward(ctx, grad_C_T, grad_u, grad_v):
        return (grad_C_T,) + (None,) * 10


def sinkhorn(C, a, b, n_iters=5, tau=1.0, u=None, v=None, *, backend=None):
    """Batched unrolled log-domain Sinkhorn (App. A, D).

    Each iteration rescales the rows of P = exp(-C / tau + u + v) to sum to ``a``, then the columns
    to sum to ``b``; the returned plan meets ``b`` exactly and ``a`` up to convergence.

    Args:
        C: (B, n, m) costs, rows are inputs, columns are slots; float32 or float64, finite.
        a: (B, n) row marginals, b: (B, m) column marginals; >= 0, a.sum(1) == b.sum(1).
        n_iters: number of (row, column) rescalings, >= 1.
        tau: entropic temperature, > 0.
        u: (B, n) or None; accepted for symmetry and ignored, since the first row rescaling
            recomputes it from ``v``.
        v: (B, m) or None; warm-start column potentials (zeros if None). May be -inf at columns that
            should start with no mass; differentiable.
        backend: None (the C++ loops on CPU; Triton on CUDA when available, else PyTorch), "torch" (plain
            PyTorch, any device), "cpp" (CPU only), "compile" (the PyTorch path under torch.compile,
            compiles on first use) or "triton".

    Returns:
        P (B, n, m) the plan, differentiable in C, a, b and v; u (B, n), v (B, m) the final
        log-domain potentials, P = exp(-C / tau + u[:, :, None] + v[:, None, :]), without gradient.

    Raises:
        ValueError naming the problem for bad shapes, dtypes, non-finite costs, negative or all-zero
        marginals, unequal masses, tau <= 0, n_iters < 1 or malformed warm starts.
    """
    check_ot_inputs(C, a, b, values=False)
    check_tau(tau)
    _check_int(n_iters, "n_iters", 1)
    be = _pick_backend(C, backend)
    if getattr(be, "VALIDATES_INPUTS", False):  # the kernel checks the values as it reads them
        _check_warm_start(C, u, v, values=False)
    else:
        _check_values(C, a, b, u, v, tau)
    v0 = torch.zeros_like(b) if v is None else v
    args = (C.contiguous(), a.contiguous(), b.contiguous(), v0.contiguous(), float(tau), int(n_iters))
    try:
        return _Sinkhorn.apply(*args, be)
    except cpp_ot.InvalidInput:
        _check_values(C, a, b, u, v, tau)  # names the problem
        return _Sinkhorn.apply(*args, torch_ot)  # valid after all (the kernel sums masses in float64)


def mesh(C, a, b, n_mesh_iters=4, n_sh_iters=5, lr=8.0, noise=None, noise_scale=1e-3, reuse_uv=True,
         tau=1.0, straight_through=True, *, backend=None):
    """MESH (Eq. 9-12): move the costs to minimize the entropy of their Sinkhorn plan.

    C'_0 = C + noise_scale * noise; then ``n_mesh_iters`` steps C' <- C' - lr * g / ||g||, with
    g = dH(sinkhorn(C'))/dC' through ``n_sh_iters`` unrolled iterations, ||.|| the Frobenius norm per
    batch element and H(P) = -sum P log P. With ``reuse_uv`` each step's Sinkhorn is warm-started from
    the previous step's potentials (App. D). ``sinkhorn(C2, a, b, u=u, v=v)`` is then SA-MESH's plan.

    Args:
        C: (B, n, m) costs; a: (B, n), b: (B, m) marginals (as in ``sinkhorn``).
        n_mesh_iters: gradient steps, >= 0. n_sh_iters: Sinkhorn iterations per step, >= 1.
        lr: step length (finite). noise_scale: finite, >= 0.
        noise: (B, n, m) standard-normal tensor, drawn with ``torch.randn_like(C)`` if None.
        reuse_uv: carry potentials from step to step.
        tau: entropic temperature, > 0.
        straight_through: if True, C2 passes gradients to C unchanged (no gradient to a, b, noise);
            if False, autograd differentiates through every step (slow, second order; when nothing
            needs a gradient the values are computed by the fast path, they are the same).
        backend: None, "torch", "cpp", "compile" or "triton" (as in ``sinkhorn``); ignored when
            straight_through=False.

    Returns:
        C2 (B, n, m) the moved costs; u (B, n), v (B, m) the potentials of the last step's Sinkhorn,
        or None, None when ``reuse_uv`` is False or ``n_mesh_iters`` is 0.
    """
    check_ot_inputs(C, a, b, values=False)
    check_tau(tau)
    _check_int(n_mesh_iters, "n_mesh_iters", 0)
    _check_int(n_sh_iters, "n_sh_iters", 1)
    _check_float(lr, "lr")
    _check_float(noise_scale, "noise_scale", nonnegative=True)
    if noise is None:
        noise = torch.randn_like(C)
    else:
        _check_like(noise, "noise", C.shape, C)
    _check_backend(backend)
    if not straight_through and torch.is_grad_enabled() and any(t.requires_grad for t in (C, a, b, noise)):
        _check_values(C, a, b, None, None, tau, noise)
        # the reference takes d/dC' inside every step, so C' must be on the graph even when C is not
        C_in = C if C.requires_grad else C.detach().requires_grad_(True)
        return mesh_ref(C_in, a, b, int(n_mesh_iters), int(n_sh_iters), float(lr), noise, float(noise_scale),
                        bool(reuse_uv), float(tau), straight_through=False)
    if n_mesh_iters == 0:
        _check_values(C, a, b, None, None, tau, noise)
        C2 = C + float(noise_scale) * noise.detach()  # passes the gradient to C unchanged
        return C2, None, None
    be = _pick_backend(C, backend)
    if not getattr(be, "VALIDATES_INPUTS", False):
        _check_values(C, a, b, None, None, tau, noise)
    with torch.no_grad():
        log_a, log_b = torch.log(a), torch.log(b)
    args = (C.contiguous(), log_a.contiguous(), log_b.contiguous(), noise.detach().contiguous(), float(tau),
            float(noise_scale), int(n_mesh_iters), int(n_sh_iters), float(lr), bool(reuse_uv))
    try:
        C2, u, v = _MeshStraightThrough.apply(*args, be)
    except cpp_ot.InvalidInput:
        _check_values(C, a, b, None, None, tau, noise)  # names the problem
        C2, u, v = _MeshStraightThrough.apply(*args, torch_ot)
    if not reuse_uv:
        u = v = None
    return C2, u, v
