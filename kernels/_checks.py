"""Input checks of the OT functions, and the one place that turns per-element statuses into error messages.

Types, shapes, dtypes and devices are checked here in Python (:func:`check_ot_inputs`, :func:`check_like`).
Values are checked per batch element, by the kernel that reads them (the C++ loops and the EMD solver write an
``emd_cpp.Status`` per element) or, for backends that do not check, by :func:`input_status` in PyTorch.
Either way :func:`raise_for_status` words the error for the first bad element, looking only at that element's
inputs.
"""
import math
import numbers

import numpy as np
import torch

from emd_cpp import Status

__all__ = ["Status", "MASS_RTOL", "check_ot_inputs", "check_like", "check_tau", "check_int", "check_float",
           "input_status", "raise_for_status"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
MASS_RTOL = 1e-4  # allowed relative difference of the row and column masses
_NOT_ERRORS = (int(Status.OPTIMAL), int(Status.LOG_DOMAIN))


def check_tau(tau: float, name: str = "tau") -> None:
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {tau!r}")


def check_int(value, name: str, minimum: int | None = None) -> None:
    """ValueError naming ``name`` unless ``value`` is an integer (not a bool) >= ``minimum`` (None: any): the one
    wording of this check in the code base."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")


def check_float(value, name: str, nonnegative: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (nonnegative and value < 0):
        kind = "a finite number >= 0" if nonnegative else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def check_like(t, name: str, shape, C: torch.Tensor) -> None:
    """``t`` (a warm start or the noise) is a tensor of ``shape`` with C's dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} to match C {tuple(C.shape)}, got {tuple(t.shape)}")
    if t.dtype != C.dtype or t.device != C.device:
        raise ValueError(f"{name} must have C's dtype and device ({C.dtype}, {C.device}), got {t.dtype}, {t.device}")


def check_ot_inputs(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, values: bool = True) -> None:
    """Check a batch of OT problems: C (B, n, m) costs, a (B, n) and b (B, m) marginals.

    Types (float32 / float64 tensors), shapes, dtypes and devices always; with ``values``, also the values
    (finite costs; finite, non-negative marginals, not all zero, with masses equal to ``MASS_RTOL``).

    Raises:
        ValueError naming the argument, and the first offending batch element where there is one.
    """
    for name, t in (("C", C), ("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32 or float64, got {t.dtype}")
    if C.dim() != 3:
        raise ValueError(f"C must have shape (B, n, m), got {tuple(C.shape)}")
    B, n, m = C.shape
    if n == 0 or m == 0:
        raise ValueError(f"C must have n >= 1 rows and m >= 1 columns, got {tuple(C.shape)}")
    if tuple(a.shape) != (B, n):
        raise ValueError(f"a must have shape (B, n) = {(B, n)} to match C {tuple(C.shape)}, got {tuple(a.shape)}")
    if tuple(b.shape) != (B, m):
        raise ValueError(f"b must have shape (B, m) = {(B, m)} to match C {tuple(C.shape)}, got {tuple(b.shape)}")
    if a.dtype != C.dtype or b.dtype != C.dtype:
        raise ValueError(f"C, a and b must share a dtype, got {C.dtype}, {a.dtype}, {b.dtype}")
    if a.device != C.device or b.device != C.device:
        raise ValueError(f"C, a and b must be on one device, got {C.device}, {a.device}, {b.device}")
    if values:
        raise_for_status(input_status(C, a, b), C, a, b)


def input_status(C, a, b, v=None, noise=None, tau=None, mass_rtol: float = MASS_RTOL):
    """Per-element ``Status`` codes (B,) int8 of the value checks, or None when every element passes.

    The rules (and their order) are those of the C++ loops: C finite; a and b finite, >= 0, with positive
    finite sums; the sums within ``mass_rtol``; the warm start v (B, m) neither NaN nor +inf and not -inf
    everywhere; the noise (B, n, m) finite; max |C| / tau at most the dtype's largest value / 64. A first
    pass of a few reductions and one host sync decides whether any element can fail.
    """
    with torch.no_grad():
        sa, sb = a.sum(1, dtype=torch.float64), b.sum(1, dtype=torch.float64)  # (B,)
        big = torch.finfo(C.dtype).max
        cmax = C.abs().amax((1, 2)) if C.numel() else C.new_zeros(C.shape[0])  # (B,), NaN propagates
        checks = [  # (code, (B,) bool: fails), the first failing check of an element names it
            (Status.INVALID_COST, ~(cmax <= big)),
            (Status.INVALID_MARGINAL, ~(torch.isfinite(sa) & torch.isfinite(sb) & (sa > 0) & (sb > 0))
             | (a < 0).any(1) | (b < 0).any(1) | ~torch.isfinite(a).all(1) | ~torch.isfinite(b).all(1)),
            (Status.MASS_MISMATCH, (sa - sb).abs() > mass_rtol * torch.maximum(sa, sb)),
        ]
        if v is not None:
            checks.append((Status.INVALID_WARM_START, (torch.isnan(v) | (v == math.inf)).any(1)
                           | (v == -math.inf).all(1)))
        if noise is not None:
            checks.append((Status.INVALID_NOISE, ~torch.isfinite(noise).flatten(1).all(1)))
        if tau is not None:
            checks.append((Status.COST_OVERFLOW, cmax / tau > big / 64))
        bad = torch.stack([fails for _, fails in checks])  # (checks, B)
        if not bool(bad.any()):
            return None
        status = torch.zeros(C.shape[0], dtype=torch.int8, device=C.device)
        for code, fails in reversed(checks):
            status[fails] = int(code)
        return status.cpu().numpy()


def raise_for_status(status, C, a, b, v=None, tau=None, mass_rtol: float = MASS_RTOL) -> None:
    """ValueError (bad input) or RuntimeError (solver) for the first element whose status is an error.

    Args:
        status: (B,) int8 ``Status`` codes (numpy), or None (nothing to report). OPTIMAL and LOG_DOMAIN
            are not errors.
        C (B, n, m), a (B, n), b (B, m), v (B, m) or None, tau: the inputs, read for element k only, to word
            the message (numpy arrays or tensors).
    """
    if status is None or not status.any():  # all OPTIMAL (0): the common case, one pass
        return
    bad = np.flatnonzero((status != _NOT_ERRORS[0]) & (status != _NOT_ERRORS[1]))
    if not bad.size:
        return
    k = int(bad[0])
    code = Status(int(status[k]))
    if code == Status.INVALID_COST:
        raise ValueError(f"C has NaN or Inf entries (first in batch element {k})")
    ak, bk = (np.asarray(_host(x[k]), dtype=np.float64) for x in (a, b))
    if code == Status.INVALID_MARGINAL:
        for name, w in (("a", ak), ("b", bk)):
            if not np.isfinite(w).all():
                raise ValueError(f"marginal {name} has NaN or Inf entries (batch element {k})")
            if (w < 0).any():
                raise ValueError(f"marginal {name} has negative entries (batch element {k})")
            if w.max() <= 0:
                raise ValueError(f"marginal {name} is all zero (batch element {k})")
        raise ValueError(f"marginals a and b of batch element {k} have a total mass that overflows float64")
    if code == Status.MASS_MISMATCH:
        raise ValueError(
            f"row and column masses differ: a.sum()={ak.sum():.6g} but b.sum()={bk.sum():.6g} (batch element {k}); "
            f"OT needs equal total mass (relative tolerance {mass_rtol:g})")
    if code == Status.INVALID_WARM_START:
        vk = np.asarray(_host(v[k]), dtype=np.float64)
        if np.isnan(vk).any() or (vk == math.inf).any():
            raise ValueError(f"warm-start v has NaN or +Inf entries (batch element {k})")
        raise ValueError(f"warm-start v is -Inf in every column of batch element {k}")
    if code == Status.INVALID_NOISE:
        raise ValueError(f"noise has NaN or Inf entries (batch element {k})")
    if code == Status.COST_OVERFLOW:
        cmax = float(np.abs(_host(C[k])).max())
        raise ValueError(f"C / tau overflows {C.dtype}: max |C| = {cmax:.3g}, tau = {tau!r} (batch element {k})")
    raise RuntimeError(f"emd: the network simplex returned {code.name} for batch element {k}")


def _host(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
