"""The project's C++ extension, compiled with pybind11: batched exact optimal transport (EMD) on LEMON's
network simplex, and fused CPU loops for Sinkhorn and MESH (``sinkhorn_fwd``, ``sinkhorn_bwd``,
``mesh_fwd``, ``mesh_bwd``; the public API for those is ``kernels.sinkhorn`` / ``kernels.mesh``, whose CPU
backend ``kernels.cpp_ot`` calls them). ``Status`` is the per-element outcome of both.

This package only re-exports the compiled ``_core`` module. The public API is :func:`kernels.emd`
(and :func:`kernels.emd_attention`, SA-EMD's Eq. 8): it checks inputs, converts numpy arrays or
torch tensors, and turns a non-``OPTIMAL`` :class:`Status` into an error naming the batch element
(``ValueError`` for bad input, ``RuntimeError`` for a solver failure). How float inputs are made
exact for the integer network simplex, and the resulting error bound, is described in
:mod:`kernels.exact` and ``transport.hpp``.
"""
from ._core import (SUPPLY_TOTAL, Status, cache_stats, cost_bits, mesh_bwd, mesh_fwd, sinkhorn_bwd, sinkhorn_fwd,
                    solve_batch)

__all__ = ["solve_batch", "Status", "SUPPLY_TOTAL", "cost_bits", "cache_stats", "sinkhorn_fwd", "sinkhorn_bwd",
           "mesh_fwd", "mesh_bwd"]
