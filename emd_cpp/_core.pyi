"""Type stub for the compiled module emd_cpp._core (sources: module.cpp, batch.cpp, transport.cpp, sinkhorn.cpp)."""
from typing import ClassVar

import numpy as np
import numpy.typing as npt

class Status:
    """Outcome of one problem in a batch (a pybind11 enum; ``Status(code)`` maps a status code)."""

    OPTIMAL: ClassVar[Status]  # 0
    INFEASIBLE: ClassVar[Status]  # 1
    UNBOUNDED: ClassVar[Status]  # 2
    INVALID_COST: ClassVar[Status]  # 3: a cost is NaN or Inf
    INVALID_MARGINAL: ClassVar[Status]  # 4: negative/non-finite entry, or total 0 or overflowing
    MASS_MISMATCH: ClassVar[Status]  # 5: |sum a - sum b| > mass_rtol * max(sum a, sum b)
    NOT_SOLVED: ClassVar[Status]  # 6: the batch was interrupted first
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

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
# Arrays are C-contiguous float32 or float64 (all of one dtype); ok / valid are uint8 per batch element.

def sinkhorn_fwd(
    C: npt.ArrayLike, log_a: npt.ArrayLike, log_b: npt.ArrayLike, v0: npt.ArrayLike, tau: float, n_iters: int,
    threads: int, want_plan: bool = False, mass_rtol: float = 1e-4,
) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray | None, npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """(us (L, B, n), vs (L + 1, B, m), P (B, n, m) or None, ok (B,), valid (B,))."""

def sinkhorn_bwd(
    C: npt.ArrayLike, log_a: npt.ArrayLike, log_b: npt.ArrayLike, us: npt.ArrayLike, vs: npt.ArrayLike,
    grad_P: npt.ArrayLike | None, tau: float, threads: int,
) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray, npt.NDArray, npt.NDArray[np.uint8]]:
    """(grad_C (B, n, m), grad_log_a (B, n), grad_log_b (B, m), grad_v0 (B, m), ok (B,))."""

def mesh_fwd(
    C: npt.ArrayLike, noise: npt.ArrayLike, log_a: npt.ArrayLike, log_b: npt.ArrayLike, tau: float,
    noise_scale: float, n_mesh_iters: int, n_iters: int, lr: float, reuse_uv: bool, threads: int,
    mass_rtol: float = 1e-4,
) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray, npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """(C_T (B, n, m), u (B, n), v (B, m), ok (B,), valid (B,))."""
