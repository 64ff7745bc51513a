"""Tests of slots.train: exact resumption (after a stop, Ctrl-C and kill -9), atomic checkpoints and their
contents, the metrics / results files, refusal of unusable run folders, a damaged newest checkpoint (refused;
the previous one resumes), writes that fail (disk full), a second process on a locked run folder, and
DistributedDataParallel under torchrun (gloo, two CPU processes).

The file doubles as the script that the subprocess tests run (see ``_child``): a tiny regression task whose
loss draws from torch (dropout), numpy and python's ``random``, so that every RNG state a checkpoint holds
matters for the trajectory.
"""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import slots.checkpoint as slots_checkpoint
import slots.train as slots_train
from slots.train import (CHECKPOINT_NAME, METRICS_NAME, PREVIOUS_NAME, RESULTS_NAME, CheckpointError,
                         CheckpointWarning, LockHeld, RunFolderWriteError, TrainConfig, TrainingInterrupted,
                         batch_indices, get_lr, load_checkpoint, seed_everything, train)

REPO = Path(__file__).resolve().parents[2]
TASK = "tiny"
TASK_CONFIG = {"n": 40, "width": 16}


class TinyData:
    """40 examples of (x (4,), y (1,)); indexable by a (b,) int64 tensor."""

    def __init__(self, n=40):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx]


def make_model(dropout=0.2):
    seed_everything(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))


def noisy_loss(model, batch):
    """MSE scaled by a factor drawn from numpy's and python's global RNGs (dropout draws from torch's)."""
    x, y = batch
    scale = 1.0 + 0.5 * float(np.random.rand()) + 0.5 * random.random()
    return scale * ((model(x) - y) ** 2).mean()


def plain_loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def make_cfg(out, steps=12, **kw):
    base = dict(out_dir=str(out), steps=steps, batch_size=8, lr=1e-2, warmup_steps=3, decay_rate=0.5,
                decay_steps=5, log_every=1, eval_every=0, ckpt_every=5, num_threads=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def run(out, steps=12, model=None, loss=noisy_loss, eval_fn=None, task=TASK, task_config=TASK_CONFIG, **kw):
    model = make_model() if model is None else model
    results = train(make_cfg(out, steps, **kw), model, TinyData(), loss, eval_fn, task=task,
                    task_config=task_config)
    return model, results


def assert_same_params(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def snapshot(folder: Path) -> dict:
    """{relative path: (bytes, mtime_ns)} of every file under folder."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train_steps(folder: Path) -> list[int]:
    """Steps of the training records in folder's metrics.jsonl (every line must parse)."""
    records = [json.loads(line) for line in (folder / METRICS_NAME).read_text().splitlines()]
    return [r["step"] for r in records if r["split"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run: (model, results, run folder)."""
    out = tmp_path_factory.mktemp("reference")
    n = torch.get_num_threads()
    model, results = run(out)
    torch.set_num_threads(n)
    return model, results, out


# ---------------------------------------------------------------------------------------------------
# Schedule and data order


def test_lr_schedule_and_data_order():
    cfg = make_cfg("unused", warmup_steps=4, decay_steps=10)
    assert get_lr(0, cfg) == pytest.approx(1e-2 / 4)
    assert get_lr(3, cfg) == pytest.approx(1e-2 * 0.5 ** 0.3)
    assert get_lr(20, cfg) == pytest.approx(1e-2 * 0.25)
    # 40 examples, batch 8: every epoch of 5 steps is a permutation; epochs differ; deterministic
    epoch0 = np.concatenate([batch_indices(3, s, 40, 8) for s in range(5)])
    epoch1 = np.concatenate([batch_indices(3, s, 40, 8) for s in range(5, 10)])
    assert sorted(epoch0) == list(range(40)) and sorted(epoch1) == list(range(40))
    assert not np.array_equal(epoch0, epoch1)
    assert np.array_equal(batch_indices(3, 7, 40, 8), epoch1[16:24])
    assert not np.array_equal(batch_indices(4, 0, 40, 8), epoch0[:8])
    with pytest.raises(ValueError, match="smaller than one batch"):
        batch_indices(0, 0, 5, 8)


# ---------------------------------------------------------------------------------------------------
# Exact resumption


def test_resume_after_stop_is_bit_exact(reference, tmp_path):
    ref_model, ref_results, _ = reference
    run(tmp_path, steps=7)  # stop at 7 (a checkpoint is written at the end of every run)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 7
    # as in a fresh process: the model is rebuilt from the seed and every global RNG is elsewhere
    model = make_model()
    torch.manual_seed(999), np.random.seed(999), random.seed(999)
    model, results = run(tmp_path, steps=12, model=model, resume=True)
    assert results["step"] == 12
    assert_same_params(model, ref_model)
    assert results["eval"] == {} and results["train_loss"] == pytest.approx(ref_results["train_loss"])


@pytest.mark.parametrize("skip", ["rng", "optimizer"])
def test_resume_without_restored_state_would_differ(reference, tmp_path, monkeypatch, skip):
    """The resume tests can fail: the tiny task's trajectory depends on the RNG and optimizer states."""
    ref_model, _, _ = reference
    run(tmp_path, steps=7)
    if skip == "rng":
        monkeypatch.setattr(slots_train, "restore_rng", lambda state, device: None)
    else:
        monkeypatch.setattr(torch.optim.AdamW, "load_state_dict", lambda self, state: None)
    model, _ = run(tmp_path, steps=12, resume=True)
    assert not torch.equal(model[0].weight, ref_model[0].weight)


def test_resume_from_periodic_checkpoint_after_crash_is_bit_exact(reference, tmp_path):
    """A crash at step 8 leaves the step-5 checkpoint; resuming from it (with other log / eval / checkpoint
    cadences, which are runtime options) gives the uninterrupted parameters."""
    ref_model, _, _ = reference
    calls = []

    def crashing(model, batch):
        calls.append(1)
        if len(calls) == 8:
            raise RuntimeError("crash")
        return noisy_loss(model, batch)

    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path, loss=crashing, ckpt_every=5)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 5
    model, results = run(tmp_path, resume=True, log_every=4, ckpt_every=0, eval_every=2,
                         eval_fn=lambda m: {"x": float(torch.randn(()))})
    assert_same_params(model, ref_model)
    assert results["step"] == 12


def test_sigint_saves_checkpoint_then_resume_is_bit_exact(reference, tmp_path):
    ref_model, _, _ = reference
    calls = []

    def loss(model, batch):
        calls.append(1)
        if len(calls) == 4:  # during step 4 (1-based): the loop finishes the step, saves, then stops
            signal.raise_signal(signal.SIGINT)
        return noisy_loss(model, batch)

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        run(tmp_path, loss=loss, ckpt_every=0)
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.step == 4 and len(calls) == 4
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["step"] == 4
    assert not (tmp_path / RESULTS_NAME).exists()
    model, _ = run(tmp_path, resume=True)
    assert_same_params(model, ref_model)


def test_checkpoint_contents(reference):
    ref_model, _, out = reference
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["step"] == 12 and ckpt["task"] == TASK and ckpt["task_config"] == TASK_CONFIG
    assert ckpt["world_size"] == 1
    assert ckpt["train_config"] == json.loads(json.dumps(asdict(make_cfg(out))))
    for k, v in ref_model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    opt = ckpt["optimizer"]
    assert len(opt["state"]) == 4 and all("exp_avg_sq" in s for s in opt["state"].values())
    assert float(opt["state"][0]["step"]) == 12
    # the schedule is a function of the step: the stored lr is that of the last step
    assert opt["param_groups"][0]["lr"] == pytest.approx(get_lr(11, make_cfg(out)))
    (rng,) = ckpt["rng"]
    assert set(rng) >= {"python", "numpy", "torch"}
    assert not list(out.glob("*.tmp"))


class _Wrapped(nn.Module):
    """``make_model()`` inside a module with a forward of its own: torch.compile traces from the first frame
    outside torch, and an nn.Sequential of torch layers has none."""

    def __init__(self):
        super().__init__()
        self.net = make_model()

    def forward(self, x):
        return self.net(x)


@pytest.mark.slow
def test_compiled_run_matches_eager_run(tmp_path):
    """compile=True trains the eager run's parameters up to rounding (dropout draws what it draws eagerly),
    writes the eager model's state_dict keys, and may resume a run started without it."""
    n = torch.get_num_threads()
    torch._dynamo.reset()
    try:
        eager, _ = run(tmp_path / "eager", model=_Wrapped())
        model, _ = run(tmp_path / "compiled", model=_Wrapped(), compile=True)
        run(tmp_path / "switched", steps=7, model=_Wrapped())
        resumed, _ = run(tmp_path / "switched", model=_Wrapped(), resume=True, compile=True)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # (reset clears the counters)
    finally:
        torch._dynamo.reset()
        torch.set_num_threads(n)
    ckpt = load_checkpoint(tmp_path / "compiled" / CHECKPOINT_NAME)
    assert ckpt["train_config"]["compile"] is True and ckpt["model"].keys() == eager.state_dict().keys()
    for trained in (model, resumed):
        for k, v in eager.state_dict().items():
            torch.testing.assert_close(trained.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way (a crash) leaves the previous checkpoint intact and no temporary file;
    the checkpoint only ever appears under its name by a rename of a complete file in the same folder."""
    real_save, real_replace = torch.save, os.replace
    renames, saves = [], []

    def replace(src, dst):
        if Path(dst).name == CHECKPOINT_NAME:
            assert Path(src).parent == Path(dst).parent
            renames.append(load_checkpoint(src)["step"])  # complete before it is renamed
        real_replace(src, dst)

    def save(obj, f, *a, **kw):
        saves.append(obj["step"])
        if obj["step"] == 4:
            f.write(b"half a checkpoint")
            raise OSError("disk full")
        real_save(obj, f, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, ckpt_every=2)
    assert saves == [2, 4] and renames == [2]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME, METRICS_NAME]


def test_files_have_default_permissions(tmp_path):
    """Run-folder files get the permissions of any file the user creates (umask), not mkstemp's 0600."""
    run(tmp_path / "run", steps=2)
    run(tmp_path / "run", steps=3, resume=True)  # rewrites metrics.jsonl
    (tmp_path / "plain").write_text("x")
    mode = (tmp_path / "plain").stat().st_mode & 0o777
    for name in (CHECKPOINT_NAME, RESULTS_NAME, METRICS_NAME):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == mode, name


# ---------------------------------------------------------------------------------------------------
# Metrics, evaluation, results


def test_metrics_eval_and_results(tmp_path):
    seen = []

    def eval_fn(model):
        seen.append(model.training)
        torch.randn(3), np.random.rand(), random.random()  # must not disturb training
        return {"score": float(sum(p.sum() for p in model.parameters()))}

    model, results = run(tmp_path, steps=7, log_every=2, eval_every=3, eval_fn=eval_fn)
    records = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    train_recs = [r for r in records if r["split"] == "train"]
    eval_recs = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train_recs] == [2, 4, 6, 7]
    assert [r["step"] for r in eval_recs] == [3, 6, 7]
    assert seen == [False] * 3  # the bare model, in eval mode
    assert model.training  # back in training mode
    for r in train_recs:
        assert set(r) >= {"loss", "lr", "grad_norm", "steps_per_s", "time_s"} and np.isfinite(r["loss"])
        assert r["lr"] == pytest.approx(get_lr(r["step"] - 1, make_cfg(tmp_path)))
    final = float(sum(p.detach().sum() for p in model.parameters()))
    assert eval_recs[-1]["score"] == pytest.approx(final)
    on_disk = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["step"] == 7 and on_disk["eval"] == {"score": eval_recs[-1]["score"]}
    assert on_disk["task"] == TASK and on_disk["task_config"] == TASK_CONFIG and on_disk["world_size"] == 1
    assert on_disk["train_loss"] == pytest.approx(train_recs[-1]["loss"])
    # evaluation (and its RNG draws) leaves the trajectory unchanged
    quiet, _ = run(tmp_path / "quiet", steps=7)
    assert_same_params(model, quiet)


def test_resume_drops_metric_records_after_checkpoint(tmp_path):
    run(tmp_path, steps=6, ckpt_every=5)
    ckpt = tmp_path / CHECKPOINT_NAME
    # what a run killed at step 7 (after the step-5 checkpoint) leaves behind: the step-5 checkpoint,
    # records up to step 7 and a line cut short
    run(tmp_path / "five", steps=5)
    os.replace(tmp_path / "five" / CHECKPOINT_NAME, ckpt)
    (tmp_path / RESULTS_NAME).unlink()
    with open(tmp_path / METRICS_NAME, "a") as f:
        f.write('{"step": 7, "split": "train", "loss": 1.0}\n{"step": 8, "spl')
    run(tmp_path, steps=8, resume=True)
    assert train_steps(tmp_path) == list(range(1, 9))


# ---------------------------------------------------------------------------------------------------
# Unusable run folders: refused before anything is written


def test_existing_run_without_resume_is_refused(reference):
    _, _, out = reference
    before = snapshot(out)
    with pytest.raises(ValueError, match="already holds"):
        run(out)
    assert snapshot(out) == before


@pytest.mark.parametrize("breakage,match", [
    ("garbage", "cannot be read"),
    ("truncated", "cannot be read"),
    ("state_dict", "not a checkpoint of slots.train"),
    ("task", "belongs to task 'tiny', not 'other'"),
    ("task_config", r"different task configuration \(differs in: width\)"),
    ("train_config", r"different training configuration \(differs in: lr\)"),
    ("model", "does not fit this model"),
])
def test_unusable_checkpoint_is_refused_and_nothing_written(reference, tmp_path, breakage, match):
    _, _, ref_out = reference
    ckpt_bytes = (ref_out / CHECKPOINT_NAME).read_bytes()
    (tmp_path / METRICS_NAME).write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    path = tmp_path / CHECKPOINT_NAME
    kw, model, task, task_config = {}, None, TASK, TASK_CONFIG
    if breakage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif breakage == "truncated":
        path.write_bytes(ckpt_bytes[:len(ckpt_bytes) // 2])
    elif breakage == "state_dict":
        torch.save(make_model().state_dict(), path)
    else:
        path.write_bytes(ckpt_bytes)
        if breakage == "task":
            task = "other"
        elif breakage == "task_config":
            task_config = {**TASK_CONFIG, "width": 32}
        elif breakage == "train_config":
            kw["lr"] = 2e-2
        elif breakage == "model":
            model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        run(tmp_path, steps=20, model=model, task=task, task_config=task_config, resume=True, **kw)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------
# A damaged newest checkpoint, failed writes


def _crash_at(step: int):
    """A loss that raises during optimizer step ``step`` (1-based), as a crash would."""
    calls = []

    def loss(model, batch):
        calls.append(1)
        if len(calls) == step:
            raise RuntimeError("crash")
        return noisy_loss(model, batch)
    return loss


def test_damaged_checkpoint_is_refused_and_the_previous_one_resumes_bit_exact(reference, tmp_path):
    ref_model, _, _ = reference
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path, loss=_crash_at(11))  # checkpoints at steps 5 and 10
    ckpt, previous = tmp_path / CHECKPOINT_NAME, tmp_path / PREVIOUS_NAME
    assert load_checkpoint(ckpt)["step"] == 10 and load_checkpoint(previous)["step"] == 5
    data = bytearray(ckpt.read_bytes())
    weight = load_checkpoint(ckpt)["model"]["0.weight"].numpy().tobytes()
    data[data.find(weight) + 7] ^= 0x10  # one flipped byte in a tensor
    ckpt.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as info:
        run(tmp_path, resume=True)
    message = str(info.value)
    assert f"checkpoint {ckpt} cannot be read" in message and "SHA-256" in message
    assert f"previous checkpoint {previous} (step 5) passes its check" in message and "--resume-previous" in message
    assert snapshot(tmp_path) == before  # nothing written, nothing deleted
    with pytest.warns(CheckpointWarning, match=f"resuming from {previous} \\(step 5\\).*kept as .*ckpt.damaged.pt"):
        model, results = run(tmp_path, resume=True, resume_previous=True)
    assert results["step"] == 12
    assert_same_params(model, ref_model)
    assert (tmp_path / "ckpt.damaged.pt").read_bytes() == bytes(data)
    assert load_checkpoint(ckpt)["step"] == 12 and load_checkpoint(previous)["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_NAME, PREVIOUS_NAME, "ckpt.damaged.pt",
                                                                 METRICS_NAME, RESULTS_NAME])
    assert train_steps(tmp_path) == list(range(1, 13))


def test_resume_previous_needs_resume(tmp_path):
    with pytest.raises(ValueError, match="resume_previous needs resume=True"):
        make_cfg(tmp_path, resume_previous=True)


@pytest.mark.parametrize("what", ["checkpoint", "metrics"])
def test_no_space_left_stops_training_and_keeps_the_last_checkpoint(reference, tmp_path, monkeypatch, what):
    """ENOSPC while writing the step-10 checkpoint (or the step-7 metrics record): training stops with an error
    that names the file and the intact step-5 checkpoint, which resumes to the uninterrupted parameters."""
    ref_model, _, _ = reference
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if what == "checkpoint":
        real_write, real_save, saving = slots_checkpoint.atomic_write, torch.save, []

        def save(obj, f, *args, **kw):  # save_checkpoint serializes the state, then writes the file
            saving.append(obj["step"])
            real_save(obj, f, *args, **kw)

        def atomic_write(path, write, mode="wb", keep_as=None):
            def fail_at_10(f):
                if Path(path).name == CHECKPOINT_NAME and saving[-1] == 10:
                    f.write(b"the first bytes")
                    raise full
                write(f)
            real_write(path, fail_at_10, mode, keep_as)

        monkeypatch.setattr(torch, "save", save)
        monkeypatch.setattr(slots_checkpoint, "atomic_write", atomic_write)
        failed, stopped = tmp_path / CHECKPOINT_NAME, 10
    else:
        real_open, appends = open, []

        def fake_open(path, mode="r", *args, **kw):
            if mode == "a":
                appends.append(path)
                if len(appends) == 7:
                    raise full
            return real_open(path, mode, *args, **kw)

        monkeypatch.setattr(slots_train, "open", fake_open, raising=False)
        failed, stopped = tmp_path / METRICS_NAME, 7
    with pytest.raises(RunFolderWriteError) as info:
        run(tmp_path)
    message = str(info.value)
    assert message.startswith(f"cannot write {failed} at step {stopped}: [Errno {errno.ENOSPC}]")
    assert f"the last checkpoint, {tmp_path / CHECKPOINT_NAME} (step 5), is intact" in message
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 5
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / RESULTS_NAME).exists()
    monkeypatch.undo()
    model, _ = run(tmp_path, resume=True)
    assert_same_params(model, ref_model)
    assert train_steps(tmp_path) == list(range(1, 13))


# ---------------------------------------------------------------------------------------------------
# Subprocesses: kill -9 and torchrun


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    return env


def _child_cmd(*args):
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def _kill_when_blocked(cmd, marker: Path, timeout: float = 120, while_blocked=None) -> None:
    """Start ``cmd``, wait until it touches ``marker`` (it then waits to be killed), call
    ``while_blocked(pid)`` if given, and kill -9 it."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, f"the child did not reach its blocking point: {cmd}"
            time.sleep(0.05)
        if while_blocked is not None:
            while_blocked(proc.pid)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_sigkill_then_resume_in_fresh_process_is_bit_exact(reference, tmp_path):
    ref_model, _, _ = reference
    out, marker = tmp_path / "run", tmp_path / "blocked"
    # the child reaches step 8 (after the step-5 checkpoint) and waits
    _kill_when_blocked(_child_cmd("train", out, "--block-at", 8, "--marker", marker), marker)
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 5
    assert not (out / RESULTS_NAME).exists()
    dump = tmp_path / "params.pt"
    done = subprocess.run(_child_cmd("train", out, "--resume", "--dump", dump), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    params = torch.load(dump, weights_only=True)
    for k, v in ref_model.state_dict().items():
        assert torch.equal(params[k], v), k
    assert train_steps(out) == list(range(1, 13))  # the killed run's records after step 5 were dropped


def test_second_process_on_a_run_folder_is_refused_and_kill_9_frees_it(reference, tmp_path):
    """While a run trains in a folder, another run on it (fresh or resumed) stops before it writes anything,
    naming the folder and the process that holds it; once that process is killed (-9), --resume continues."""
    ref_model, _, _ = reference
    out, marker = tmp_path / "run", tmp_path / "blocked"

    def try_the_same_folder(pid: int) -> None:
        before = snapshot(out)
        for resume in (False, True):
            with pytest.raises(LockHeld) as info:
                run(out, resume=resume)
            assert str(info.value).startswith(f"run folder {out} is in use by process {pid} ")
            assert snapshot(out) == before

    # the child reaches step 8 and waits
    _kill_when_blocked(_child_cmd("train", out, "--block-at", 8, "--marker", marker), marker,
                       while_blocked=try_the_same_folder)
    model, _ = run(out, resume=True)
    assert_same_params(model, ref_model)
    assert train_steps(out) == list(range(1, 13))


def test_torchrun_two_cpu_processes(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           *_child_cmd("ddp", out, "--dump", dump)[1:]]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    p0 = torch.load(dump / "rank0.pt", weights_only=True)
    p1 = torch.load(dump / "rank1.pt", weights_only=True)
    assert p0.keys() == p1.keys()
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    results = json.loads((out / RESULTS_NAME).read_text())
    assert results["step"] == 6 and results["world_size"] == 2
    assert results["eval"]["score"] == pytest.approx(float(sum(v.sum() for v in p0.values())))
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # per-process RNGs differ
    assert train_steps(out) == list(range(1, 7))
    # the two shards of 4 make up the global batch of 8: same trajectory as one process, up to rounding
    single, _ = run(tmp_path / "single", steps=6, model=make_model(dropout=0.0), loss=plain_loss)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(p0[k], v, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Bit-reproducibility across processes (issue 15): a tiny random-objects model of every variant, trained in
# separate processes two at a time, and killed (kill -9) at several points then resumed.

RO_RUNS = [("sa", None), ("sa-sh", None), ("sa-emd", None), ("sa-mesh", None), ("sa-mesh", "torch"),
           ("sa-sh", "torch")]


def _ro_train(out: Path, variant: str, backend, resume=False, block=None, marker=None):
    """12 steps of a tiny random-objects model (evaluation every 4 steps, checkpoints every 5).

    ``block`` = (where, step) stops the run at that point, touches ``marker`` and waits to be killed:
    "after_eval" (the first step after the evaluation of ``step``), "in_ckpt" (half-way through writing the
    checkpoint of ``step``), "between" (during step ``step``, between two checkpoints).
    """
    from slots import OTConfig, hungarian_mse_loss, normalized_hungarian_rmse
    from tasks.random_objects.data import make_split
    from tasks.random_objects.model import ModelConfig, RandomObjectsModel

    def wait_for_kill():
        Path(marker).touch()
        while True:
            time.sleep(1)

    where, at = block if block else (None, None)
    train_set = make_split("train", 64, 0.1, 0, n_objects=3, n_background=20, dim=8)
    test_set = make_split("test", 32, 0.1, 0, n_objects=3, n_background=20, dim=8)
    evals, steps = [], []

    def loss(model, batch):
        steps.append(1)
        if where == "between" and len(steps) == at or where == "after_eval" and evals and evals[-1] == at:
            wait_for_kill()
        x, y = batch
        return hungarian_mse_loss(model(x), y)

    def evaluate(model):
        x, y = test_set[torch.arange(len(test_set))]
        evals.append(len(steps) + start)
        return {"rmse": float(normalized_hungarian_rmse(model(x), y, 0.1))}

    if where == "in_ckpt":
        real_save = torch.save

        def save(obj, f, *args, **kw):
            if obj["step"] == at:
                f.write(b"the first half of a checkpoint")
                f.flush()
                wait_for_kill()
            real_save(obj, f, *args, **kw)

        torch.save = save
    start = load_checkpoint(out / CHECKPOINT_NAME)["step"] if resume and (out / CHECKPOINT_NAME).exists() else 0
    seed_everything(0)
    cfg = ModelConfig(variant=variant, n_slots=3, dim=8, mlp_hidden=16, ot=OTConfig(backend=backend))
    model = RandomObjectsModel(cfg)
    train(TrainConfig(out_dir=str(out), steps=12, batch_size=16, lr=1e-2, warmup_steps=2, decay_steps=6, log_every=3,
                      eval_every=4, ckpt_every=5, resume=resume, num_threads=1, progress=False),
          model, train_set, loss, evaluate, task="ro", task_config={"variant": variant, "backend": backend})
    return model.state_dict()


def _ro_cmd(*args):
    return _child_cmd("ro", *args)


def _start(cmd):
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode()


def test_identical_runs_in_separate_processes_are_bit_identical(tmp_path):
    """Four processes, two at a time, each training every variant (and the PyTorch OT path): all alike."""
    dumps = [tmp_path / f"params{i}.pt" for i in range(4)]
    for pair in (dumps[:2], dumps[2:]):
        procs = [_start(_ro_cmd(tmp_path / d.stem, "--all", "--dump", d)) for d in pair]
        for p in procs:
            _finish(p)
    first = torch.load(dumps[0], weights_only=True)
    assert sorted(first) == sorted(f"{v}/{b}" for v, b in RO_RUNS)
    for d in dumps[1:]:
        other = torch.load(d, weights_only=True)
        for run_name, params in first.items():
            for k, v in params.items():
                assert torch.equal(other[run_name][k], v), (d.name, run_name, k)


@pytest.fixture(scope="module")
def ro_reference(tmp_path_factory):
    """Parameters of an uninterrupted 12-step SA-MESH run, trained in a fresh process."""
    out = tmp_path_factory.mktemp("ro_reference")
    _finish(_start(_ro_cmd(out / "run", "--variant", "sa-mesh", "--dump", out / "params.pt")))
    return torch.load(out / "params.pt", weights_only=True)["sa-mesh/None"]


@pytest.mark.parametrize("where,step,ckpt_step", [("after_eval", 8, 5), ("in_ckpt", 10, 5), ("between", 7, 5)])
def test_kill_at_any_point_then_resume_is_bit_exact(ro_reference, tmp_path, where, step, ckpt_step):
    """kill -9 right after an evaluation, half-way through a checkpoint write, or between checkpoints; the
    resumed run (a fresh process) ends with the parameters of the uninterrupted one."""
    out, marker, dump = tmp_path / "run", tmp_path / "blocked", tmp_path / "params.pt"
    _kill_when_blocked(_ro_cmd(out, "--variant", "sa-mesh", "--block", where, str(step), "--marker", marker), marker)
    run_dir = out / "sa-mesh-None"
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == ckpt_step
    assert not (run_dir / RESULTS_NAME).exists()
    _finish(_start(_ro_cmd(out, "--variant", "sa-mesh", "--resume", "--dump", dump)))
    params = torch.load(dump, weights_only=True)["sa-mesh/None"]
    for k, v in ro_reference.items():
        assert torch.equal(params[k], v), k


def _child(argv):
    """Entry point of the subprocesses: ``train OUT [--resume] [--block-at S --marker F] [--dump F]``
    (12 steps of the noisy task), ``ddp OUT --dump DIR`` (6 steps of the plain task, under torchrun) or
    ``ro OUT (--all | --variant V) [--resume] [--block WHERE STEP --marker F] --dump F`` (tiny random-objects
    runs, see ``_ro_train``)."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train", "ddp", "ro"])
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--block-at", type=int)
    p.add_argument("--marker")
    p.add_argument("--dump")
    p.add_argument("--variant")
    p.add_argument("--all", action="store_true")
    p.add_argument("--block", nargs=2)
    args = p.parse_args(argv)
    if args.mode == "ro":  # tiny random-objects runs: every variant (--all) or one (--variant)
        runs = RO_RUNS if args.all else [(args.variant, None)]
        block = (args.block[0], int(args.block[1])) if args.block else None
        params = {f"{v}/{b}": _ro_train(Path(args.out) / f"{v}-{b}", v, b, args.resume, block, args.marker)
                  for v, b in runs}
        torch.save(params, args.dump)
        return
    if args.mode == "ddp":
        rank = int(os.environ["RANK"])
        model = make_model(dropout=0.0)
        run(args.out, steps=6, model=model, loss=plain_loss,
            eval_fn=lambda m: {"score": float(sum(v.sum() for v in m.state_dict().values()))})
        torch.save(model.state_dict(), Path(args.dump) / f"rank{rank}.pt")
        return
    calls = []

    def loss(model, batch):
        calls.append(1)
        if len(calls) == args.block_at:  # steps before this one are done: signal the parent, wait for kill
            Path(args.marker).touch()
            while True:
                time.sleep(1)
        return noisy_loss(model, batch)

    model, _ = run(args.out, loss=loss, resume=args.resume)
    if args.dump:
        torch.save(model.state_dict(), args.dump)


if __name__ == "__main__":
    _child(sys.argv[1:])


def test_retain_freed_memory(monkeypatch):
    import platform

    import slots.runtime as runtime

    monkeypatch.setattr(runtime, "_malloc_retained", False)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert runtime.retain_freed_memory() is False  # the user's malloc settings win
    monkeypatch.delenv("MALLOC_TOP_PAD_")
    for name in runtime._MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    applied = runtime.retain_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied is True and runtime.retain_freed_memory() is True
    else:
        assert applied is False
