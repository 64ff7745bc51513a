"""Checkpoints and run-folder files of :func:`slots.train.train`: atomic writes, reading and checking a
checkpoint before a run resumes from it, and the RNG states a checkpoint holds.

A checkpoint (``ckpt.pt``, format ``slots.train/1``) holds the model, the optimizer, the step, the RNG states of
every process, the world size and the full config. Every file is written by :func:`atomic_write` (a temporary
file in the same folder, flushed and fsync'ed, then ``os.replace``), so a process killed at any moment (kill -9
included) leaves the previous file intact.
"""
import json
import os
import random
import secrets
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "RESULTS_NAME", "CheckpointError", "atomic_write", "write_json",
           "load_checkpoint", "check_resumable", "read_records", "capture_rng", "restore_rng"]

CHECKPOINT_NAME = "ckpt.pt"
METRICS_NAME = "metrics.jsonl"
RESULTS_NAME = "results.json"
FORMAT = "slots.train/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another task or configuration."""


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


def atomic_write(path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` to a temporary file in the same folder: flush, fsync, ``os.replace``.

    The temporary file is created like ``open(path, "w")`` would (mode 0o666 less the umask), not with
    mkstemp's 0o600, so the renamed file has the permissions of any other file the user creates. A write
    that fails removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
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


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), mode="w")


def jsonable(obj) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so that configs compare equal."""
    return json.loads(json.dumps(obj))


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
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or not keys <= ckpt.keys():
        raise CheckpointError(f"{path} is not a checkpoint of slots.train (format {FORMAT})")
    return ckpt


def check_resumable(cfg, task: str, task_config: dict) -> dict | None:
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
    mine = jsonable(task_config)
    if ckpt["task_config"] != mine:
        diff = sorted(k for k in set(mine) | set(ckpt["task_config"]) if mine.get(k) != ckpt["task_config"].get(k))
        raise CheckpointError(f"checkpoint {ckpt_path} was written with a different task configuration "
                              f"(differs in: {', '.join(diff)})")
    mine = cfg.trajectory()
    theirs = {k: v for k, v in ckpt["train_config"].items() if k not in cfg.RUNTIME_FIELDS}
    if theirs != mine:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise CheckpointError(f"checkpoint {ckpt_path} was written with a different training configuration "
                              f"(differs in: {', '.join(diff)})")
    return ckpt


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl (a line cut short by a kill is skipped)."""
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


def capture_rng(device: torch.device) -> dict:
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


def restore_rng(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
