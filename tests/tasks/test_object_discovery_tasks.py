"""Tests of the object-discovery commands (``python -m tasks.multi_dsprites``, ``python -m tasks.clevrtex`` and
their ``show``): a tiny end-to-end run (table, baseline row, plot, pictures), the paper's budgets, options,
and bad input data refused before any run folder is written (exit status 2, the file and record named)."""
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import tasks.multi_dsprites.data as mds_data
from slots.train import CHECKPOINT_NAME
from tasks import runner
from tasks.clevrtex.__main__ import main as clevrtex_main
from tasks.clevrtex.experiment import BUDGETS as CLEVRTEX_BUDGETS
from tasks.clevrtex.experiment import TASK as CLEVRTEX
from tasks.multi_dsprites.__main__ import main as mds_main
from tasks.multi_dsprites.experiment import BUDGETS, PAPER_TABLE3, TASK
from tasks.multi_dsprites.show import main as show_main
from tasks.object_discovery import EXAMPLES
from tasks.scenes.tfrecord import encode_example, write_tfrecord

TINY = ["--budget", "quick", "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--n-train", "16",
        "--n-test", "6", "--resolution", "16", "--jobs", "1", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SA_MESH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, run_cli):
    """A finished tiny run of SA and SA-MESH on generated Multi-dSprites: (out, exit status, stdout, stderr)."""
    out = tmp_path_factory.mktemp("mds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SA_MESH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        n = torch.get_num_threads()
        result = run_cli(mds_main, [*TINY, "--variant", "sa", "--variant", "sa-mesh", "--out", out])
        torch.set_num_threads(n)
    return (out, *result)


def test_end_to_end_table_baseline_plot_and_pictures(finished):
    out, code, stdout, stderr = finished
    assert code == 0, stderr
    for name in ("table.md", "table.json", "fg_ari_vs_steps.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "table.json").read_text())
    assert [r["variant"] for r in summary["rows"]] == ["sa", "sa-mesh"]
    for row in summary["rows"]:
        for key in ("fg_ari", "fg_miou", "mse"):
            cell = row["metrics"][key]
            assert isinstance(cell["ours"], float) and len(cell["per_seed"]) == 1
        assert row["metrics"]["fg_ari"]["paper"] == list(PAPER_TABLE3[row["variant"]]["fg_ari"])
        assert 0 <= row["metrics"]["fg_ari"]["ours"] <= 100
        assert Image.open(out / row["variant"] / "seed0" / EXAMPLES).size[0] > 8 * 96
    assert list(summary["baselines"]) == ["fixed regions (6 k-means cells)", "SA (Locatello et al., 2020)"]
    fixed = summary["baselines"]["fixed regions (6 k-means cells)"]["metrics"]
    assert 0 < fixed["fg_ari"]["ours"] <= 100 and fixed["fg_ari"]["paper"] is None
    table = (out / "table.md").read_text()
    assert "16x16" in table and "16 training images" in table and "6 test images" in table
    assert "| SA-MESH |" in table and "95.6 ± 0.2" in table and "24.3 ± 5.4" in table and "fixed regions" in table
    assert "| SA (Locatello et al., 2020) |" in table and "91.3 ± 0.3" in table  # a row of the paper's alone
    assert "Table 3" in stdout


def test_show_run_draws_every_run_and_samples_without_run(finished, tmp_path, run_cli):
    out = finished[0]
    code, stdout, stderr = run_cli(show_main, ["--run", out, "--num", "2", "--out", tmp_path / "pics"])
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["sa-mesh_seed0.png", "sa_seed0.png"]
    code, stdout, _ = run_cli(show_main, ["--run", out / "sa" / "seed0", "--num", "1"])
    assert code == 0 and str(out / "sa" / "seed0" / EXAMPLES) in stdout
    code, _, stderr = run_cli(show_main, ["--run", tmp_path])
    assert code == 2 and CHECKPOINT_NAME in stderr
    code, stdout, _ = run_cli(show_main, ["--num", "2", "--out", tmp_path / "samples.png"])
    assert code == 0 and (tmp_path / "samples.png").is_file()


def test_paper_budgets_follow_the_official_schedule():
    for budgets, n_train in ((BUDGETS, 60_000), (CLEVRTEX_BUDGETS, 40_000)):
        b = budgets["paper"]
        assert b.steps == 530 * (n_train // 64) and b.batch_size == 64 and b.lr == 4e-4
        assert (b.warmup_steps, b.decay_rate, b.decay_steps, b.grad_clip) == (10_000, 0.5, 100_000, 0.1)
        assert b.overrides["resolution"] == 64
    assert BUDGETS["paper"].steps == 496_610 and CLEVRTEX_BUDGETS["paper"].steps == 331_250
    exp = runner.Experiment(config=TASK.config(resolution=64), budget=BUDGETS["paper"], variants=("sa",), out="x")
    tc = exp.train_config(TASK, "sa", 0)
    assert tc.warmup_steps == 10_000 and tc.decay_steps == 100_000 and tc.grad_clip == 0.1


def test_model_of_each_variant_is_stored_with_the_run(finished):
    from slots.train import load_checkpoint

    ckpt = load_checkpoint(finished[0] / "sa-mesh" / "seed0" / CHECKPOINT_NAME)
    model = ckpt["task_config"]["model"]
    assert model["slot_attention"]["n_slots"] == 6 and model["slot_attention"]["cost"] == "l2"
    assert model["slot_attention"]["ot"]["normalize_plan"] is False
    assert model["encoder"]["channels"] == [32, 32, 32, 32] and model["decoder"]["channels"] == [32, 32, 32]


@pytest.mark.parametrize("args,match", [
    (["--data-variant", "binarized"], "data_variant must be one of"),
    (["--n-train", "2"], "n_train (2) must be at least one batch (4)"),
    (["--resolution", "128"], "resolution 128 exceeds the data's 64x64 images"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, args, match, run_cli):
    out = tmp_path / "run"
    code, _, stderr = run_cli(mds_main, [*TINY, "--variant", "sa", *args, "--out", out])
    assert code == 2 and match in stderr
    assert not out.exists()


def test_clevrtex_variant_needs_real_data(tmp_path, run_cli):
    code, _, stderr = run_cli(clevrtex_main, [*TINY, "--data-variant", "camo", "--out", tmp_path / "run"])
    assert code == 2 and "needs --data-dir" in stderr
    assert not (tmp_path / "run").exists()
    assert CLEVRTEX.default_variants == ("sa", "sa-sh", "sa-mesh") and "sa-emd" in CLEVRTEX.variants


# ---- bad input data -----------------------------------------------------------------------------------------
def _record(image_hwc: np.ndarray, masks_ehw: np.ndarray | None) -> bytes:
    features = {"image": [bytes([v]) for v in image_hwc.ravel()]}
    if masks_ehw is not None:
        features["mask"] = [bytes([v]) for v in masks_ehw.transpose(1, 2, 0)[..., None].ravel()]
    return encode_example(features)


@pytest.fixture
def small_splits(monkeypatch):
    """Splits of a few records, so that a fixture file holds train and test."""
    monkeypatch.setitem(mds_data.SPLITS, "train", (0, 8))
    monkeypatch.setitem(mds_data.SPLITS, "val", (8, 2))
    monkeypatch.setitem(mds_data.SPLITS, "test", (10, 4))


def _write_multi_dsprites(folder: Path, n=14, drop_mask_at=None, corrupt=False):
    g = mds_data.generate_multi_dsprites(n, seed=1, progress=False)
    entities = (g["masks"][:, None] == np.arange(6)[None, :, None, None]).astype(np.uint8) * 255
    recs = [_record(g["images"][i].transpose(1, 2, 0), None if i == drop_mask_at else entities[i]) for i in range(n)]
    path = folder / "multi_dsprites_colored_on_grayscale.tfrecords"
    write_tfrecord(path, recs)
    if corrupt:
        raw = bytearray(path.read_bytes())
        raw[-200] ^= 0xFF  # inside the last record's data
        path.write_bytes(bytes(raw))
    return path


def test_real_multi_dsprites_file_trains(tmp_path, small_splits, run_cli):
    _write_multi_dsprites(tmp_path)
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(mds_main, [*TINY, "--variant", "sa", "--n-train", "8", "--n-test", "4",
                                           "--data-dir", tmp_path, "--steps", "2", "--out", out])
    assert code == 0, stderr
    assert f"real data from {tmp_path}" in (out / "table.md").read_text()


@pytest.mark.parametrize("breakage,match", [
    ("corrupt", r"multi_dsprites_colored_on_grayscale\.tfrecords: data CRC mismatch at record 13"),
    ("no mask", r"multi_dsprites_colored_on_grayscale\.tfrecords: record 3 has no bytes feature 'mask'"),
])
def test_bad_multi_dsprites_file_exits_2_before_any_run_folder(tmp_path, small_splits, breakage, match, run_cli):
    _write_multi_dsprites(tmp_path, drop_mask_at=3 if breakage == "no mask" else None, corrupt=breakage == "corrupt")
    out = tmp_path / "run"
    code, _, stderr = run_cli(mds_main, [*TINY, "--n-train", "8", "--n-test", "4", "--data-dir", tmp_path,
                                      "--out", out])
    assert code == 2 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(match, errors[0]), stderr
    assert not out.exists()


def test_wrong_image_size_exits_2_before_any_run_folder(tmp_path, small_splits, run_cli):
    with h5py.File(tmp_path / "multi_dsprites.h5", "w") as f:
        f["images"] = np.zeros((14, 32, 32, 3), np.uint8)
        f["masks"] = np.zeros((14, 32, 32), np.uint8)
    out = tmp_path / "run"
    code, _, stderr = run_cli(mds_main, [*TINY, "--n-train", "8", "--n-test", "4", "--data-dir", tmp_path, "--out", out])
    assert code == 2
    assert "Multi-dSprites train split" in stderr and "images are (3, 32, 32), expected (3, 64, 64)" in stderr
    assert not out.exists()


def test_bad_clevrtex_folder_exits_2_naming_the_file(tmp_path, run_cli):
    root = tmp_path / "clevrtex_full"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        stem = root / f"CLEVRTEX_full_{i:06d}"
        size = (320, 240) if i != 7 else (160, 120)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(f"{stem}.png")
        Image.fromarray(np.zeros((size[1], size[0]), np.uint8)).save(f"{stem}_flat.png")
        Path(f"{stem}.json").write_text(json.dumps({"objects": []}))
    out = tmp_path / "run"
    code, _, stderr = run_cli(clevrtex_main, [*TINY, "--data-dir", root, "--out", out])
    assert code == 2 and "CLEVRTEX_full_000007.png: image is 160x120, expected 320x240" in stderr
    assert not out.exists()
    (root / "CLEVRTEX_full_000007.png").unlink()
    Image.fromarray(np.zeros((240, 320, 3), np.uint8)).save(root / "CLEVRTEX_full_000007.png")
    (root / "CLEVRTEX_full_000004_flat.png").unlink()
    code, _, stderr = run_cli(clevrtex_main, [*TINY, "--data-dir", root, "--out", out])
    assert code == 2 and "CLEVRTEX_full_000004_flat.png does not exist" in stderr
    assert not out.exists()
