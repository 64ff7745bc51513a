"""The one training loop that every task uses: a plain, explicit loop you can read top to bottom.

A task builds its model, its training data and two functions, and hands them to :func:`train`::

    seed_everything(seed)                       # identical initial parameters on every run
    model = MyModel(...)
    results = train(TrainConfig(out_dir="runs/x", steps=20_000, batch_size=64), model, train_data,
                    loss_fn, eval_fn, task="my_task", task_config={...})

What the loop does (nanoGPT's ``train.py``, plus what lets a long run survive): AdamW with the learning rate
of :func:`get_lr` (linear warm-up, then exponential decay) and gradient-norm clipping; every RNG seeded, and
the data order a function of (seed, step) (:func:`batch_indices`); training and evaluation records appended
to ``metrics.jsonl``, ``results.json`` at the end; evaluation under a forked, fixed-seed RNG, so it does not
disturb the trajectory; checkpoints every ``ckpt_every`` steps, at the end and on SIGINT / SIGTERM (then
:class:`TrainingInterrupted`), written atomically with a SHA-256 digest, the one before kept as
``ckpt.prev.pt`` (``slots.checkpoint``); ``resume=True`` continues from the checkpoint and gives bit-identical
parameters to an uninterrupted run; the run folder is locked for the whole run (a second process on it is
refused); a write that fails (disk full) stops training with :class:`RunFolderWriteError`, the last checkpoint
intact; DistributedDataParallel under ``torchrun`` (``slots.runtime``).

Interfaces the task provides:
    train_data: ``len(train_data)`` examples; ``train_data[idx]`` with ``idx`` a (b,) int64 tensor returns
        a batch: a tensor, or a tuple / list / dict of tensors, whose first dimension is b.
    loss_fn(model, batch) -> () tensor: the loss to minimize, a mean over the batch (so that DDP's gradient
        averaging equals the gradient of the global batch mean). ``model`` may be the DDP wrapper.
    eval_fn(model) -> dict[str, float]: metrics on held-out data, with the bare model in eval mode.

Known limits: bit-identical results (across processes, and after a resume) need the same machine, torch
build, world size and torch thread count (floating-point sums depend on them); with a different world size a
resumed run continues with freshly seeded per-process RNGs and a warning. Under DDP a stop request is
honoured at the next multiple of ``log_every`` steps. Evaluation under DDP is not sharded.
"""
import contextlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from kernels import check_int

from . import tensorboard
from .checkpoint import (CHECKPOINT_NAME, METRICS_NAME, PREVIOUS_NAME, RESULTS_NAME, FORMAT, CheckpointError,
                         CheckpointWarning, LockHeld, RunFolderWriteError, atomic_write, capture_rng, check_resumable,
                         jsonable, keep_copy, load_checkpoint, lock_folder, read_records, restore_rng,
                         save_checkpoint, set_aside, write_json)
from .compiled import compile_model
from .runtime import (StopFlag, dist_info, init_distributed, is_main_process, pick_device, retain_freed_memory,
                      to_device, unwrap)

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
    "CheckpointWarning",
    "LockHeld",
    "RunFolderWriteError",
    "TrainingInterrupted",
    "CHECKPOINT_NAME",
    "PREVIOUS_NAME",
    "METRICS_NAME",
    "RESULTS_NAME",
]



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
        out_dir: run folder (created): ``ckpt.pt``, ``ckpt.prev.pt`` (the checkpoint before), ``metrics.jsonl``,
            ``results.json``, and ``.lock`` while a process trains in it.
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
            that already holds a checkpoint or results is an error, so nothing is overwritten. A ``ckpt.pt``
            that fails its check is an error that names it and says whether ``ckpt.prev.pt`` can be used.
        resume_previous: with ``resume``, continue from ``ckpt.prev.pt`` when ``ckpt.pt`` fails its check (the
            damaged file is renamed ``ckpt.damaged.pt``, nothing is deleted).
        device: "auto" (CUDA when present, one device per local rank), "cpu", "cuda" or "cuda:<i>".
        num_threads: torch intra-op threads (None: torch's default, or cores / local processes under DDP
            on CPU).
        progress: show the progress bar (rank 0 only).
        tensorboard: also write the records as TensorBoard events in ``out_dir`` (``slots.tensorboard``; needs
            the tensorboard package).
        compile: compile the model's forward with inductor before training (``slots.compile_model``): the same
            values up to rounding; the first step (and the first evaluation) include the compilation, which
            ``train_step_ms`` then averages in.

    ``out_dir``, ``steps``, ``log_every``, ``eval_every``, ``ckpt_every``, ``resume``, ``resume_previous``,
    ``device``, ``num_threads``, ``progress``, ``tensorboard`` and ``compile`` may change between a run and its
    resumption (a changed thread count or ``compile`` changes the rounding, so the resumed run is then not
    bit-identical to an uninterrupted one); the other fields define the training trajectory and must match the
    checkpoint's.
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
    resume_previous: bool = False
    device: str = "auto"
    num_threads: int | None = None
    progress: bool = True
    tensorboard: bool = False
    compile: bool = False

    # Fields that may differ between a run and its resumption (they do not change the trajectory).
    RUNTIME_FIELDS: ClassVar[frozenset] = frozenset({"out_dir", "steps", "log_every", "eval_every", "ckpt_every",
                                                     "resume", "resume_previous", "device", "num_threads",
                                                     "progress", "tensorboard", "compile"})

    def trajectory(self) -> dict:
        """The fields that define the training trajectory, JSON-normalized."""
        return jsonable({f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.RUNTIME_FIELDS})

    def __post_init__(self):
        self.out_dir = str(self.out_dir)
        check_int(self.steps, "steps", 1)
        check_int(self.batch_size, "batch_size", 1)
        check_int(self.warmup_steps, "warmup_steps", 0)
        check_int(self.decay_steps, "decay_steps", 1)
        check_int(self.seed, "seed", 0)
        check_int(self.log_every, "log_every", 1)
        check_int(self.eval_every, "eval_every", 0)
        check_int(self.ckpt_every, "ckpt_every", 0)
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
            check_int(self.num_threads, "num_threads", 1)
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda")
                                                    or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {self.device!r}")
        for name in ("resume", "resume_previous", "progress", "tensorboard", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.resume_previous and not self.resume:
            raise ValueError("resume_previous needs resume=True")


def _check_float(name: str, value, positive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


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
    check_int(seed, "seed", 0)
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


def _process_seed(seed: int, rank: int) -> int:
    """Distinct, reproducible seed of each process's training RNGs."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


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
        ValueError / CheckpointError for bad arguments or an unusable run folder, LockHeld if another process
        trains in the run folder (nothing written); TrainingInterrupted after SIGINT/SIGTERM (checkpoint
        saved); RunFolderWriteError if a checkpoint, the metrics or the results cannot be written (the last
        checkpoint is intact).
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(task, str) or not task:
        raise ValueError(f"task must be a non-empty string, got {task!r}")
    try:
        task_config = jsonable(task_config)
    except TypeError as e:
        raise ValueError(f"task_config must be JSON-serializable: {e}") from None
    if not isinstance(task_config, dict):
        raise ValueError(f"task_config must be a dict, got {type(task_config).__name__}")
    n_examples = len(train_data)

    rank, world, local_rank = dist_info()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the world size {world}")
    batch_indices(cfg.seed, 0, n_examples, cfg.batch_size)  # raises if the data set is smaller than a batch
    device = pick_device(cfg.device, local_rank)
    # rank 0, the process that writes the run folder, holds its lock from before the folder is read until
    # the results are written
    with lock_folder(cfg.out_dir) if rank == 0 else contextlib.nullcontext():
        return _train_locked(cfg, model, train_data, loss_fn, eval_fn, task, task_config, label, device)


def _train_locked(cfg: TrainConfig, model: nn.Module, train_data, loss_fn, eval_fn, task: str, task_config: dict,
                  label: str, device: torch.device) -> dict:
    """The body of :func:`train` once its arguments are checked and (on rank 0) the run folder is locked."""
    n_examples = len(train_data)
    rank, world, _ = dist_info()
    found = check_resumable(cfg, task, task_config)  # every process reads it; nothing is written yet
    ckpt, ckpt_from = found if found is not None else (None, None)
    if cfg.tensorboard and rank == 0:
        tensorboard.require()
    if world > 1:
        init_distributed(device)
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
    saved = None  # step of the newest checkpoint on disk that passes its check

    @contextlib.contextmanager
    def writing(path: Path):
        """Turn a failed write of ``path`` into a RunFolderWriteError that says what is left on disk."""
        try:
            yield
        except RunFolderWriteError:
            raise
        except OSError as e:
            left = (f"the last checkpoint, {ckpt_path} (step {saved}), is intact: fix the cause and rerun with "
                    "--resume" if saved is not None else "no checkpoint had been written")
            raise RunFolderWriteError(f"cannot write {path} at step {step}: {e}; training stopped, {left}") from e
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
        saved = step
        if ckpt["world_size"] == world:
            restore_rng(ckpt["rng"][rank], device)
        else:
            warnings.warn(f"checkpoint written by {ckpt['world_size']} processes, resumed with {world}: the "
                          "per-process RNGs are reseeded, so the run is not bit-identical to an uninterrupted one")
            seed_everything(_process_seed(cfg.seed + step, rank))
    else:
        seed_everything(_process_seed(cfg.seed, rank))

    if main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt_from is not None and ckpt_from.name == PREVIOUS_NAME:
            # ckpt.pt failed its check: it is set aside, and the checkpoint resumed from becomes the newest, so
            # that the next checkpoint does not keep the damaged file as the previous one
            with writing(ckpt_path):
                damaged = set_aside(ckpt_path)
                keep_copy(ckpt_from, ckpt_path)
            note = f"; the damaged file is kept as {damaged}" if damaged is not None else ""
            warnings.warn(f"{ckpt_path} fails its check or is missing: resuming from {ckpt_from} (step {step}){note}",
                          CheckpointWarning, stacklevel=3)
        with writing(metrics_path):
            if ckpt is not None:  # drop records of steps after the checkpoint (a killed run's tail)
                kept = [r for r in read_records(metrics_path) if r.get("step", 0) <= step]
                atomic_write(metrics_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in kept), mode="w")
            elif metrics_path.exists():
                metrics_path.unlink()
    board = tensorboard.RunBoard(out, read_records(metrics_path)) if cfg.tensorboard and main else None
    if cfg.compile:
        compile_model(model)  # in place, before DDP wraps it: the state_dict keys stay those of the eager model
    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: e.g. a learned slot initialization gets no gradient under implicit
        # differentiation.
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    t_start = time.perf_counter()  # this process's share of wall_s (added to a resumed run's elapsed_s)

    def save(at_step: int) -> None:
        nonlocal saved
        rng = capture_rng(device)
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if main:
            state = {
                "format": FORMAT, "task": task, "task_config": task_config,
                "train_config": jsonable(asdict(cfg)), "step": at_step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": rngs, "world_size": world,
                "elapsed_s": elapsed + (time.perf_counter() - t_start),
            }
            with writing(ckpt_path):
                save_checkpoint(ckpt_path, state, previous=out / PREVIOUS_NAME)
        saved = at_step

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
            with writing(metrics_path), open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if board is not None:
                board.add_record(record)

    stop = StopFlag()
    stop.install()
    shard = cfg.batch_size // world
    bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), disable=not (main and cfg.progress),
               dynamic_ncols=True, desc=task)
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
            batch = to_device(train_data[torch.from_numpy(idx)], device)
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
        if board is not None:
            board.close()

    results = {
        "task": task, "task_config": task_config, "train_config": jsonable(asdict(cfg)), "step": step,
        "eval": last_eval, "train_loss": last_loss,
        "train_step_ms": 1000 * step_time / step_count if step_count else None,
        "wall_s": elapsed + time.perf_counter() - t_start, "world_size": world, "device": str(device),
    }
    if main:
        with writing(out / RESULTS_NAME):
            write_json(out / RESULTS_NAME, results)
    return results
