"""Checkpoints and run-folder files of :func:`slots.train.train`: atomic writes, the run-folder lock,
checksummed checkpoints, reading and checking a checkpoint before a run resumes from it, and the RNG states a
checkpoint holds.

A checkpoint (``ckpt.pt``, format ``slots.train/1``) holds the model, the optimizer, the step, the RNG states of
every process, the world size and the full config. What protects a run folder:

- Every file is written by :func:`atomic_write` (a temporary file in the same folder, flushed and fsync'ed, then
  ``os.replace``), so a process killed at any moment (kill -9 included), or a write that fails (disk full),
  leaves the previous file intact.
- A checkpoint file is a header line ``slots.train checkpoint sha256:<64 hex digits>\n`` followed by the
  bytes of ``torch.save``; :func:`load_checkpoint` refuses a file whose bytes do not match the digest
  (``torch.load`` alone does not check the zip entries' CRCs: a damaged tensor would load as wrong weights).
  A file written before checkpoints carried a digest (a bare ``torch.save`` zip) still loads, with a
  :class:`CheckpointWarning` that it is unverified.
- :func:`save_checkpoint` keeps the checkpoint it replaces as ``ckpt.prev.pt`` (a hard link, or a copy where
  links are not supported), so a newest checkpoint that fails its check leaves one to resume from.
- :func:`lock_folder`: a training process holds an exclusive ``flock`` on ``<folder>/.lock`` (which holds its
  process id); a second process on the folder is refused. The kernel drops the lock when its process dies, so
  a killed run leaves no stale lock.

Known limits: the lock is advisory and POSIX only (``fcntl``); it protects against our own processes, not
against other programs writing into the folder. ``flock`` on network file systems is only as good as the
server's lock support.
"""
import contextlib
import fcntl
import hashlib
import io
import json
import os
import random
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAME", "PREVIOUS_NAME", "METRICS_NAME", "RESULTS_NAME", "LOCK_NAME", "CheckpointError",
           "CheckpointWarning", "LockHeld", "RunFolderWriteError", "atomic_write", "write_json", "exclusive_lock",
           "lock_folder", "keep_copy", "save_checkpoint", "load_checkpoint", "check_resumable", "set_aside",
           "read_records", "capture_rng", "restore_rng"]

CHECKPOINT_NAME = "ckpt.pt"
PREVIOUS_NAME = "ckpt.prev.pt"
DAMAGED_STEM = "ckpt.damaged"
METRICS_NAME = "metrics.jsonl"
RESULTS_NAME = "results.json"
LOCK_NAME = ".lock"
FORMAT = "slots.train/1"
_HEADER = b"slots.train checkpoint sha256:"  # then 64 hex digits and a newline
_HEADER_LEN = len(_HEADER) + 65
_ZIP_MAGIC = b"PK\x03\x04"  # a bare torch.save file: a checkpoint written before the digest


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, fails its checksum, or belongs to another task or configuration."""


class CheckpointWarning(UserWarning):
    """A checkpoint loaded without verification, or a run resumed from its previous checkpoint."""


class LockHeld(ValueError):
    """Another process holds the lock (``pid``: its process id, None when it could not be read)."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


class RunFolderWriteError(OSError):
    """A run-folder file could not be written during training (disk full, permissions); training stopped and
    the last checkpoint on disk is intact."""


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


def _temp_path(path: Path) -> str:
    return str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write(path, write: Callable[[Any], None], mode: str = "wb", keep_as=None) -> None:
    """Write ``path`` through ``write(file)`` to a temporary file in the same folder: flush, fsync, ``os.replace``.

    The temporary file is created like ``open(path, "w")`` would (mode 0o666 less the umask), not with
    mkstemp's 0o600, so the renamed file has the permissions of any other file the user creates. A write
    that fails removes the temporary file and leaves ``path`` as it was.

    ``keep_as``: once the new file is complete, and before it replaces ``path``, the file at ``path`` (if any)
    becomes ``keep_as`` (:func:`keep_copy`); ``path`` exists at every moment.
    """
    path = Path(path)
    tmp = _temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_as is not None and path.exists():
            keep_copy(path, Path(keep_as))
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def keep_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a second name of the file ``src`` (a hard link; a copy where the file system has none),
    replacing ``dst`` atomically."""
    try:
        if os.path.samefile(src, dst):  # already one file (a rename would then do nothing)
            return
    except FileNotFoundError:
        pass
    tmp = _temp_path(dst)
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as source:
            atomic_write(dst, lambda f: shutil.copyfileobj(source, f))
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(dst.parent)


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), mode="w")


def jsonable(obj) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so that configs compare equal."""
    return json.loads(json.dumps(obj))


# ---------------------------------------------------------------------------------------------------
# Locks


def _holder(fd: int) -> int | None:
    """The process id written in a lock file, or None (not written yet, or unreadable)."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def exclusive_lock(path, what: str, wait: bool = False,
                   on_wait: Callable[[int | None], None] | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on the file ``path`` while the block runs.

    The file is created if needed and holds this process's id while the lock is held; it is removed on
    release. A process that opened the file before its holder removed it finds, once it gets the lock, that
    the name now leads elsewhere (or nowhere) and locks the file under the name instead, so removing the file
    never lets two processes hold the lock. The kernel drops the lock when its process dies (kill -9
    included): a leftover file is no stale lock.

    Args:
        path: the lock file; its folder must exist. what: what the lock protects, for the error message
            (e.g. "run folder runs/x").
        wait: block until the lock is free (else raise at once). on_wait: called with the holder's process id
            (or None) before blocking.

    Raises:
        LockHeld (a ValueError) if another process holds the lock and not ``wait``.
    """
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(fd)
                if not wait:
                    who = f"process {pid}" if pid is not None else "another process"
                    raise LockHeld(f"{what} is in use by {who} (lock file {path}); wait for it to end or choose "
                                   "another folder", pid) from None
                if on_wait is not None:
                    on_wait(pid)
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file while we waited for it: lock the file under the name now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        _unlink_quietly(path)  # while still holding the lock (see above)
        os.close(fd)


@contextlib.contextmanager
def lock_folder(folder) -> Iterator[None]:
    """Hold the run-folder lock of ``folder`` (:func:`exclusive_lock` on ``folder/.lock``) while the block runs.

    The folder is created if needed; the folders this call created are removed again on release if they are
    still empty (a run refused after taking the lock leaves nothing behind).

    Raises:
        LockHeld (a ValueError) naming the folder and the holder's process id if another process holds it.
    """
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(folder / LOCK_NAME, f"run folder {folder}"):
            yield
    finally:
        for p in created:
            try:
                p.rmdir()
            except OSError:  # not empty: the run wrote into it
                break


# ---------------------------------------------------------------------------------------------------
# Checkpoint files


def save_checkpoint(path, state: dict, previous=None) -> None:
    """Write ``state`` to ``path`` as a checksummed checkpoint (see the module docstring), atomically.

    ``state`` is serialized in memory first, so a failure of ``torch.save`` touches no file. ``previous``: the
    file ``path`` held (if any) is kept under this name before it is replaced (``ckpt.prev.pt``).
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = _HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n"

    def write(f):
        f.write(header)
        f.write(payload)

    atomic_write(path, write, keep_as=previous)


def _torch_error(e: Exception) -> str:
    """The gist of torch.load's error, without its advice to load with ``weights_only=False`` (the one thing not
    to do with a file one cannot trust)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif "weights_only" in text:
        return "it holds objects other than tensors and plain containers"
    return f"{type(e).__name__}: {text.strip().split('. ')[0].splitlines()[0]}"


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, after checking its bytes against its digest
    (``torch.load`` with ``weights_only=True``).

    A file without the header (a bare ``torch.save`` zip, written before checkpoints carried a digest) is read
    unverified, with a :class:`CheckpointWarning`.

    Returns:
        dict with keys "format", "task", "task_config", "train_config", "step", "model", "optimizer",
        "rng" (one entry per process), "world_size", "elapsed_s".

    Raises:
        CheckpointError naming the file if it is missing, truncated, corrupt (its digest does not match), or not
        a checkpoint of this loop.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    damaged = f"checkpoint {path} cannot be read (truncated or corrupt?)"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{damaged}: {e}") from None
    verified = data.startswith(_HEADER)
    if verified:
        digest, payload = data[len(_HEADER):_HEADER_LEN - 1], memoryview(data)[_HEADER_LEN:]
        if data[_HEADER_LEN - 1:_HEADER_LEN] != b"\n" or hashlib.sha256(payload).hexdigest().encode() != digest:
            raise CheckpointError(f"{damaged}: its bytes do not match the SHA-256 digest written with it")
    elif data.startswith(_ZIP_MAGIC):
        payload = data
    else:
        raise CheckpointError(f"{damaged}: it does not start with a checkpoint header")
    try:
        ckpt = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{damaged}: {_torch_error(e)}") from None
    keys = {"format", "task", "task_config", "train_config", "step", "model", "optimizer", "rng", "world_size"}
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or not keys <= ckpt.keys():
        raise CheckpointError(f"{path} is not a checkpoint of slots.train (format {FORMAT})")
    if not verified:
        warnings.warn(f"checkpoint {path} carries no SHA-256 digest (written before checkpoints had one): it is "
                      "loaded unverified", CheckpointWarning, stacklevel=2)
    return ckpt


def set_aside(path: Path) -> Path | None:
    """Rename a damaged checkpoint to the first free name ``ckpt.damaged.pt``, ``ckpt.damaged.1.pt``, ...
    beside it (never over another file); returns the new path, or None if ``path`` does not exist."""
    if not path.exists():
        return None
    for i in range(1000):
        target = path.parent / (f"{DAMAGED_STEM}.pt" if i == 0 else f"{DAMAGED_STEM}.{i}.pt")
        try:
            os.link(path, target)  # fails if target exists
        except FileExistsError:
            continue
        except OSError:  # no hard links here: a rename, after checking the name is free
            if target.exists():
                continue
            os.replace(path, target)
            return target
        os.unlink(path)
        return target
    raise CheckpointError(f"cannot set {path} aside: {DAMAGED_STEM}.pt .. {DAMAGED_STEM}.999.pt all exist")


def check_resumable(cfg, task: str, task_config: dict) -> tuple[dict, Path] | None:
    """Check, without writing anything, that the run folder ``cfg.out_dir`` can be used by this run.

    With ``cfg.resume``: the newest checkpoint ``ckpt.pt`` is read; if it fails its check (or is missing while
    ``ckpt.prev.pt`` exists) and ``cfg.resume_previous``, the previous checkpoint ``ckpt.prev.pt`` is used.

    Returns:
        (checkpoint, path): the checkpoint to resume from (see :func:`load_checkpoint`) and the file it was
        read from; None for a fresh start.

    Raises:
        CheckpointError if ``cfg.resume`` and no usable checkpoint is found (the message names the damaged file
        and, when the previous checkpoint passes its check, says how to resume from it), or the checkpoint
        belongs to another task, task configuration or training trajectory; ValueError if not ``cfg.resume``
        and the folder already holds a checkpoint or results (a fresh run would overwrite them).
    """
    out = Path(cfg.out_dir)
    newest, previous = out / CHECKPOINT_NAME, out / PREVIOUS_NAME
    if not cfg.resume:
        existing = [p.name for p in (newest, previous, out / RESULTS_NAME) if p.exists()]
        if existing:
            raise ValueError(f"run folder {out} already holds {', '.join(existing)}; resume it or choose "
                             "another run folder")
        return None
    if not newest.exists() and not previous.exists():
        return None
    ckpt_path = newest
    try:
        ckpt = load_checkpoint(newest)
    except CheckpointError as damaged:
        if not previous.exists():
            raise
        try:
            ckpt = load_checkpoint(previous)
        except CheckpointError as also:
            raise CheckpointError(f"{damaged}; and the previous {also}") from None
        if not cfg.resume_previous:
            kept = f"; {newest.name} is then kept as {DAMAGED_STEM}.pt" if newest.exists() else ""
            raise CheckpointError(f"{damaged}. The previous checkpoint {previous} (step {ckpt['step']}) passes its "
                                  f"check: resume from it with --resume-previous (resume_previous=True{kept})"
                                  ) from None
        ckpt_path = previous
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
    return ckpt, ckpt_path


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
