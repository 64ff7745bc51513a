"""The OT backends: one table of the functions each backend provides, and the bundle of MESH's scalars.

Every backend implements one contract (no autograd graph; inputs contiguous, of one dtype and device, with
shapes already checked; C (B, n, m), log_a (B, n), log_b (B, m), -inf at zero marginals):

    sinkhorn_fwd(C, log_a, log_b, v0, tau, n_iters, want_plan) -> us (L, B, n), vs (L + 1, B, m), P | None, status
    sinkhorn_bwd(C, log_a, log_b, tau, us, vs, grad_P, grad_u, grad_v) -> grad_C, grad_log_a, grad_log_b, grad_v0
    mesh_fwd(C, log_a, log_b, noise, params, trace) -> C_T (B, n, m), u (B, n), v (B, m), status, MeshTrace | None
    mesh_bwd(trace, log_a, log_b, params, grad_u, grad_v) -> grad_C, grad_log_a, grad_log_b

``status`` is a (B,) int8 array of ``emd_cpp.Status`` codes from a backend that checks the input values as it
reads them (``validates``), else None (``kernels._checks.input_status`` checks them first). ``grad_P`` None
is the gradient of the summed entropy; ``grad_u`` / ``grad_v`` (or None) seed the final potentials.
``mesh_bwd`` is the warm-start gradient of MESH (see ``kernels.mesh``); it reads the trace that
``mesh_fwd(..., trace=True)`` returns.
"""
import importlib
import importlib.util
from typing import Callable, NamedTuple

import torch

__all__ = ["BACKENDS", "Backend", "MeshParams", "MeshTrace", "get_backend", "pick_backend"]

BACKENDS = ("torch", "cpp", "triton")  # the names ``backend=`` accepts (None: the default for the device)


class Backend(NamedTuple):
    sinkhorn_fwd: Callable
    sinkhorn_bwd: Callable
    mesh_fwd: Callable
    mesh_bwd: Callable
    validates: bool  # checks the input values itself and reports a status per element
    device: str | None  # the only device type it runs on, or None for any


class MeshParams(NamedTuple):
    """MESH's scalars (Eq. 9-12), passed as one bundle from Python to the C++ loops and the Triton kernels."""

    n_mesh_iters: int  # gradient steps T on the costs
    n_sh_iters: int  # Sinkhorn iterations L per step
    lr: float  # step size lambda
    noise_scale: float  # C'_0 = C + noise_scale * noise
    tau: float  # entropic temperature
    reuse_uv: bool  # warm-start each step's Sinkhorn from the previous step's v (App. D)


class MeshTrace(NamedTuple):
    """What MESH's warm-start backward reads: the costs C'_t (T, B, n, m) and warm starts v_t (T, B, m) of
    every step."""

    C: torch.Tensor
    v0: torch.Tensor


_MODULES = {"torch": "kernels.torch_ot", "cpp": "kernels.cpp_ot", "triton": "kernels.triton_ot"}
_TABLE: dict[str, Backend] = {}  # filled on first use, so that Triton is imported only when asked for


def get_backend(name: str) -> Backend:
    """The :class:`Backend` called ``name`` (one of ``BACKENDS``)."""
    if name not in _TABLE:
        _TABLE[name] = importlib.import_module(_MODULES[name]).BACKEND
    return _TABLE[name]


def check_backend(backend) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


def pick_backend(C: torch.Tensor, backend) -> Backend:
    """The backend for costs ``C``: ``backend`` if given, else the C++ loops on CPU, Triton on CUDA (the
    PyTorch path where Triton is not installed)."""
    check_backend(backend)
    if backend is None:
        backend = "cpp" if C.device.type == "cpu" else "triton"
        if backend == "triton" and importlib.util.find_spec("triton") is None:
            backend = "torch"
    be = get_backend(backend)
    if be.device is not None and C.device.type != be.device:
        raise ValueError(f"backend {backend!r} runs on {be.device} tensors, got C on {C.device}")
    return be
