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

The exact EMD part (``solve_batch``, ``cost_bits``, ``cache_stats``, ``SUPPLY_TOTAL``) is compiled only
where CMake found LEMON; ``HAS_EMD`` says whether it was, and :func:`require_emd` raises
:class:`EMDUnavailableError`, saying how to install LEMON and rebuild, where it was not. ``Status`` and
the Sinkhorn / MESH loops are in both builds.
"""
from ._core import HAS_EMD, Status, mesh_bwd, mesh_fwd, sinkhorn_bwd, sinkhorn_fwd

_EMD_NAMES = ["solve_batch", "SUPPLY_TOTAL", "cost_bits", "cache_stats"]
if HAS_EMD:
    from ._core import SUPPLY_TOTAL, cache_stats, cost_bits, solve_batch

__all__ = ["HAS_EMD", "Status", "EMDUnavailableError", "require_emd", "sinkhorn_fwd", "sinkhorn_bwd", "mesh_fwd",
           "mesh_bwd", *(_EMD_NAMES if HAS_EMD else [])]

MISSING_LEMON = (
    "exact EMD (kernels.emd, kernels.emd_attention, the sa-emd variant) is not available: the compiled "
    "extension emd_cpp was built without the LEMON graph library. Install LEMON with "
    "`apt-get install liblemon-dev` (Debian/Ubuntu; `make system-deps` in a checkout) or "
    "`conda install -c conda-forge lemon`, or set LEMON_DIR to the directory holding lemonConfig.cmake, "
    "then rebuild this package: `pip install .` (`pip install -e .` for an editable install). "
    "Sinkhorn, MESH and the sa, sa-sh and sa-mesh variants work without it.")


class EMDUnavailableError(RuntimeError):
    """Exact EMD was asked for, but this build of the extension has no LEMON (``HAS_EMD`` is False)."""


def require_emd() -> None:
    """Return if this build has exact EMD; raise :class:`EMDUnavailableError` with :data:`MISSING_LEMON`
    (how to install LEMON and rebuild) if not."""
    if not HAS_EMD:
        raise EMDUnavailableError(MISSING_LEMON)
