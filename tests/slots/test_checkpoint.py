"""Tests of slots.checkpoint: the checksummed checkpoint file (a damaged byte is refused, old files without a
digest load unverified, torch's weights_only advice is never repeated), the previous checkpoint kept beside
the newest, failed writes that leave both intact, and the folder lock (held across processes, released by the
kernel on kill -9, safe against its file being removed)."""
import errno
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import slots.checkpoint as checkpoint
from slots.checkpoint import (CHECKPOINT_NAME, FORMAT, LOCK_NAME, PREVIOUS_NAME, CheckpointError, CheckpointWarning,
                              LockHeld, exclusive_lock, load_checkpoint, lock_folder, save_checkpoint)

REPO = Path(__file__).resolve().parents[2]


def make_state(step: int = 3) -> dict:
    """A minimal checkpoint of slots.train's format; its weight is 1,000 ones times the step."""
    return {"format": FORMAT, "task": "tiny", "task_config": {}, "train_config": {}, "step": step,
            "model": {"w": torch.full((1000,), float(step))}, "optimizer": {}, "rng": [], "world_size": 1}


def flip_tensor_byte(path: Path, tensor: torch.Tensor) -> None:
    """Flip one byte in the middle of ``tensor``'s bytes as stored in the file ``path``."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.numpy().tobytes())
    assert at >= 0, "the tensor's bytes are not stored as such in the file"
    data[at + tensor.numel() * tensor.element_size() // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------
# The checksum


def test_flipped_tensor_byte_is_refused_naming_the_file(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    state = make_state()
    save_checkpoint(path, state)
    assert torch.equal(load_checkpoint(path)["model"]["w"], state["model"]["w"])
    flip_tensor_byte(path, state["model"]["w"])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "do not match the SHA-256 digest" in message
    assert "weights_only" not in message
    # what the digest guards against: torch alone loads the damaged tensor without a word
    payload = path.read_bytes().split(b"\n", 1)[1]
    silent = torch.load(io.BytesIO(payload), weights_only=True)["model"]["w"]
    assert not torch.equal(silent, state["model"]["w"])


@pytest.mark.parametrize("damage", ["header_digit", "truncated", "random_bytes"])
def test_other_damage_is_refused(tmp_path, damage):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, make_state())
    data = bytearray(path.read_bytes())
    if damage == "header_digit":
        data[40] = ord("0") if data[40] != ord("0") else ord("1")
    elif damage == "truncated":
        del data[len(data) // 2:]
    else:
        data = bytearray(os.urandom(4096))
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="cannot be read \\(truncated or corrupt\\?\\)") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "weights_only" not in str(info.value)


class _NotATensor:
    pass


def test_file_without_digest_loads_unverified_and_foreign_pickles_get_no_weights_only_advice(tmp_path):
    old = tmp_path / "old.pt"
    torch.save(make_state(5), old)  # how checkpoints were written before they carried a digest
    with pytest.warns(CheckpointWarning, match="carries no SHA-256 digest.*loaded unverified"):
        assert load_checkpoint(old)["step"] == 5
    foreign = tmp_path / "foreign.pt"
    torch.save({"x": _NotATensor()}, foreign)  # torch's own error here advises weights_only=False
    with pytest.raises(CheckpointError, match="cannot be read") as info:
        load_checkpoint(foreign)
    assert "weights_only" not in str(info.value) and "_NotATensor" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# The previous checkpoint, failed writes


@pytest.mark.parametrize("links", [True, False])
def test_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, links):
    if not links:  # a file system without hard links: the previous checkpoint is a copy
        def no_link(src, dst):
            raise OSError(errno.EPERM, "no hard links here")
        monkeypatch.setattr(os, "link", no_link)
    path, previous = tmp_path / CHECKPOINT_NAME, tmp_path / PREVIOUS_NAME
    save_checkpoint(path, make_state(1), previous=previous)
    assert not previous.exists()
    save_checkpoint(path, make_state(2), previous=previous)
    save_checkpoint(path, make_state(3), previous=previous)
    assert load_checkpoint(path)["step"] == 3 and load_checkpoint(previous)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_NAME, PREVIOUS_NAME])


def test_no_space_while_writing_leaves_both_checkpoints(tmp_path, monkeypatch):
    """ENOSPC half-way through the new file: the newest and the previous checkpoint are as they were."""
    path, previous = tmp_path / CHECKPOINT_NAME, tmp_path / PREVIOUS_NAME
    save_checkpoint(path, make_state(1), previous=previous)
    save_checkpoint(path, make_state(2), previous=previous)
    before = path.read_bytes(), previous.read_bytes()
    real = checkpoint.atomic_write

    def atomic_write(target, write, mode="wb", keep_as=None):
        def full_disk(f):
            f.write(b"the first bytes of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(target, full_disk, mode, keep_as)

    monkeypatch.setattr(checkpoint, "atomic_write", atomic_write)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, make_state(3), previous=previous)
    assert info.value.errno == errno.ENOSPC
    assert (path.read_bytes(), previous.read_bytes()) == before
    assert load_checkpoint(path)["step"] == 2 and load_checkpoint(previous)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_NAME, PREVIOUS_NAME])  # no temporary file


# ---------------------------------------------------------------------------------------------------
# The lock

_HOLDER = """
import sys, time
from pathlib import Path
from slots.checkpoint import lock_folder
with lock_folder(sys.argv[1]):
    Path(sys.argv[2]).touch()
    time.sleep(300)
"""


def test_lock_is_exclusive_across_processes_and_kill_9_leaves_no_stale_lock(tmp_path):
    folder, marker = tmp_path / "run", tmp_path / "locked"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), str(marker)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
            time.sleep(0.05)
        with pytest.raises(LockHeld) as info:
            with lock_folder(folder):
                pass
        assert info.value.pid == proc.pid
        assert str(info.value).startswith(f"run folder {folder} is in use by process {proc.pid} ")
        assert "\n" not in str(info.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (folder / LOCK_NAME).exists()  # left by the killed process, but not locked
    with lock_folder(folder):
        assert (folder / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (folder / LOCK_NAME).exists()


def test_lock_folder_removes_the_folders_it_created_when_nothing_was_written(tmp_path):
    with lock_folder(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / LOCK_NAME).exists()
    assert list(tmp_path.iterdir()) == []
    with lock_folder(tmp_path / "a" / "b"):
        (tmp_path / "a" / "b" / "kept.txt").write_text("x")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b", "a/b/kept.txt"]


def test_a_waiter_never_shares_the_lock_after_its_file_is_removed(tmp_path):
    """A process waiting on the lock file when its holder removes it must lock the file under the name, not the
    removed one: a third process then finds the lock held."""
    path = tmp_path / "x.lock"
    waiting, acquired, release = threading.Event(), threading.Event(), threading.Event()

    def waiter():
        with exclusive_lock(path, "x", wait=True, on_wait=lambda pid: waiting.set()):
            acquired.set()
            release.wait(30)

    with exclusive_lock(path, "x"):
        thread = threading.Thread(target=waiter)
        thread.start()
        assert waiting.wait(30)
    assert acquired.wait(30)
    try:
        with pytest.raises(LockHeld, match=f"x is in use by process {os.getpid()}"):
            with exclusive_lock(path, "x"):
                pass
    finally:
        release.set()
        thread.join(30)
    assert not path.exists()
