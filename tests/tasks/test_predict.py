"""Tests of ``python -m tasks.predict``: the documented files for a folder of pictures, computed from inputs
prepared as the task's data pipeline prepares its images; pictures that cannot be used are refused by name
before anything is written."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.predict import main
from tasks.runs import load_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _picture(path: Path, height: int, width: int, seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(data[..., 0] if channels == 1 else data, mode).save(path)
    return path


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture
def pictures(tmp_path):
    """A folder of a 64 x 64 PNG, a 100 x 80 JPEG and a text file (skipped)."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    _picture(folder / "square.png", 64, 64, 0)
    _picture(folder / "wide.jpg", 80, 100, 1)
    (folder / "notes.txt").write_text("not a picture")
    return folder


def test_autoencoder_files_for_a_folder_of_pictures(tiny_run, pictures, tmp_path, run_cli):
    from slots import to_model_range
    from tasks.object_discovery import ImageSet
    from tasks.scenes.records import SceneData
    from tasks.scenes.show import colorize_masks

    run_dir = tiny_run("multi_dsprites")
    code, stdout, stderr = run_cli(main, [run_dir, pictures, "--out", tmp_path / "out"])
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["square", "wide"]
    run = load_run(run_dir)
    K = run.model.config.slot_attention.n_slots
    R = run.config.resolution
    files = sorted(p.name for p in (tmp_path / "out" / "square").iterdir())
    assert files == sorted(["input.png", "recon.png", "segmentation.png", "slots.npy",
                            *(f"mask_{k:02d}.png" for k in range(K))])

    # the model's input is the Multi-dSprites pipeline's: a 64 x 64 picture resized by ImageSet
    picture = _read(pictures / "square.png").transpose(2, 0, 1)[None]
    expected = ImageSet(SceneData(picture, np.zeros((1, 64, 64), np.uint8)), R).images  # (1, 3, R, R)
    assert np.array_equal(_read(tmp_path / "out" / "square" / "input.png"), expected[0].permute(1, 2, 0).numpy())
    torch.manual_seed(0)
    with torch.no_grad():
        out = run.model(to_model_range(expected))
    folder = tmp_path / "out" / "square"
    assert np.array_equal(np.load(folder / "slots.npy"), out.slots[0].numpy())
    masks = np.stack([_read(folder / f"mask_{k:02d}.png") for k in range(K)]).astype(int)  # (K, R, R)
    assert masks.shape == (K, R, R)
    assert np.abs(masks - (out.masks[0].numpy() * 255).round()).max() == 0
    assert np.array_equal(_read(folder / "segmentation.png"), colorize_masks(out.masks[0].argmax(0) + 1))
    recon = _read(folder / "recon.png").astype(float) / 255 * 2 - 1
    assert np.abs(recon - out.recon[0].permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6
    # another size is resized to 64 x 64 first
    assert _read(tmp_path / "out" / "wide" / "input.png").shape == (R, R, 3)


def test_predictions_do_not_depend_on_the_other_inputs(tiny_run, pictures, tmp_path, run_cli):
    run_dir = tiny_run("multi_dsprites")
    assert run_cli(main, [run_dir, pictures / "wide.jpg", "--out", tmp_path / "alone"])[0] == 0
    assert run_cli(main, [run_dir, pictures, "--out", tmp_path / "together"])[0] == 0
    assert np.array_equal(np.load(tmp_path / "alone" / "wide" / "slots.npy"),
                          np.load(tmp_path / "together" / "wide" / "slots.npy"))
    assert run_cli(main, [run_dir, pictures, "--out", tmp_path / "seed1", "--seed", "1"])[0] == 0
    assert not np.array_equal(np.load(tmp_path / "seed1" / "wide" / "slots.npy"),
                              np.load(tmp_path / "together" / "wide" / "slots.npy"))


def test_clevr_writes_objects_attention_and_slots(tiny_run, pictures, tmp_path, run_cli):
    from tasks.clevr.data import DSPN_CLASSES, resize_images

    run_dir = tiny_run("clevr")
    _picture(pictures / "frame.png", 320, 480, 2)
    code, _, stderr = run_cli(main, [run_dir, pictures / "frame.png", "--out", tmp_path / "out"])
    assert code == 0, stderr
    folder = tmp_path / "out" / "frame"
    run = load_run(run_dir)
    S, K = run.config.image_size, run.model.config.slot_attention.n_slots
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["input.png", "objects.json", "slots.npy", *(f"attention_{k:02d}.png" for k in range(K))])
    # CLEVR's pipeline: the whole frame to 128 x 128 with PIL bilinear, then to the run's size
    frame = Image.open(pictures / "frame.png").resize((128, 128), resample=Image.BILINEAR)
    expected = resize_images(torch.from_numpy(np.asarray(frame).transpose(2, 0, 1).copy())[None], S)[0]
    assert np.array_equal(_read(folder / "input.png"), expected.permute(1, 2, 0).numpy())
    objects = json.loads((folder / "objects.json").read_text())
    torch.manual_seed(0)
    with torch.no_grad():
        out = run.model.infer(expected[None].float() / 255 * 2 - 1)
    assert [o["slot"] for o in objects] == list(range(K))
    for o, row in zip(objects, out.pred[0]):
        assert o["real"] == pytest.approx(float(row[-1]), abs=1e-6)
        assert o["shape"] in DSPN_CLASSES["shape"] and o["color"] in DSPN_CLASSES["color"]
        assert all(-3 <= c <= 3 for c in o["3d_coords"])
    assert np.load(folder / "slots.npy").shape == (K, run.model.config.slot_attention.dim)
    attention = np.stack([_read(folder / f"attention_{k:02d}.png") for k in range(K)])
    assert attention.shape == (K, S, S) and attention.max() == 255


def test_clevrer_pairs_from_a_folder_or_two_files(tiny_run, tmp_path, run_cli):
    from tasks.clevrer.real import _resize

    run_dir = tiny_run("clevrer")
    pair = tmp_path / "video_7"
    pair.mkdir()
    first, second = _picture(pair / "0001.png", 320, 480, 3), _picture(pair / "0016.png", 320, 480, 4)
    code, _, stderr = run_cli(main, [run_dir, pair, first, second, "--out", tmp_path / "out"])
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001", "video_7"]
    run = load_run(run_dir)
    K, D = run.model.config.autoencoder.slot_attention.n_slots, run.model.config.autoencoder.slot_attention.dim
    folder = tmp_path / "out" / "video_7"
    per_frame = ["input.png", "recon.png", "segmentation.png", *(f"mask_{k:02d}.png" for k in range(K))]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["slots.npy", *(f"frame{t}_{name}" for t in range(2) for name in per_frame)])
    assert np.load(folder / "slots.npy").shape == (2, K, D)
    assert np.array_equal(np.load(folder / "slots.npy"), np.load(tmp_path / "out" / "0001" / "slots.npy"))
    # the real CLEVRER reader's resize of the two frames
    frames, _ = _resize(np.stack([_read(first), _read(second)]), np.zeros((2, 320, 480), np.uint8), (64, 64), False)
    for t in range(2):
        assert np.array_equal(_read(folder / f"frame{t}_input.png"), frames[t].transpose(1, 2, 0))


def test_clevrtex_input_is_clevrtexs_centre_crop(tmp_path):
    from tasks.clevrtex.data import crop_and_resize
    from tasks.clevrtex.experiment import TASK, ClevrTexConfig
    from tasks.predict import predict
    from tasks.runs import Run

    cfg = ClevrTexConfig(resolution=64)
    torch.manual_seed(0)
    run = Run(TASK, cfg, "sa", 0, TASK.build(cfg, "sa").eval(), 0, {"seed": 0}, tmp_path)  # an untrained model
    path = _picture(tmp_path / "scene.png", 240, 320, 5)
    predict(run, [path], tmp_path / "out")
    expected = crop_and_resize(Image.open(path), Image.new("L", (320, 240)))[0]
    assert np.array_equal(_read(tmp_path / "out" / "scene" / "input.png"), expected.transpose(1, 2, 0))


def _gif(path):
    Image.new("RGB", (8, 8)).save(path, format="GIF")
    return path


@pytest.mark.parametrize("make, match", [
    (lambda d: _picture(d / "gray.png", 64, 64, 0, "L"), "gray.png has 1 channel (grayscale); the model takes RGB"),
    (lambda d: _picture(d / "alpha.png", 64, 64, 0, "RGBA"), "alpha.png has 4 channels (RGB and alpha)"),
    (lambda d: d.joinpath("text.png").write_text("hello") and d / "text.png", "text.png is not a PNG or JPEG"),
    (lambda d: _gif(d / "anim.gif"), "anim.gif is a GIF picture; predict reads PNG or JPEG"),
    (lambda d: d / "missing.png", "missing.png does not exist"),
    (lambda d: d.joinpath("empty").mkdir() or d / "empty", "holds no .png, .jpg or .jpeg files"),
])
def test_unusable_inputs_are_refused_by_name_and_nothing_is_written(tiny_run, pictures, tmp_path, make, match,
                                                                   run_cli):
    bad = make(tmp_path)
    code, stdout, stderr = run_cli(main, [tiny_run("multi_dsprites"), pictures, bad, "--out", tmp_path / "out"])
    assert code == 2 and match in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_clevrer_inputs_must_make_pairs(tiny_run, pictures, tmp_path, run_cli):
    run_dir = tiny_run("clevrer")
    code, _, stderr = run_cli(main, [run_dir, pictures / "square.png", "--out", tmp_path / "out"])
    assert code == 2 and "1 picture files do not make pairs of 2 frames" in stderr
    _picture(pictures / "third.png", 64, 64, 9)
    code, _, stderr = run_cli(main, [run_dir, pictures, "--out", tmp_path / "out"])
    assert code == 2 and "holds 3 pictures; a pair is a folder of exactly 2 frames" in stderr


def test_same_names_random_objects_and_the_command(tiny_run, pictures, tmp_path, run_cli):
    other = tmp_path / "other"
    other.mkdir()
    _picture(other / "square.png", 64, 64, 3)
    code, _, stderr = run_cli(main, [tiny_run("multi_dsprites"), pictures, other, "--out", tmp_path / "out"])
    assert code == 2 and "would both be written to <out>/square/" in stderr
    code, _, stderr = run_cli(main, [tiny_run("random_objects"), pictures, "--out", tmp_path / "out"])
    assert code == 2 and "whose inputs are not pictures" in stderr
    (tmp_path / "file").write_text("")
    code, _, stderr = run_cli(main, [tiny_run("multi_dsprites"), pictures, "--out", tmp_path / "file" / "x"])
    assert code == 2 and "is a file or lies under one" in stderr
    proc = subprocess.run([sys.executable, "-m", "tasks.predict", str(tiny_run("multi_dsprites")), str(pictures),
                           "--out", str(tmp_path / "cli")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cli" / "square" / "segmentation.png").is_file()
