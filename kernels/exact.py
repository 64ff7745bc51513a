"""Exact (unregularized) optimal transport for a batch, and SA-EMD's attention (Sec. 3, Eq. 8).

``emd`` solves each problem of a batch exactly with LEMON's network simplex (the compiled
``emd_cpp`` extension) on a pool of threads, with the GIL released. The bipartite graph and the
solver's arrays are built once per (n, m) and per thread and reused across the batch and across
calls; only costs and supplies change (the smaller side supplies and the pivot rule is chosen by
shape, see ``emd_cpp/transport.hpp``). ``emd_attention`` is SA-EMD's attention matrix,
``A = emd(C) + sinkhorn(C)`` (Eq. 8), with the Sinkhorn gradient standing in for the EMD gradient.

Exactness (decision: integer scaling with an exact rounding repair). The network simplex runs on
64-bit integer supplies and costs, so every pivot is exact arithmetic and it stops at an optimal
basis of the integer problem (no tolerances, no iteration cap). The float inputs are mapped to it by:

- supplies: ``a`` and ``b`` are each scaled to integers summing to exactly ``S = 2**52`` (rounding,
  then spreading the leftover units, at most len + 1, one per entry); the plan is
  ``flow / S * M`` with ``M = (a.sum() + b.sum()) / 2``. So each marginal is met after rescaling it
  to the common mass M (rows sum to ``a_i * M / a.sum()``, columns to ``b_j * M / b.sum()``), to
  within ``2 * (len + 1) * 2**-52 * M`` in L1, plus float64 rounding of the plan entries;
- costs: shifted by ``min C`` and rounded to a grid of step ``h = (max C - min C) * 2**-K``,
  ``K = min(52, 60 - ceil(log2(n + m)))`` (K = 47 at n + m = 4107), which keeps every potential and
  reduced cost inside int64 (see ``emd_cpp/transport.hpp``). Each cost moves by at most ``h / 2``.

Error bound: the plan P is exactly optimal for the rounded problem, so its cost under the true costs
is within ``h * M`` of the optimum over plans with the same (rescaled, rounded) marginals; moving the
marginals back to the given ones changes that optimum by at most
``(max C - min C) * (n + m + 2) * 2**-51 * M``. In total
``<C, P> - OPT <= (max C - min C) * M * (2**-K + (n + m + 2) * 2**-51)``, about ``2e-12`` of
``(max C - min C) * M`` at (n, m) = (4096, 11). float32 inputs are solved in float64 and the plan is
rounded to float32 at the end.

Validation: types, shapes, dtypes and devices are checked in Python; the values are checked by the solver
threads as they read each problem (a status per element), and ``kernels._checks.raise_for_status`` names the
first bad element with the messages of every OT function.

Threads and interrupts: the thread that called ``emd`` releases the GIL and solves problems too,
beside ``num_threads - 1`` helper threads; about every 20 ms (between its problems, then while it
waits for the helpers) it takes the GIL back to let Python handle signals. Ctrl-C stops the batch
once the problems already being solved (one per thread) are done and raises ``KeyboardInterrupt``.

Without LEMON (``emd_cpp.HAS_EMD`` False: the extension was built without it) both functions raise
``emd_cpp.EMDUnavailableError``, which says how to install LEMON and rebuild.

Known limits: the plan has no gradient (it is piecewise constant in C); a solver needs about 60
bytes per arc (n * m) and each thread has its own (idle ones are cached up to 2**25 arcs in all, for
the 8 most recent shapes); LEMON's int arc ids limit n * m + 2 (n + m) to below 2**31; CUDA tensors
are solved on the CPU; Ctrl-C waits for the problems being solved, so one huge problem is not
interruptible. Among several optimal plans (ties), the one returned is the network simplex's
deterministic choice, the same for any number of threads.
"""
import numbers
import os

import numpy as np
import torch

import emd_cpp

from ._checks import MASS_RTOL, check_int, check_ot_inputs, check_tau, raise_for_status
from .ot import sinkhorn

__all__ = ["emd", "emd_attention"]

_NUMPY_FLOATS = (np.float32, np.float64)


def _default_threads() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _check_num_threads(num_threads) -> int:
    if num_threads is None:
        return _default_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral) or num_threads < 1:
        raise ValueError(f"num_threads must be None or an integer >= 1, got {num_threads!r}")
    return int(num_threads)


def _as_tensors(C, a, b):
    """(C, a, b) as torch tensors sharing memory with numpy inputs where possible."""
    if all(isinstance(x, np.ndarray) for x in (C, a, b)):
        out = []
        for name, x in (("C", C), ("a", a), ("b", b)):
            if x.dtype.type not in _NUMPY_FLOATS:
                raise ValueError(f"{name} must be float32 or float64, got {x.dtype}")
            # torch.from_numpy needs native byte order and a writeable array; copies only if not.
            out.append(torch.from_numpy(np.require(x, dtype=x.dtype.newbyteorder("="), requirements=["W"])))
        return out
    if not all(isinstance(x, torch.Tensor) for x in (C, a, b)):
        kinds = ", ".join(type(x).__name__ for x in (C, a, b))
        raise ValueError(f"C, a and b must all be numpy arrays or all torch tensors, got {kinds}")
    return C, a, b


def _check_metadata(C, a, b) -> None:
    """check_ot_inputs' rules and messages for types, shapes, dtypes and devices, without reading
    the data: it sees the first zero batch elements (the values are checked by the solver)."""
    if C.dim() == 3 and a.dim() == 2 and b.dim() == 2 and a.shape[0] == b.shape[0] == C.shape[0]:
        check_ot_inputs(C[:0], a[:0], b[:0])
    else:
        check_ot_inputs(C, a, b)  # fails on the shapes before it reads any value


def _to_solver(x) -> np.ndarray:
    """C-contiguous float64 numpy copy of x (no copy if it already is one), without torch kernels."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        x = (x if x.device.type == "cpu" else x.cpu()).numpy()
    return np.ascontiguousarray(x, dtype=np.float64)


def emd(C, a, b, num_threads=None):
    """Exact optimal transport plans for a batch of problems.

    Args:
        C: (B, n, m) costs, rows are inputs, columns are slots; float32 or float64, finite.
        a: (B, n) row marginals, b: (B, m) column marginals; >= 0, not all zero,
            ``a.sum(1)`` equal to ``b.sum(1)`` within relative 1e-4.
            All three numpy arrays or all three torch tensors (CPU or CUDA, one dtype, one device).
        num_threads: worker threads; None uses every core this process may run on.

    Returns:
        P (B, n, m) the optimal plans, same type, dtype and device as ``C``, without gradient:
        P >= 0, rows sum to ``a * M / a.sum(1)`` and columns to ``b * M / b.sum(1)`` with
        ``M = (a.sum(1) + b.sum(1)) / 2`` (so exactly to ``a`` and ``b`` when the masses agree), and
        ``(C * P).sum((1, 2))`` is the optimal cost within the bound in the module docstring.

    Raises:
        ValueError naming the problem for wrong types, shapes, dtypes or devices, or a bad
        ``num_threads``; ValueError naming the first bad batch element for NaN/Inf costs,
        negative, non-finite or all-zero marginals, or masses that differ by more than relative 1e-4
        (the solver checks each element before solving it, so the data is read once);
        RuntimeError naming the batch element if the solver does not report an optimum;
        KeyboardInterrupt if interrupted; emd_cpp.EMDUnavailableError (a RuntimeError) if the extension
        was built without LEMON.
    """
    emd_cpp.require_emd()
    Ct, at, bt = _as_tensors(C, a, b)
    _check_metadata(Ct, at, bt)
    threads = _check_num_threads(num_threads)
    a64, b64 = _to_solver(a), _to_solver(b)
    P, status = emd_cpp.solve_batch(_to_solver(C), a64, b64, threads, MASS_RTOL)
    raise_for_status(status, Ct, a64, b64)
    if isinstance(C, np.ndarray):
        return P.astype(C.dtype.newbyteorder("="), copy=False)
    P = torch.from_numpy(P.astype(np.float32, copy=False) if Ct.dtype == torch.float32 else P)
    return P if Ct.device.type == "cpu" else P.to(Ct.device)


def emd_attention(C, a, b, n_sh_iters=5, tau=1.0, *, num_threads=None, backend=None):
    """SA-EMD's attention (Eq. 8): ``A = emd(C) + sinkhorn(C)`` with a Sinkhorn surrogate gradient.

    The forward value is exactly ``emd(C, a, b) + sinkhorn(C, a, b, n_sh_iters, tau)[0]``. The EMD
    term is piecewise constant, so its gradient is replaced by the Sinkhorn gradient on the same
    inputs (Sec. 3: "the gradient of the Sinkhorn operator is also a good descent direction for
    EMD"). What flows backward: for an incoming gradient G of A, C, a and b each receive
    ``2 * (Sinkhorn's vector-Jacobian product with G)``, i.e. twice what ``sinkhorn(C, a, b,
    n_sh_iters, tau)[0]`` alone would pass (once for its own term, once as the EMD term's
    surrogate). Nothing else reaches C, a or b.

    Args:
        C: (B, n, m) torch costs, rows are inputs, columns are slots; float32 or float64, finite.
        a: (B, n) row marginals, b: (B, m) column marginals (torch); >= 0, equal masses.
        n_sh_iters: Sinkhorn iterations, >= 1.
        tau: Sinkhorn temperature, > 0.
        num_threads: threads for the EMD term (see :func:`emd`).
        backend: backend of the Sinkhorn term (see ``kernels.sinkhorn``).

    Returns:
        A (B, n, m), differentiable in C, a and b as described; its rows sum to about ``2 * a`` and
        its columns to ``2 * b``.

    Raises:
        ValueError naming the problem for bad inputs (as :func:`emd` and ``kernels.sinkhorn``);
        emd_cpp.EMDUnavailableError if the extension was built without LEMON.
    """
    emd_cpp.require_emd()
    check_int(n_sh_iters, "n_sh_iters", 1)
    check_ot_inputs(C, a, b, values=False)
    check_tau(tau)
    # each kernel checks the values as it reads them (the EMD solver first: its messages are those of sinkhorn)
    P_emd = emd(C.detach(), a.detach(), b.detach(), num_threads=num_threads)  # (B, n, m), constant
    P_sh, _, _ = sinkhorn(C, a, b, n_sh_iters, tau, backend=backend)  # (B, n, m), differentiable in C, a, b
    # P_sh - P_sh.detach() is exactly zero but carries P_sh's gradient: the EMD term's surrogate.
    return P_emd + P_sh + (P_sh - P_sh.detach())
