"""Validation of optimal-transport inputs at the public boundary.

Every public OT function (``sinkhorn``, ``mesh``, ``emd``, ``emd_attention``) calls
:func:`check_ot_inputs` before touching a kernel, so that bad input is a ``ValueError`` that names the
problem (and the batch element) instead of a NaN or a crash deep inside a kernel.
"""
import math

import torch

_FLOAT_DTYPES = (torch.float32, torch.float64)
MASS_RTOL = 1e-4  # allowed relative difference of the row and column masses


def _first_bad(mask: torch.Tensor) -> int:
    """Index of the first batch element where ``mask`` (B,) is True."""
    return int(mask.nonzero()[0, 0])


def _values_ok(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mass_rtol: float) -> bool:
    """Fast path of the value checks: a few reductions and one host sync.

    NaN and Inf propagate into the sums and minima, so True means every check below passes; False
    means at least one may fail (or a sum of finite values overflowed) and the detailed checks run.
    """
    sa, sb = a.sum(1), b.sum(1)  # (B,)
    ok = torch.isfinite(C.sum()) & torch.isfinite(sa).all() & torch.isfinite(sb).all()
    ok &= (a.amin() >= 0) & (b.amin() >= 0) & (sa > 0).all() & (sb > 0).all()
    ok &= ((sa - sb).abs() <= mass_rtol * torch.maximum(sa, sb)).all()
    return bool(ok)


def check_tau(tau: float, name: str = "tau") -> None:
    if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {tau!r}")


def check_ot_inputs(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mass_rtol: float = MASS_RTOL,
                    values: bool = True) -> None:
    """Check a batch of OT problems.

    Args:
        C: (B, n, m) costs; rows are inputs, columns are slots. float32 or float64, finite.
        a: (B, n) row marginals, >= 0, finite, not all zero.
        b: (B, m) column marginals, >= 0, finite, not all zero.
        mass_rtol: allowed relative difference between ``a[k].sum()`` and ``b[k].sum()``.
        values: also check the values (False: types and shapes only, for a kernel that checks the
            values as it reads them and calls this again with True when one fails).

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
    if B == 0 or not values:
        return
    with torch.no_grad():
        if _values_ok(C, a, b, mass_rtol):
            return
        # something failed (or a sum overflowed): find the problem and name it
        bad = ~torch.isfinite(C).flatten(1).all(1)
        if bad.any():
            raise ValueError(f"C has NaN or Inf entries (first in batch element {_first_bad(bad)})")
        for name, t in (("a", a), ("b", b)):
            bad = ~torch.isfinite(t).all(1)
            if bad.any():
                raise ValueError(f"marginal {name} has NaN or Inf entries (batch element {_first_bad(bad)})")
            bad = (t < 0).any(1)
            if bad.any():
                raise ValueError(f"marginal {name} has negative entries (batch element {_first_bad(bad)})")
            bad = t.sum(1) <= 0
            if bad.any():
                raise ValueError(f"marginal {name} is all zero (batch element {_first_bad(bad)})")
        sa, sb = a.sum(1), b.sum(1)
        bad = (sa - sb).abs() > mass_rtol * torch.maximum(sa, sb)
        if bad.any():
            k = _first_bad(bad)
            raise ValueError(
                f"row and column masses differ: a.sum()={float(sa[k]):.6g} but b.sum()={float(sb[k]):.6g} "
                f"(batch element {k}); OT needs equal total mass"
            )
