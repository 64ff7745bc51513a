"""Tests of the CLEVR property-prediction experiment (``python -m tasks.clevr``, Tables 2 and 6): the 19-number
targets, the resize, the AP metric read from Locatello et al.'s layout, the model (shapes, memory
layouts and precisions), a tiny end-to-end run and its table, and bad real data refused before any work."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tasks.clevr.experiment as experiment
import tasks.clevr.data as clevr_data
from slots import CLEVR_AP_THRESHOLDS, clevr_average_precision, hungarian_huber_loss, native_bf16
from slots.train import RESULTS_NAME
from tasks.clevr import (SET_PREDICTION_SLICES, BUDGETS, ClevrConfig, ClevrModelConfig, ClevrSet,
                         ClevrSetModel, PAPER_TABLE2, PAPER_TABLE6, average_precisions, generate_clevr,
                         resize_images, scenes_to_targets, set_prediction_targets, decode_scenes)
from tasks.clevr.__main__ import build_parser, config_from_args, main

TINY = ["--steps", "3", "--n-train", "32", "--n-test", "16", "--batch-size", "16", "--image-size", "32",
        "--variant", "sa-mesh", "--jobs", "1", "--threads", "1", "--no-progress"]
SUMMARY = ("table.md", "table.json", "ap_vs_steps.png")
AP_KEYS = ["ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125", "ap_0.0625"]


@pytest.fixture(scope="session")
def run_main(run_cli):
    return lambda argv: run_cli(main, argv)


@pytest.fixture(scope="module", autouse=True)
def _module_state(tmp_path_factory):
    """Generated scenes go to a cache folder of this module; loaded sets and the torch thread count set by
    the runs (--threads 1) are not shared with other modules."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SA_MESH_CACHE", str(tmp_path_factory.mktemp("cache")))
        clevr_data._LOADED.clear()
        yield
    clevr_data._LOADED.clear()
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread (as each run of --jobs on a 2-core machine): small steps on a busy machine do not wait
    for a second thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _obj(coords, material="rubber", color="red", shape="cube", size="large"):
    return {"3d_coords": list(coords), "pixel_coords": [0, 0, 10.0], "rotation": 0.0, "material": material,
            "color": color, "shape": shape, "size": size}


# ---- targets and images -----------------------------------------------------------------------------------------
def test_set_prediction_targets_follow_locatello_layout():
    scenes = [{"image_filename": "a.png", "objects": [_obj((3.0, -1.5, 0.7), "metal", "brown", "cylinder", "small"),
                                                      _obj((0.0, 0.3, 0.35), "rubber", "cyan", "sphere", "large")]}]
    t = set_prediction_targets(*scenes_to_targets(scenes))
    assert t.shape == (1, 10, 19) and t.dtype == torch.float32
    # (x + 3) / 6 | size (large, small) | material (rubber, metal) | shape (sphere, cube, cylinder) |
    # colour (cyan, blue, yellow, purple, red, green, gray, brown) | real
    want0 = [1.0, 0.25, 3.7 / 6, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    want1 = [0.5, 3.3 / 6, 3.35 / 6, 1, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    torch.testing.assert_close(t[0, 0], torch.tensor(want0))
    torch.testing.assert_close(t[0, 1], torch.tensor(want1))
    assert not t[0, 2:].any()  # padding: all-zero rows, as Locatello et al.'s
    assert list(SET_PREDICTION_SLICES) == ["coords", "size", "material", "shape", "color", "real"]
    with pytest.raises(ValueError, match="need DSPN targets"):
        set_prediction_targets(torch.zeros(1, 10, 19), torch.zeros(1, 10, dtype=torch.bool))


def test_resize_matches_pil_bilinear():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 128, 128), dtype=np.uint8)
    small = resize_images(torch.from_numpy(images), 64)
    ref = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).resize((64, 64), Image.BILINEAR))
                    for im in images]).transpose(0, 3, 1, 2)
    assert small.dtype == torch.uint8 and small.shape == (3, 3, 64, 64)
    assert np.abs(small.numpy().astype(int) - ref).max() <= 1  # PIL rounds in fixed point
    assert resize_images(small, 64) is small


def test_clevr_set_batches_are_scaled_and_channels_last():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    ds = ClevrSet(images, torch.rand(5, 10, 19))
    batch = ds[torch.tensor([4, 1])]
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch["image"], images[[4, 1]].float() / 127.5 - 1)
    assert torch.equal(batch["target"], ds.targets[[4, 1]]) and len(ds) == 5


# ---- metric -----------------------------------------------------------------------------------------------------
def _reference_ap(pred, target):
    """AP in % from Locatello et al.'s fixed positions in the 19 numbers (coordinates 0-2, size 3-4, material
    5-6, shape 7-9, colour 10-17, real 18), through ``slots.clevr_average_precision`` (tested against a loop
    in tests/slots/test_metrics.py)."""
    def attrs(x):
        return np.stack([x[..., a:b].argmax(-1) for a, b in ((3, 5), (5, 7), (7, 10), (10, 18))], -1)

    pred, target = pred.double().numpy(), target.double().numpy()
    ap = clevr_average_precision(pred[..., :3] * 6, attrs(pred), pred[..., 18], target[..., :3] * 6, attrs(target),
                                 target[..., 18] == 1)
    return {key: 100 * ap[t] for key, t in zip(AP_KEYS, CLEVR_AP_THRESHOLDS)}


@pytest.fixture(scope="module")
def targets():
    data = generate_clevr(12, seed=5, split="val", image_size=32, progress=False)
    scenes = decode_scenes(data["scenes_json"], data["scenes_offsets"])
    return set_prediction_targets(*scenes_to_targets(scenes))


def test_ap_of_exact_shifted_and_wrong_predictions(targets):
    real = targets[..., -1:] > 0.5
    perfect = torch.where(real, targets, torch.zeros_like(targets))
    assert average_precisions(perfect, targets) == {k: 100.0 for k in AP_KEYS}
    shifted = perfect.clone()
    shifted[..., 0] += 0.3 / 6  # 0.3 CLEVR units along x
    ap = average_precisions(shifted, targets)
    assert [ap[k] for k in AP_KEYS] == [100.0, 100.0, 100.0, 0.0, 0.0, 0.0]
    far = perfect.clone()
    far[..., 1] += 10 / 6  # attributes right, 10 units away: only AP_inf counts them (the nearest object
    ap = average_precisions(far, targets)  # with the same attributes may be another one, already claimed)
    assert [ap[k] for k in AP_KEYS[1:]] == [0.0] * 5
    assert ap == pytest.approx(_reference_ap(far, targets)) and ap["ap_inf"] > 50
    wrong = perfect.clone()
    color = SET_PREDICTION_SLICES["color"]
    wrong[..., color] = perfect[..., color].roll(1, dims=-1)  # a wrong colour: a hit only on another object
    assert average_precisions(wrong, targets)["ap_inf"] < 50


def test_ap_reads_locatellos_layout(targets):
    g = torch.Generator().manual_seed(0)
    scale = torch.full((19,), 0.04)
    scale[:3] = 0.008  # coordinates: about 0.08 CLEVR units from the truth, so every threshold sees hits and misses
    pred = (targets + scale * torch.randn(targets.shape, generator=g)).clamp(0, 1)
    flip = torch.rand(targets.shape[:2], generator=g) < 0.2
    size = SET_PREDICTION_SLICES["size"]
    pred[..., size] = torch.where(flip[..., None], pred[..., size].flip(-1), pred[..., size])
    pred[..., -1] = torch.rand(targets.shape[:2], generator=g)
    ap = average_precisions(pred, targets)
    assert ap == pytest.approx(_reference_ap(pred, targets), abs=1e-9)
    assert 0 < ap["ap_0.0625"] < ap["ap_0.25"] < ap["ap_inf"] < 100


# ---- model ------------------------------------------------------------------------------------------------------
def test_model_is_locatellos_set_prediction_network():
    torch.manual_seed(0)
    model = ClevrSetModel(ClevrModelConfig.of("sa", image_size=64))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert model.encoder(x).shape == (2, 256, 64)  # strides (1, 2, 2, 1): 16 x 16 inputs
    out = model(x)
    assert out.shape == (2, 10, 19) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    convs = [m for m in model.encoder.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (3, 64, (5, 5), (1, 1)), (64, 64, (5, 5), (2, 2)), (64, 64, (5, 5), (2, 2)), (64, 64, (5, 5), (1, 1))]
    assert [m.out_features for m in model.encoder.mlp if isinstance(m, torch.nn.Linear)] == [64, 64]
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [64, 19]
    assert isinstance(model.head[-1], torch.nn.Sigmoid)
    sa = model.slot_attention.config
    assert (sa.n_slots, sa.dim, sa.n_iters, sa.mlp_hidden, sa.implicit_grad) == (10, 64, 3, 128, True)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 64, 64\)"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="resolution"):
        ClevrModelConfig.of("sa", image_size=0)
    with pytest.raises(ValueError, match="unknown variant 'sa-x'"):
        ClevrModelConfig.of("sa-x")
    cfg = ClevrModelConfig.of("sa-emd", image_size=32)
    assert ClevrModelConfig(**cfg.to_dict()) == cfg and cfg.slot_attention.cost == "l2"
    assert ClevrModelConfig.of("sa").slot_attention.cost == "dot"


@pytest.mark.parametrize("variant", ["sa", "sa-mesh"])
def test_memory_layout_and_bfloat16_keep_the_maths(variant):
    """Channels-last gives the plain float32 model's outputs and gradients; bfloat16 convolutions give them
    within bfloat16 rounding."""
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    target = torch.rand(4, 10, 19)
    outs, grads = [], []
    for bf16, channels_last in ((False, False), (False, True), (True, True)):
        torch.manual_seed(0)
        model = ClevrSetModel(ClevrModelConfig.of(variant, image_size=32, bf16=bf16, channels_last=channels_last))
        torch.manual_seed(1)  # the same slot initialization and MESH noise
        out = model(x)
        hungarian_huber_loss(out, target).backward()
        outs.append(out.detach())
        grads.append(model.encoder.convs[0].weight.grad.clone())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)
    assert (outs[2] - outs[0]).abs().max() < 0.02
    assert torch.nn.functional.cosine_similarity(grads[2].flatten(), grads[0].flatten(), dim=0) > 0.99


def test_a_few_steps_fit_a_small_batch():
    torch.manual_seed(0)
    model = ClevrSetModel(ClevrModelConfig.of("sa-mesh", image_size=32, bf16=True))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, target = torch.rand(8, 3, 32, 32) * 2 - 1, set_prediction_targets(torch.zeros(8, 10, 18),
                                                                           torch.rand(8, 10) < 0.5)
    losses = []
    for _ in range(30):
        loss = hungarian_huber_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


# ---- command line -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory, run_main):
    """A finished tiny run (generated scenes, SA-MESH, 3 steps): (out folder, exit status, stdout, stderr)."""
    out = tmp_path_factory.mktemp("finished")
    return (out, *run_main([*TINY, "--out", out]))


def test_end_to_end_writes_table_2_and_plot(finished):
    out, code, stdout, stderr = finished
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*SUMMARY, "sa-mesh"])
    results = json.loads((out / "sa-mesh" / "seed0" / RESULTS_NAME).read_text())
    assert results["step"] == 3 and results["task"] == "clevr"
    cfg = results["task_config"]
    assert cfg["image_size"] == 32 and cfg["implicit_grad"] is True and cfg["bf16"] == native_bf16()
    sa = cfg["model"]["slot_attention"]
    assert (sa["variant"], sa["n_slots"], sa["dim"], sa["input_dim"], sa["n_iters"], sa["mlp_hidden"]) == \
        ("sa-mesh", 10, 64, 64, 3, 128)
    assert set(results["eval"]) == set(AP_KEYS) and all(0 <= v <= 100 for v in results["eval"].values())

    summary = json.loads((out / "table.json").read_text())
    (row,) = summary["rows"]
    assert row["name"] == "SA-MESH" and row["per_seed"] == [results["eval"]["ap_inf"]]
    assert row["metrics"]["ap_0.25"]["paper"] == list(PAPER_TABLE2["sa-mesh"]["ap_0.25"]) == [91.1, 1.1]
    assert row["paper_time_h"] == 2.4 and row["time_vs"] is None  # SA was not run
    assert summary["paper_label"].startswith("Table 2")
    table = (out / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[1:5] == ["ours AP∞", "paper AP∞", "ours AP1", "paper AP1"] and "paper AP0.0625" in cols
    assert cols[-1] == "paper train time"
    assert "| iDSPN (Zhang et al., 2022) | - | 98.8 ± 0.5 |" in table
    assert "| 47.6 ± 0.8 |" in table and "| 2.4 h (1.09x) |" in table  # the paper's SA: 2.2 h
    assert "16 evaluation images" in table and "32 training images at 32 x 32" in table and "3 steps of batch 16" in table
    assert (out / "ap_vs_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table.strip() in stdout


def test_the_task_goes_to_worker_processes():
    """--jobs > 1 sends the task spec to spawned processes: everything in it must pickle."""
    assert pickle.loads(pickle.dumps(experiment.TASK)) == experiment.TASK


def test_budgets_and_table_6_options():
    parse = build_parser().parse_args
    cpu = config_from_args(parse([]))
    assert cpu.out == "runs/clevr/cpu" and cpu.variants == ("sa", "sa-sh", "sa-emd", "sa-mesh")
    assert (cpu.config.image_size, cpu.config.n_train, cpu.config.n_test) == (64, 10_000, 1_000)
    assert cpu.budget == BUDGETS["cpu"] and cpu.config.implicit_grad
    paper = config_from_args(parse(["--budget", "paper", "--no-implicit-grad", "--data-dir", "/d"]))
    assert paper.out == "runs/clevr/paper-real-no-implicit" and not paper.config.implicit_grad
    assert (paper.config.image_size, paper.config.n_train, paper.config.n_test) == (128, 70_000, 15_000)
    b = paper.budget
    assert (b.steps, b.batch_size, b.lr, b.warmup_steps, b.decay_rate, b.decay_steps) == \
        (150_000, 512, 4e-4, 1_000, 0.5, 50_000)
    assert experiment._paper(paper.config)["sa"] == PAPER_TABLE6["sa"]
    assert experiment._paper_label(paper.config).startswith("Table 6")
    mine = config_from_args(parse(["--image-size", "96", "--n-train", "500", "--bf16", "off"]))
    assert (mine.config.image_size, mine.config.n_train, mine.config.n_test, mine.config.bf16) == \
        (96, 500, 1_000, False)
    assert ClevrConfig().bf16 == native_bf16() and config_from_args(parse(["--bf16", "on"])).config.bf16


def test_options_that_do_not_fit_exit_2_and_write_nothing(tmp_path, run_main):
    code, stdout, stderr = run_main([*TINY, "--n-train", "8", "--out", tmp_path / "run"])
    assert code == 2 and stderr == "error: n_train (8) must be at least one batch (16)\n"
    assert not (tmp_path / "run").exists()


# ---- real data: bad input ---------------------------------------------------------------------------------------
def _write_real(root: Path, split: str, n: int) -> list[dict]:
    """A CLEVR v1.0 split of n random 480 x 320 RGBA images with generated scenes."""
    data = generate_clevr(n, seed=7, split=split, image_size=16, progress=False)
    scenes = decode_scenes(data["scenes_json"], data["scenes_offsets"])
    (root / "images" / split).mkdir(parents=True)
    (root / "scenes").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for sc in scenes:
        img = rng.integers(0, 256, (320, 480, 4), dtype=np.uint8)
        Image.fromarray(img, "RGBA").save(root / "images" / split / sc["image_filename"])
    (root / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"info": {}, "scenes": scenes}))
    return scenes


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("real") / "CLEVR_v1.0"
    return root, {split: _write_real(root, split, n) for split, n in (("train", 16), ("val", 4))}


REAL = ["--steps", "1", "--n-train", "16", "--n-test", "4", "--batch-size", "16", "--image-size", "32",
        "--variant", "sa", "--jobs", "1", "--threads", "1", "--no-progress"]


def _damage(root: Path, scenes: dict, how: str) -> str:
    """Damage a copy of the real tree; returns the file the error must name."""
    name = scenes["train"][3]["image_filename"]
    if how == "missing_scenes":
        (root / "scenes" / "CLEVR_val_scenes.json").unlink()
        return "CLEVR_val_scenes.json"
    if how == "missing_image":
        (root / "images" / "train" / name).unlink()
        return name
    if how == "wrong_size":
        Image.fromarray(np.zeros((100, 150, 3), np.uint8)).save(root / "images" / "train" / name)
        return f"{name}: image is 150x100, expected 480x320"
    if how == "unknown_attribute":
        bad = json.loads(json.dumps(scenes["val"]))
        bad[2]["objects"][1]["color"] = "pink"
        (root / "scenes" / "CLEVR_val_scenes.json").write_text(json.dumps({"scenes": bad}))
        return "CLEVR_val_scenes.json: scene 2 (CLEVR_val_000002.png), object 1: unknown color 'pink'"
    if how == "too_few":
        return "has 16 scenes, fewer than the 20 asked for (--n-train)"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing_scenes", "missing_image", "wrong_size", "unknown_attribute", "too_few"])
def test_bad_real_data_is_one_error_naming_the_file_before_any_work(real_tree, tmp_path, monkeypatch, how, run_main):
    import shutil

    monkeypatch.setenv("SA_MESH_CACHE", str(tmp_path / "cache"))
    clevr_data._LOADED.clear()
    root = tmp_path / "CLEVR_v1.0"
    shutil.copytree(real_tree[0], root)
    expected = _damage(root, real_tree[1], how)
    extra = ["--n-train", "20"] if how == "too_few" else []
    out = tmp_path / "run"
    code, stdout, stderr = run_main([*REAL, *extra, "--data-dir", root, "--out", out])
    assert code == 2, stdout + stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and expected in stderr
    assert not out.exists()


def test_real_data_trains(real_tree, tmp_path, monkeypatch, run_main):
    monkeypatch.setenv("SA_MESH_CACHE", str(tmp_path / "cache"))
    clevr_data._LOADED.clear()
    code, stdout, stderr = run_main([*REAL, "--data-dir", real_tree[0].parent, "--out", tmp_path / "run"])
    assert code == 0, stderr
    assert f"CLEVR v1.0 from {real_tree[0].parent}" in stdout
    test = experiment.load_split(ClevrConfig(data_dir=str(real_tree[0]), n_train=16, n_test=4, image_size=32), "val")
    want = set_prediction_targets(*scenes_to_targets(real_tree[1]["val"]))
    assert torch.equal(test.targets, want) and test.images.shape == (4, 32, 32, 3)

