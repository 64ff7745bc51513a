"""Where a training run executes: the torchrun environment, the device, signals, and glibc's allocator.

Helpers of :func:`slots.train.train` (and of the tasks that start runs): ``dist_info`` reads RANK /
WORLD_SIZE / LOCAL_RANK as torchrun sets them, ``retain_freed_memory`` keeps freed CPU memory in the process
(no page faults on the tensors every step allocates again), ``StopFlag`` turns SIGINT / SIGTERM into a flag
the loop reads between steps.
"""
import atexit
import ctypes
import os
import signal
import threading

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["dist_info", "is_main_process", "unwrap", "init_distributed", "retain_freed_memory", "pick_device",
           "to_device", "StopFlag"]


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment torchrun sets; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the process that writes files."""
    return dist_info()[0] == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def init_distributed(device: torch.device) -> None:
    """The process group (NCCL on CUDA, gloo on CPU), destroyed at exit."""
    if dist.is_initialized():
        return
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    atexit.register(_destroy_distributed)


def _destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


_MALLOC_SETTINGS = {-3: 32 << 20, -1: 1 << 30, -2: 64 << 20}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_malloc_retained = False


def retain_freed_memory() -> bool:
    """Let glibc keep the memory that PyTorch frees on the CPU for reuse, instead of returning it to the OS.

    Every CPU training step allocates and frees the same multi-megabyte tensors (e.g. the (B, n, 128)
    hidden layer of the learned marginals of slot attention). By default glibc serves such blocks from
    fresh mmap'ed pages and unmaps them when freed, so each step pays a page fault per 4 KiB of them:
    about 3 ms of a 20 ms SA-SH step of the random-objects task. The PyTorch CPU tuning guide's cure is a
    caching allocator (jemalloc or tcmalloc through LD_PRELOAD); this is its in-process equivalent for
    glibc: blocks up to 32 MiB come from the heap, the heap is not trimmed below 1 GiB of free space,
    and it grows in 64 MiB steps. The process keeps its peak memory instead of shrinking between steps.

    Called by :func:`train` on CPU; idempotent. Does nothing (and returns False) where the C library is
    not glibc, or where the user set glibc's malloc environment variables (their choice wins).
    """
    global _malloc_retained
    if _malloc_retained:
        return True
    if any(name in os.environ for name in _MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _malloc_retained = all(mallopt(option, value) == 1 for option, value in _MALLOC_SETTINGS.items())
    return _malloc_retained


def pick_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    if spec == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(spec)


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    raise ValueError(f"a batch must be a tensor or a tuple/list/dict of tensors, got {type(batch).__name__}")


class StopFlag:
    """Set by SIGINT/SIGTERM; a second signal restores the default handler's behaviour (immediate exit)."""

    def __init__(self):
        self.set = False
        self._previous = {}

    def _handler(self, signum, frame):
        if self.set:
            self.uninstall()
            signal.raise_signal(signum)
            return
        self.set = True

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
