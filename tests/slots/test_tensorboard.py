"""Tests of slots.tensorboard and ``TrainConfig.tensorboard``: the events are read back with TensorBoard's own
reader (its EventAccumulator, which applies the purges TensorBoard applies) and compared with metrics.jsonl;
a resumption replays the kept records and drops a killed run's tail; PNG pictures come back pixel for pixel;
without the tensorboard package the flag fails with one message naming what to install, before anything
is written."""
import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from slots import tensorboard
from slots.train import METRICS_NAME, TrainConfig, train


class _Line:
    """y = x w + noise: a data set of (x (b, 3), y (b,)) batches."""

    def __init__(self, n: int = 64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx]


def _loss(model, batch):
    x, y = batch
    return ((model(x).squeeze(1) - y) ** 2).mean()


def _train(out, steps, board, resume=False):
    """``steps`` steps of a linear model: a training record every 2 steps, an evaluation every 3, checkpoints
    every 4."""
    data = _Line()
    torch.manual_seed(0)
    cfg = TrainConfig(out_dir=str(out), steps=steps, batch_size=16, lr=0.05, log_every=2, eval_every=3,
                      ckpt_every=4, resume=resume, progress=False, num_threads=1, tensorboard=board)
    return train(cfg, nn.Linear(3, 1), data, _loss, lambda m: {"mse": float(_loss(m, (data.x, data.y)))},
                 task="line", task_config={})


def _read(run_dir):
    """TensorBoard's reader over a run folder, everything kept."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _expected(run_dir, split, key):
    records = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]
    return [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in records if r["split"] == split]


@pytest.fixture
def board_installed():
    pytest.importorskip("tensorboard")


def test_training_records_and_evaluations_read_back(tmp_path, board_installed):
    _train(tmp_path, 6, board=True)
    acc = _read(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["eval/mse", "train/grad_norm", "train/loss", "train/lr",
                                             "train/steps_per_s"]
    for split, key in [("train", "loss"), ("train", "lr"), ("train", "grad_norm"), ("eval", "mse")]:
        assert _scalars(acc, f"{split}/{key}") == _expected(tmp_path, split, key), key
    assert [s for s, _ in _scalars(acc, "train/loss")] == [2, 4, 6]
    assert [s for s, _ in _scalars(acc, "eval/mse")] == [3, 6]


def test_resume_with_the_flag_replays_the_kept_records_and_drops_a_killed_tail(tmp_path, board_installed):
    _train(tmp_path, 4, board=False)  # no events yet; checkpoint at step 4
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    # a killed run's tail after the checkpoint, in metrics.jsonl and in the events
    tail = {"step": 6, "split": "train", "loss": 99.0, "lr": 1.0, "grad_norm": 1.0}
    with open(tmp_path / METRICS_NAME, "a") as f:
        f.write(json.dumps(tail) + "\n")
    killed = tensorboard.RunBoard(tmp_path, purge=False)
    killed.add_record(tail)
    killed.close()
    assert _scalars(_read(tmp_path), "train/loss")[-1] == (6, 99.0)

    _train(tmp_path, 8, board=True, resume=True)
    losses = _scalars(_read(tmp_path), "train/loss")
    assert [s for s, _ in losses] == [2, 4, 6, 8]  # steps 2 and 4 replayed from metrics.jsonl
    assert losses == _expected(tmp_path, "train", "loss") and 99.0 not in [v for _, v in losses]


def test_pictures_come_back_pixel_for_pixel(tmp_path, board_installed):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "examples.png")
    rgba = np.concatenate([rgb[:5, :7], np.full((5, 7, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "masks.png")

    board = tensorboard.RunBoard(tmp_path, purge=False)
    tags = board.add_pictures(sorted(tmp_path.glob("*.png")), step=7)
    board.close()
    assert tags == ["pictures/examples", "pictures/masks"]
    acc = _read(tmp_path)
    assert sorted(acc.Tags()["images"]) == tags
    for tag, want in zip(tags, (rgb, rgb[:5, :7])):
        (event,) = acc.Images(tag)
        assert (event.step, event.height, event.width) == (7, *want.shape[:2])
        got = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(got, want)  # PNG is lossless; transparency dropped


def test_non_numbers_are_skipped(tmp_path, board_installed):
    board = tensorboard.RunBoard(tmp_path)
    board.add_record({"step": 3, "split": "eval", "ari": 0.5, "flag": True, "name": "x", "curve": [1, 2],
                      "time_s": 4.0})
    board.close()
    acc = _read(tmp_path)
    assert acc.Tags()["scalars"] == ["eval/ari"] and _scalars(acc, "eval/ari") == [(3, 0.5)]


def test_without_tensorboard_the_flag_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    with pytest.raises(tensorboard.TensorBoardMissing) as e:
        tensorboard.require()
    assert "pip install '.[tensorboard]'" in str(e.value) and "tensorboard>=2.14" in str(e.value)
    assert isinstance(e.value, ImportError)
    with pytest.raises(tensorboard.TensorBoardMissing, match="needs the tensorboard package"):
        _train(tmp_path / "run", 2, board=True)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    _train(tmp_path / "plain", 2, board=False)  # the flag off needs nothing
    assert (tmp_path / "plain" / METRICS_NAME).exists()


def test_the_flag_is_a_runtime_field():
    on = TrainConfig(out_dir="x", steps=2, batch_size=2, tensorboard=True)
    assert "tensorboard" in TrainConfig.RUNTIME_FIELDS
    assert on.trajectory() == TrainConfig(out_dir="x", steps=2, batch_size=2).trajectory()
    with pytest.raises(ValueError, match="tensorboard must be a bool, got 'yes'"):
        TrainConfig(out_dir="x", steps=2, batch_size=2, tensorboard="yes")
