"""The one training loop that every task uses: a plain, explicit loop you can read top to bottom.

A task builds its model, its training data and two functions, and hands them to :func:`train`::

    seed_everything(seed)                       # identical initial parameters on every run
    model = MyModel(...)
    results = train(TrainConfig(out_dir="runs/x", steps=20_000, batch_size=64), model, train_data,
                    loss_fn, eval_fn, task="my_task", task_config={...})

What the loop does (nanoGPT's ``train.py``, plus what lets a long run survive):

* AdamW (Adam when ``weight_decay`` is 0); the learning rate of :func:`get_lr`: linear warm-up, then
  exponential decay (the schedule of the official slot-attention and MESH code); gradient-norm clipping.
* Every RNG seeded (python, numpy, torch, CUDA). The training data order is a deterministic function of
  (seed, step): epoch e visits the training set in the order ``default_rng([seed, e]).permutation(N)``,
  step s takes the s-th slice of ``global batch`` indices of it, and each process its contiguous share.
* A tqdm progress bar (loss, step rate, ETA); training records every ``log_every`` steps and evaluation
  records every ``eval_every`` steps appended to ``metrics.jsonl`` in the run folder; ``results.json``
  at the end. Evaluation runs under a forked, fixed-seed RNG, so it neither depends on nor disturbs the
  training trajectory (changing ``eval_every`` leaves the trained parameters unchanged).
* Checkpoints (``ckpt.pt``) every ``ckpt_every`` steps, at the end and on SIGINT/SIGTERM (saved, then
  :class:`TrainingInterrupted`, a ``KeyboardInterrupt``, is raised; CLIs exit non-zero). A checkpoint holds
  the model, the optimizer, the step (which fixes the learning rate and the data position), the RNG
  states of every process and the full config. Writes are atomic: a temporary file in the same folder,
  flushed and fsync'ed, then ``os.replace``; a process killed at any moment (kill -9 included) leaves the
  previous checkpoint intact. ``resume=True`` continues from it and gives bit-identical parameters to an
  uninterrupted run with the same number of processes and threads.
* A checkpoint that cannot be read, or that belongs to another task or configuration, is a
  :class:`CheckpointError` (a ``ValueError``) raised before anything in the run folder is written.
* On CPU, :func:`retain_freed_memory` keeps freed memory in the process (no page faults on the tensors
  that every step allocates again).
* Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the model is wrapped in
  DistributedDataParallel (gloo on CPU, NCCL on CUDA) with no change in the task: each process takes its
  share of every global batch, evaluation runs on rank 0 and is broadcast, and only rank 0 writes files.

Interfaces the task provides:
    train_data: ``len(train_data)`` examples; ``train_data[idx]`` with ``idx`` a (b,) int64 tensor returns
        a batch: a tensor, or a tuple / list / dict of tensors, whose first dimension is b.
    loss_fn(model, batch) -> () tensor: the loss to minimize, a mean over the batch (so that DDP's gradient
        averaging equals the gradient of the global batch mean). ``model`` may be the DDP wrapper: call it,
        and use :func:`unwrap` to reach its attributes.
    eval_fn(model) -> dict[str, float]: metrics on held-out data, with the bare model in eval mode.

Known limits: exact resume needs the same world size and thread count (floating-point sums depend on
them); with a different world size the run continues with freshly seeded per-process RNGs and a warning.
Under DDP a stop request (Ctrl-C) is honoured at the next multiple of ``log_every`` steps, where the
processes agree on it. Evaluation under DDP is not sharded.
"""
import atexit
import ctypes
import json
import math
import os
import random
import secrets
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

__all__ = [
    "TrainConfig",
    "train",
    "retain_freed_memory",
    "get_lr",
    "seed_everything",
    "batch_indices",
    "check_resumable",
    "load_checkpoint",
    "dist_info",
    "is_main_process",
    "unwrap",
    "CheckpointError",
    "TrainingInterrupted",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "RESULTS_NAME",
]

CHECKPOINT_NAME = "ckpt.pt"
METRICS_NAME = "metrics.jsonl"
RESULTS_NAME = "results.json"
_FORMAT = "slots.train/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another task or configuration."""


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after SIGINT/SIGTERM once the checkpoint of the current step has been saved."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


# ---------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Options of :func:`train`.

    Attributes:
        out_dir: run folder (created): ``ckpt.pt``, ``metrics.jsonl``, ``results.json``.
        steps: total optimizer steps (a resumed run trains up to this step).
        batch_size: global batch size (all processes together); divisible by the world size.
        lr: peak learning rate.
        warmup_steps: linear warm-up from lr / warmup_steps to lr over this many steps (0: none).
        decay_rate, decay_steps: after warm-up the rate is multiplied by decay_rate ** (step / decay_steps)
            (counted from step 0, as the official slot-attention schedule does); decay_rate 1 disables it.
        weight_decay: decoupled weight decay of AdamW (0: plain Adam).
        betas: Adam's (beta1, beta2).
        grad_clip: clip the global gradient norm to this value (0: no clipping).
        seed: seed of every RNG and of the data order.
        log_every: steps between training records (loss, lr, gradient norm, step rate).
        eval_every: steps between evaluations (0: only at the end).
        ckpt_every: steps between checkpoints (0: only at the end and on interruption).
        resume: continue from ``out_dir/ckpt.pt`` if it exists (else start fresh). Without it, a run folder
            that already holds a checkpoint or results is an error, so nothing is overwritten.
        device: "auto" (CUDA when present, one device per local rank), "cpu", "cuda" or "cuda:<i>".
        num_threads: torch intra-op threads (None: torch's default, or cores / local processes under DDP
            on CPU).
        progress: show the progress bar (rank 0 only).

    ``out_dir``, ``steps``, ``log_every``, ``eval_every``, ``ckpt_every``, ``resume``, ``device``,
    ``num_threads`` and ``progress`` may change between a run and its resumption; the other fields define
    the training trajectory and must match the checkpoint's.
    """

    out_dir: str
    steps: int
    batch_size: int
    lr: float = 4e-4
    warmup_steps: int = 1000
    decay_rate: float = 0.5
    decay_steps: int = 100_000
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    ckpt_every: int = 1000
    resume: bool = False
    device: str = "auto"
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self):
        self.out_dir = str(self.out_dir)
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("decay_steps", self.decay_steps, 1)
        _check_int("seed", self.seed, 0)
        _check_int("log_every", self.log_every, 1)
        _check_int("eval_every", self.eval_every, 0)
        _check_int("ckpt_every", self.ckpt_every, 0)
        _check_float("lr", self.lr, positive=True)
        _check_float("weight_decay", self.weight_decay)
        _check_float("grad_clip", self.grad_clip)
        _check_float("decay_rate", self.decay_rate, positive=True)
        if self.decay_rate > 1:
            raise ValueError(f"decay_rate must be in (0, 1], got {self.decay_rate!r}")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, 1)
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda")
                                                    or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {self.device!r}")
        for name in ("resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


# Fields that may differ between a run and its resumption (they do not change the trajectory).
_RUNTIME_FIELDS = frozenset({"out_dir", "steps", "log_every", "eval_every", "ckpt_every", "resume", "device",
                             "num_threads", "progress"})


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value, positive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def _trajectory(cfg: TrainConfig) -> dict:
    """The config fields that define the training trajectory, JSON-normalized."""
    return _jsonable({f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in _RUNTIME_FIELDS})


def _jsonable(obj) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so that configs compare equal."""
    return json.loads(json.dumps(obj))


# ---------------------------------------------------------------------------------------------------
# Schedule, seeding, data order


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then exponential decay.

    lr(step) = cfg.lr * min(1, (step + 1) / warmup_steps) * decay_rate ** (step / decay_steps).
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    return cfg.lr * warm * cfg.decay_rate ** (step / cfg.decay_steps)


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    _check_int("seed", seed, 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def batch_indices(seed: int, step: int, n_examples: int, batch_size: int) -> np.ndarray:
    """Indices of the global batch of optimizer step ``step``.

    Epoch e = step // (n_examples // batch_size) visits the examples in the order of
    ``np.random.default_rng([seed, e]).permutation(n_examples)``; the last incomplete batch of an epoch is
    dropped.

    Returns:
        (batch_size,) int64 array.
    """
    steps_per_epoch = n_examples // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"the training set ({n_examples} examples) is smaller than one batch ({batch_size})")
    epoch, pos = divmod(step, steps_per_epoch)
    perm = _epoch_permutation(seed, epoch, n_examples)
    return perm[pos * batch_size:(pos + 1) * batch_size]


_PERM_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (seed, epoch, n)
    if key not in _PERM_CACHE:
        _PERM_CACHE.clear()  # one epoch at a time
        _PERM_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERM_CACHE[key]


def _capture_rng(device: torch.device) -> dict:
    """This process's RNG states in a form ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _process_seed(seed: int, rank: int) -> int:
    """Distinct, reproducible seed of each process's training RNGs."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------
# Distributed helpers


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


def _init_distributed(device: torch.device) -> None:
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


def _pick_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    if spec == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(spec)


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    raise ValueError(f"a batch must be a tensor or a tuple/list/dict of tensors, got {type(batch).__name__}")


# ---------------------------------------------------------------------------------------------------
# Checkpoints and run-folder files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through a temporary file in the same folder: flush, fsync, ``os.replace``.

    The temporary file is created like ``open(path, "w")`` would (mode 0o666 less the umask), not with
    mkstemp's 0o600, so the renamed file has the permissions of any other file of the run folder.
    """
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), mode="w")


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`train` (``torch.load`` with ``weights_only=True``).

    Returns:
        dict with keys "format", "task", "task_config", "train_config", "step", "model", "optimizer",
        "rng" (one entry per process), "world_size", "elapsed_s".

    Raises:
        CheckpointError if the file is missing, truncated, corrupt or not a checkpoint of this loop.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from None
    keys = {"format", "task", "task_config", "train_config", "step", "model", "optimizer", "rng", "world_size"}
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT or not keys <= ckpt.keys():
        raise CheckpointError(f"{path} is not a checkpoint of slots.train (format {_FORMAT})")
    return ckpt


def check_resumable(cfg: TrainConfig, task: str, task_config: dict) -> dict | None:
    """Check, without writing anything, that the run folder ``cfg.out_dir`` can be used by this run.

    Returns:
        The checkpoint to resume from (see :func:`load_checkpoint`), or None for a fresh start.

    Raises:
        CheckpointError if ``cfg.resume`` and the folder's checkpoint is unreadable or belongs to another
        task, task configuration or training trajectory; ValueError if not ``cfg.resume`` and the folder
        already holds a checkpoint or results (a fresh run would overwrite them).
    """
    out = Path(cfg.out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    if not cfg.resume:
        existing = [p.name for p in (ckpt_path, out / RESULTS_NAME) if p.exists()]
        if existing:
            raise ValueError(f"run folder {out} already holds {', '.join(existing)}; resume it or choose "
                             "another run folder")
        return None
    if not ckpt_path.exists():
        return None
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["task"] != task:
        raise CheckpointError(f"checkpoint {ckpt_path} belongs to task {ckpt['task']!r}, not {task!r}")
    mine = _jsonable(task_config)
    if ckpt["task_config"] != mine:
        diff = sorted(k for k in set(mine) | set(ckpt["task_config"]) if mine.get(k) != ckpt["task_config"].get(k))
        raise CheckpointError(f"checkpoint {ckpt_path} was written with a different task configuration "
                              f"(differs in: {', '.join(diff)})")
    mine = _trajectory(cfg)
    theirs = {k: v for k, v in ckpt["train_config"].items() if k not in _RUNTIME_FIELDS}
    if theirs != mine:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise CheckpointError(f"checkpoint {ckpt_path} was written with a different training configuration "
                              f"(differs in: {', '.join(diff)})")
    return ckpt


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
    return records


# ---------------------------------------------------------------------------------------------------
# Signals


class _StopFlag:
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


# ---------------------------------------------------------------------------------------------------
# The loop


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all parameters: ~4x faster than the per-tensor loop on CPU for
    slot attention's ~30 small tensors) where this torch build supports it for the parameters."""
    kw = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(model.parameters(), **kw)


def train(cfg: TrainConfig, model: nn.Module, train_data, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
          eval_fn: Callable[[nn.Module], dict] | None = None, *, task: str, task_config: dict,
          label: str = "") -> dict:
    """Train ``model`` for ``cfg.steps`` optimizer steps (see the module docstring).

    Args:
        cfg: :class:`TrainConfig`.
        model: the model, built by the task after :func:`seed_everything`; moved to the device here.
        train_data: ``len()`` examples; ``train_data[idx]`` with idx (b,) int64 returns a batch (a tensor,
            or a tuple / list / dict of tensors with first dimension b).
        loss_fn: ``loss_fn(model, batch) -> () tensor``, a mean over the batch.
        eval_fn: optional ``eval_fn(model) -> {name: float}`` on held-out data.
        task: the task's name, stored in checkpoints (a checkpoint of another task is refused).
        label: prefix of the printed evaluation lines (e.g. the run's name when several runs share a
            terminal).
        task_config: JSON-serializable dict that fixes the task (data, model); stored in checkpoints and
            results, and compared on resume.

    Returns:
        The results dict also written to ``results.json``: "task", "task_config", "train_config", "step",
        "eval" (the last evaluation's metrics, {} without eval_fn), "train_loss" (mean over the last
        logging window), "train_step_ms" (mean wall time of a training step in this process, evaluation and
        checkpoints excluded), "wall_s" (training time summed over resumptions), "world_size", "device".

    Raises:
        ValueError / CheckpointError for bad arguments or an unusable run folder (nothing written);
        TrainingInterrupted after SIGINT/SIGTERM (checkpoint saved).
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(task, str) or not task:
        raise ValueError(f"task must be a non-empty string, got {task!r}")
    try:
        task_config = _jsonable(task_config)
    except TypeError as e:
        raise ValueError(f"task_config must be JSON-serializable: {e}") from None
    if not isinstance(task_config, dict):
        raise ValueError(f"task_config must be a dict, got {type(task_config).__name__}")
    n_examples = len(train_data)

    rank, world, local_rank = dist_info()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the world size {world}")
    batch_indices(cfg.seed, 0, n_examples, cfg.batch_size)  # raises if the data set is smaller than a batch
    device = _pick_device(cfg.device, local_rank)
    ckpt = check_resumable(cfg, task, task_config)  # every process reads it; nothing is written yet
    if world > 1:
        _init_distributed(device)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    elif world > 1 and device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        retain_freed_memory()

    out = Path(cfg.out_dir)
    ckpt_path, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    main = rank == 0
    model.to(device)
    optimizer = _make_optimizer(model, cfg)

    step, elapsed = 0, 0.0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit this model: {e}") from None
        step, elapsed = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
        if ckpt["world_size"] == world:
            _restore_rng(ckpt["rng"][rank], device)
        else:
            warnings.warn(f"checkpoint written by {ckpt['world_size']} processes, resumed with {world}: the "
                          "per-process RNGs are reseeded, so the run is not bit-identical to an uninterrupted one")
            seed_everything(_process_seed(cfg.seed + step, rank))
    else:
        seed_everything(_process_seed(cfg.seed, rank))

    if main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:  # drop records of steps after the checkpoint (a killed run's tail)
            kept = [r for r in _read_records(metrics_path) if r.get("step", 0) <= step]
            _atomic_write(metrics_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in kept), mode="w")
        elif metrics_path.exists():
            metrics_path.unlink()
    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: e.g. a learned slot initialization gets no gradient under implicit
        # differentiation.
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def save(at_step: int) -> None:
        rng = _capture_rng(device)
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if main:
            state = {
                "format": _FORMAT, "task": task, "task_config": task_config,
                "train_config": _jsonable(asdict(cfg)), "step": at_step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": rngs, "world_size": world,
                "elapsed_s": elapsed + (time.perf_counter() - t_start),
            }
            _atomic_write(ckpt_path, lambda f: torch.save(state, f))

    def evaluate() -> dict:
        metrics = {}
        if main and eval_fn is not None:
            model.eval()
            devices = [device] if device.type == "cuda" else []
            state = (random.getstate(), np.random.get_state())
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                seed_everything(_process_seed(cfg.seed, 2**20))
                metrics = {k: float(v) for k, v in eval_fn(model).items()}
            random.setstate(state[0])
            np.random.set_state(state[1])
            model.train()
        if world > 1:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    def log(record: dict) -> None:
        if main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    stop = _StopFlag()
    stop.install()
    shard = cfg.batch_size // world
    bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), disable=not (main and cfg.progress),
               dynamic_ncols=True, desc=task)
    t_start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    window, window_t0, step_time, step_count = 0, time.perf_counter(), 0.0, 0
    last_loss, last_eval = float("nan"), {}
    try:
        model.train()
        while step < cfg.steps:
            t0 = time.perf_counter()
            lr = get_lr(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = batch_indices(cfg.seed, step, n_examples, cfg.batch_size)[rank * shard:(rank + 1) * shard]
            batch = _to_device(train_data[torch.from_numpy(idx)], device)
            loss = loss_fn(net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            else:
                grad_norm = torch.zeros((), device=device)
            optimizer.step()
            step += 1
            loss_sum += loss.detach()
            window += 1
            step_time += time.perf_counter() - t0
            step_count += 1
            bar.update(1)

            stop_now = stop.set
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean_loss = loss_sum / window
                if world > 1:
                    dist.all_reduce(mean_loss)
                    mean_loss /= world
                    flag = torch.tensor(float(stop.set), device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stop_now = bool(flag.item())
                last_loss = float(mean_loss)
                now = time.perf_counter()
                log({"step": step, "split": "train", "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm),
                     "steps_per_s": window / max(now - window_t0, 1e-9), "time_s": elapsed + now - t_start})
                bar.set_postfix(loss=f"{last_loss:.4g}", lr=f"{lr:.2e}")
                loss_sum.zero_()
                window, window_t0 = 0, now
            elif world > 1:
                stop_now = False  # the processes agree on stopping only at logging steps

            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                last_eval = evaluate()
                log({"step": step, "split": "eval", **last_eval})
                if last_eval and main:
                    bar.write(f"{label}step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.steps or stop_now:
                save(step)
            if stop_now:
                raise TrainingInterrupted(step, ckpt_path)
        if step_count == 0:  # resumed at (or past) the final step: evaluate the restored model
            last_eval = evaluate()
    finally:
        bar.close()
        stop.uninstall()

    results = {
        "task": task, "task_config": task_config, "train_config": _jsonable(asdict(cfg)), "step": step,
        "eval": last_eval, "train_loss": last_loss,
        "train_step_ms": 1000 * step_time / step_count if step_count else None,
        "wall_s": elapsed + time.perf_counter() - t_start, "world_size": world, "device": str(device),
    }
    if main:
        _write_json(out / RESULTS_NAME, results)
    return results
