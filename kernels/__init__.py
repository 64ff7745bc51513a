"""Optimal-transport attention kernels: batched log-domain Sinkhorn, MESH and exact EMD.

Conventions: C (B, n, m) costs with rows = inputs and columns = slots; a (B, n), b (B, m) marginals with
equal total mass; u (B, n), v (B, m) log-domain potentials, P = exp(-C / tau + u[..., None] + v[..., None, :]).
"""
from .reference import entropy_ref, mesh_ref, sinkhorn_ref

__all__ = ["sinkhorn_ref", "mesh_ref", "entropy_ref"]
