"""Type stub for the compiled module emd_cpp._core (sources: module.cpp, sinkhorn.cpp, and with LEMON batch.cpp,
transport.cpp)."""
from typing import ClassVar

import numpy as np
import numpy.typing as npt

class Status:
    """Outcome of one problem of a batch, EMD or Sinkhorn / MESH (a pybind11 enum; ``Status(code)`` maps a code)."""

    OPTIMAL: ClassVar[Status]  # 0: solved
    INFEASIBLE: ClassVar[Status]  # 1
    UNBOUNDED: ClassVar[Status]  # 2
    INVALID_COST: ClassVar[Status]  # 3: a cost is NaN or Inf
    INVALID_MARGINAL: ClassVar[Status]  # 4: negative/non-finite entry, or total 0 or overflowing
    MASS_MISMATCH: ClassVar[Status]  # 5: |sum a - sum b| > mass_rtol * max(sum a, sum b)
    NOT_SOLVED: ClassVar[Status]  # 6: the batch was interrupted first
    INVALID_WARM_START: ClassVar[Status]  # 7: v is NaN or +Inf somewhere, or -Inf everywhere
    INVALID_NOISE: ClassVar[Status]  # 8: MESH's noise is NaN or Inf somewhere
    COST_OVERFLOW: ClassVar[Status]  # 9: max |C| / tau above the dtype's largest value / 64
    LOG_DOMAIN: ClassVar[Status]  # 10: valid, to be redone in the log domain (not an error)
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

HAS_EMD: bool
"""Whether this build has the exact EMD part (LEMON was found): solve_batch, cost_bits, cache_stats, SUPPLY_TOTAL."""

# Exact EMD (batch.cpp, transport.cpp): present only where HAS_EMD is True.

SUPPLY_TOTAL: int
"""Both marginals are scaled to integers summing to exactly this (2**52)."""

def cost_bits(nodes: int) -> int:
    """Bits K of the integer cost grid for n + m = ``nodes``: costs are rounded to (max C - min C) / 2**K."""

def cache_stats() -> tuple[int, int, int]:
    """(graphs_built, solvers_built, problems_solved) since import."""

def solve_batch(
    C: npt.ArrayLike, a: npt.ArrayLike, b: npt.ArrayLike, num_threads: int, mass_rtol: float = 1e-4
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    """Solve B problems: C (B, n, m), a (B, n), b (B, m) -> (P (B, n, m) float64, status (B,) int8).

    Runs on ``num_threads`` threads with the GIL released; a signal (Ctrl-C) stops the batch after the
    problems being solved and raises. Each problem is checked before it is solved; an invalid one
    gets INVALID_COST, INVALID_MARGINAL or MASS_MISMATCH and a zero plan.
    """

# Fused CPU Sinkhorn / MESH loops (sinkhorn.cpp); the public API is kernels.sinkhorn / kernels.mesh.
# Arrays are C-contiguous float32 or float64 (all of one dtype); status is int8 Status codes per batch element.
# params is a kernels.MeshParams (any object with its fields).

def sinkhorn_fwd(
    C: npt.ArrayLike, log_a: npt.ArrayLike, log_b: npt.ArrayLike, v0: npt.ArrayLike, tau: float, n_iters: int,
    threads: int, want_plan: bool = False, mass_rtol: float = 1e-4,
) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray | None, npt.NDArray[np.int8]]:
    """(us (L, B, n), vs (L + 1, B, m), P (B, n, m) or None, status (B,))."""

def sinkhorn_bwd(
    C: npt.ArrayLike, log_a: npt.ArrayLike, log_b: npt.ArrayLike, us: npt.ArrayLike, vs: npt.ArrayLike,
    grad_P: npt.ArrayLike | None, grad_u: npt.ArrayLike | None, grad_v: npt.ArrayLike | None, tau: float,
    threads: int,
) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray, npt.NDArray, npt.NDArray[np.int8]]:
    """(grad_C (B, n, m), grad_log_a (B, n), grad_log_b (B, m), grad_v0 (B, m), status (B,))."""

def mesh_fwd(
    C: npt.ArrayLike, noise: npt.ArrayLike, log_a: npt.ArrayLike, log_b: npt.ArrayLike, params: object, trace: bool,
    threads: int, mass_rtol: float = 1e-4,
) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray, npt.NDArray[np.int8], tuple[npt.NDArray, npt.NDArray] | None]:
    """(C_T (B, n, m), u (B, n), v (B, m), status (B,), (C' (T, B, n, m), warm starts (T, B, m)) or None)."""

def mesh_bwd(
    trace_C: npt.ArrayLike, trace_v0: npt.ArrayLike, log_a: npt.ArrayLike, log_b: npt.ArrayLike,
    grad_u: npt.ArrayLike, grad_v: npt.ArrayLike, params: object, threads: int,
) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray, npt.NDArray[np.int8]]:
    """(grad_C (B, n, m), grad_log_a (B, n), grad_log_b (B, m), status (B,)): MESH's warm-start gradient."""
