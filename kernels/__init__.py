"""Optimal-transport attention kernels: batched log-domain Sinkhorn, MESH and exact EMD.

Conventions: C (B, n, m) costs with rows = inputs and columns = slots; a (B, n), b (B, m) marginals with
equal total mass; u (B, n), v (B, m) log-domain potentials, P = exp(-C / tau + u[..., None] + v[..., None, :]).

Public API:
    sinkhorn(C, a, b, ...)       -> P, u, v     unrolled log-domain Sinkhorn (SA-SH, Eq. 6-7)
    mesh(C, a, b, ...)           -> C2, u, v    MESH costs (Eq. 9-12); ``kernels.mesh`` is a callable module
    emd(C, a, b)                 -> P           exact OT plans (LEMON network simplex, C++ threads)
    emd_attention(C, a, b, ...)  -> A           SA-EMD attention emd(C) + sinkhorn(C) (Eq. 8)
    BACKENDS, MeshParams                        backend names (``backend=``), MESH's scalars
On CPU tensors these run the fused C++ loops (``kernels.cpp_ot``); on CUDA tensors the Triton kernels
(``kernels.triton_ot``); ``backend="torch"`` the plain PyTorch path (``kernels.torch_ot``).
``kernels.reference`` holds the plain-autograd referees.
"""
from . import mesh
from ._checks import check_int
from .backends import BACKENDS, MeshParams
from .exact import emd, emd_attention
from .ot import sinkhorn
from .reference import entropy_ref, mesh_official_ref, mesh_ref, sinkhorn_ref

__all__ = ["sinkhorn", "mesh", "emd", "emd_attention", "BACKENDS", "MeshParams", "sinkhorn_ref", "mesh_ref",
           "mesh_official_ref", "entropy_ref", "check_int"]
