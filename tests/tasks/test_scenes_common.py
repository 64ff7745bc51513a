"""Tests for tasks.scenes: the cache (versioning, corruption, atomic writes), SceneData and save_grid."""
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.scenes import (CacheWarning, DataFormatError, MissingDataError, SceneData, cache_paths, cached,
                          colorize_masks, overlay_masks, require_dir, require_file, save_grid)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"images": rng.integers(0, 256, (6, 3, 16, 16), dtype=np.uint8),
            "masks": rng.integers(0, 4, (6, 16, 16)).astype(np.uint8),
            "coords": rng.normal(size=(6, 4, 3)).astype(np.float32)}


class _Counter:
    def __init__(self, seed=0):
        self.calls, self.seed = 0, seed

    def __call__(self):
        self.calls += 1
        return _arrays(self.seed)


# ---- cache ---------------------------------------------------------------------------------------------------
def test_cache_roundtrip_and_reuse(tmp_path):
    build = _Counter()
    first = cached("demo", {"n": 6, "size": (16, 16)}, "1", build, tmp_path)
    second = cached("demo", {"n": 6, "size": [16, 16]}, "1", build, tmp_path)  # tuple == list in params
    assert build.calls == 1
    ref = _arrays()
    for k in ref:
        assert second[k].dtype == ref[k].dtype and np.array_equal(second[k], ref[k])
        assert np.array_equal(first[k], ref[k])
    npz, side = cache_paths("demo", {"n": 6, "size": [16, 16]}, "1", tmp_path)
    meta = json.loads(side.read_text())
    assert meta["version"] == "1" and meta["params"] == {"n": 6, "size": [16, 16]}
    assert meta["arrays"]["images"] == {"shape": [6, 3, 16, 16], "dtype": "|u1"}
    assert len(meta["sha256"]) == 64
    # No temp files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([npz.name, side.name])


def test_cache_regenerates_on_version_or_params_change(tmp_path):
    build = _Counter()
    cached("demo", {"n": 6}, "1", build, tmp_path)
    cached("demo", {"n": 6}, "2", build, tmp_path)
    assert build.calls == 2
    cached("demo", {"n": 7}, "2", build, tmp_path)
    assert build.calls == 3
    cached("demo", {"n": 6}, "1", build, tmp_path)  # the first entry is still valid
    assert build.calls == 3


def test_cache_default_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SA_MESH_CACHE", str(tmp_path / "c"))
    build = _Counter()
    cached("demo", {}, "1", build)
    assert build.calls == 1 and len(list((tmp_path / "c").glob("demo-*.npz"))) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage_sidecar", "drop_sidecar", "drop_npz",
                                    "sidecar_other_params"])
def test_cache_damaged_entry_is_rebuilt_with_warning(tmp_path, damage):
    build = _Counter()
    cached("demo", {"n": 6}, "1", build, tmp_path)
    npz, side = cache_paths("demo", {"n": 6}, "1", tmp_path)
    raw = npz.read_bytes()
    if damage == "truncate":
        npz.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        b = bytearray(raw)
        b[len(b) // 2] ^= 0xFF
        npz.write_bytes(bytes(b))
    elif damage == "garbage_sidecar":
        side.write_text("{not json")
    elif damage == "drop_sidecar":
        side.unlink()
    elif damage == "drop_npz":
        npz.unlink()
    elif damage == "sidecar_other_params":
        meta = json.loads(side.read_text())
        meta["params"] = {"n": 5}
        side.write_text(json.dumps(meta))
    with pytest.warns(CacheWarning, match="rebuilding"):
        out = cached("demo", {"n": 6}, "1", build, tmp_path)
    assert build.calls == 2
    assert np.array_equal(out["images"], _arrays()["images"])
    # The rebuilt entry is valid again: no further build, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached("demo", {"n": 6}, "1", build, tmp_path)
    assert build.calls == 2


def test_cache_corruption_consistent_with_checksum_is_caught_by_array_check(tmp_path):
    # A valid npz with different arrays, with a sidecar whose checksum was updated but not its array list.
    build = _Counter()
    cached("demo", {"n": 6}, "1", build, tmp_path)
    npz, side = cache_paths("demo", {"n": 6}, "1", tmp_path)
    np.savez_compressed(npz, images=np.zeros(3, np.uint8))
    meta = json.loads(side.read_text())
    import hashlib
    meta["sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))
    with pytest.warns(CacheWarning, match="arrays differ"):
        out = cached("demo", {"n": 6}, "1", build, tmp_path)
    assert build.calls == 2 and out["images"].shape == (6, 3, 16, 16)


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    build = _Counter()
    cached("demo", {"n": 6}, "1", build, tmp_path)
    npz, side = cache_paths("demo", {"n": 6}, "1", tmp_path)
    before = npz.read_bytes(), side.read_text()

    # A rebuild (version bump of the sidecar forces it) that dies inside os.replace must leave the old
    # files untouched and no temp files behind.
    meta = json.loads(side.read_text())
    meta["sha256"] = "0" * 64
    side.write_text(json.dumps(meta))
    damaged_side = side.read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.warns(CacheWarning), pytest.raises(OSError, match="disk full"):
        cached("demo", {"n": 6}, "1", build, tmp_path)
    assert npz.read_bytes() == before[0] and side.read_text() == damaged_side
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([npz.name, side.name])


_CONCURRENT_BUILD = """
import sys, time
from pathlib import Path
import numpy as np
from tasks.scenes import cached

cache_dir, log, out = map(Path, sys.argv[1:])

def build():
    # each build signs the log, then waits (up to 6 s) for a second build to start: two builds of one entry
    # at once would both get past this point together
    with open(log, "a") as f:
        f.write("build\\n")
    deadline = time.monotonic() + 6
    while log.read_text().count("build") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    rng = np.random.default_rng(0)
    return {"images": rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)}

arrays = cached("race", {"n": 64}, "1", build, cache_dir)
np.save(out, arrays["images"])
"""


def test_two_concurrent_builds_of_one_entry_give_one_build_and_a_valid_cache(tmp_path):
    """Two processes ask for the same missing entry at once: one builds it while the other waits for the lock
    and then reads it; both get the same arrays, with no warning, and the cache holds one valid entry."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cache_dir, log = tmp_path / "cache", tmp_path / "builds.log"
    log.write_text("")
    procs = [subprocess.Popen([sys.executable, "-W", "error::UserWarning", "-c", _CONCURRENT_BUILD, str(cache_dir),
                               str(log), str(tmp_path / f"out{i}.npy")], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(repo)))
             for i in range(2)]
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output.decode()
    assert log.read_text() == "build\n"
    first, second = np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy")
    assert first.shape == (64, 3, 32, 32) and np.array_equal(first, second)
    npz, side = cache_paths("race", {"n": 64}, "1", cache_dir)
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([npz.name, side.name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cached("race", {"n": 64}, "1", lambda: pytest.fail("the entry was not valid"), cache_dir)
    assert np.array_equal(again["images"], first)


def test_cache_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="name"):
        cached("bad/name", {}, "1", _Counter(), tmp_path)
    with pytest.raises(ValueError, match="version"):
        cached("demo", {}, "", _Counter(), tmp_path)
    with pytest.raises(ValueError, match="JSON"):
        cached("demo", {"f": object()}, "1", _Counter(), tmp_path)
    with pytest.raises(ValueError, match="finite"):
        cached("demo", {"f": float("nan")}, "1", _Counter(), tmp_path)
    with pytest.raises(ValueError, match="object dtype"):
        cached("demo", {}, "1", lambda: {"a": np.array([None])}, tmp_path)
    with pytest.raises(ValueError, match="not a numpy array"):
        cached("demo", {}, "1", lambda: {"a": [1, 2]}, tmp_path)


# ---- SceneData -------------------------------------------------------------------------------------------
def _scene(n=5, t=None, k=3, h=8, w=10, targets=False):
    g = torch.Generator().manual_seed(0)
    lead = (n,) if t is None else (n, t)
    images = torch.randint(0, 256, (*lead, 3, h, w), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, k + 1, (*lead, h, w), generator=g).to(torch.uint8)
    kw = {}
    if targets:
        kw = {"targets": torch.randn(n, k, 4, generator=g), "presence": torch.rand(n, k, generator=g) > 0.3}
    return SceneData(images, masks, ids=[f"s{i}" for i in range(n)], meta={"source": "test"}, **kw)


def test_scenedata_accepts_numpy_without_copy():
    imgs = np.zeros((2, 3, 4, 4), np.uint8)
    d = SceneData(imgs, np.zeros((2, 4, 4), np.int64))
    imgs[0, 0, 0, 0] = 7
    assert d.images[0, 0, 0, 0] == 7 and d.images.dtype == torch.uint8 and d.masks.dtype == torch.int64


@pytest.mark.parametrize("kwargs, match", [
    ({"images": torch.zeros(2, 3, 4, 4), "masks": torch.zeros(2, 4, 4, dtype=torch.uint8)}, "uint8"),
    ({"images": torch.zeros(2, 4, 4, 4, dtype=torch.uint8), "masks": torch.zeros(2, 4, 4, dtype=torch.uint8)}, "shape"),
    ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "masks": torch.zeros(2, 4, 5, dtype=torch.uint8)}, "does not match"),
    ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "masks": torch.zeros(2, 4, 4)}, "integer"),
    ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "masks": -torch.ones(2, 4, 4, dtype=torch.int64)}, "negative"),
    ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "masks": torch.zeros(2, 4, 4, dtype=torch.uint8),
      "targets": torch.zeros(2, 3, 5)}, "together"),
    ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "masks": torch.zeros(2, 4, 4, dtype=torch.uint8),
      "targets": torch.zeros(2, 3, 5), "presence": torch.zeros(2, 4, dtype=torch.bool)}, "presence"),
    ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "masks": torch.zeros(2, 4, 4, dtype=torch.uint8),
      "targets": torch.zeros(2, 3, 5, dtype=torch.int64), "presence": torch.zeros(2, 3, dtype=torch.bool)}, "float"),
    ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "masks": torch.zeros(2, 4, 4, dtype=torch.uint8),
      "targets": torch.zeros(2, 3, 5), "presence": torch.full((2, 3), 2.0)}, "0/1"),
    ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "masks": torch.zeros(2, 4, 4, dtype=torch.uint8),
      "ids": ["a"]}, "ids"),
    ({"images": [[0]], "masks": torch.zeros(2, 4, 4, dtype=torch.uint8)}, "numpy"),
])
def test_scenedata_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SceneData(**kwargs)


def test_scenedata_presence_float_converted_to_bool():
    d = SceneData(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, 2, 2, dtype=torch.uint8),
                  targets=torch.zeros(1, 2, 3), presence=torch.tensor([[1.0, 0.0]]))
    assert d.presence.dtype == torch.bool and d.presence.tolist() == [[True, False]]


def test_scenedata_indexing_and_batches():
    d = _scene(n=7, targets=True)
    assert len(d) == 7
    item = d[2]
    assert torch.equal(item["image"], d.images[2]) and torch.equal(item["mask"], d.masks[2])
    assert torch.equal(item["target"], d.targets[2]) and torch.equal(item["presence"], d.presence[2])
    assert torch.equal(d[-1]["image"], d.images[6])
    with pytest.raises(IndexError):
        d[7]
    sub = d[1:5:2]
    assert sub.ids == ["s1", "s3"] and torch.equal(sub.images, d.images[[1, 3]])
    assert torch.equal(sub.targets, d.targets[[1, 3]]) and sub.meta == {"source": "test"}
    fancy = d[[6, 0]]
    assert fancy.ids == ["s6", "s0"] and torch.equal(fancy.masks, d.masks[[6, 0]])
    boolean = d[torch.tensor([True, False] * 3 + [True])]
    assert boolean.ids == ["s0", "s2", "s4", "s6"]
    assert len(d[[]]) == 0
    got = [b.ids for b in d.batches(3)]
    assert got == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6"]]
    assert [len(b) for b in d.batches(3, drop_last=True)] == [3, 3]
    shuffled = [i for b in d.batches(2, shuffle=True, seed=1) for i in b.ids]
    assert sorted(shuffled) == sorted(d.ids) and shuffled == [i for b in d.batches(2, shuffle=True, seed=1) for i in b.ids]
    loader = torch.utils.data.DataLoader(d, batch_size=4)
    first = next(iter(loader))
    assert torch.equal(first["image"], d.images[:4]) and torch.equal(first["presence"], d.presence[:4])


def test_scenedata_onehot_matches_index_maps():
    for d in (_scene(), _scene(t=2)):
        oh = d.to_onehot_masks(5)
        lead = d.masks.shape[:-2]
        assert oh.shape == (*lead, 6, 8, 10) and oh.dtype == torch.float32
        assert torch.equal(oh.sum(-3), torch.ones(*lead, 8, 10))  # a partition of the image
        assert torch.equal(oh.argmax(-3), d.masks.long())
        assert oh[..., 4:, :, :].sum() == 0  # indices above 3 are never used
    with pytest.raises(ValueError, match="max_objects"):
        _scene(k=3).to_onehot_masks(2)


def test_scenedata_video_and_counts():
    d = _scene(n=2, t=3, k=2)
    assert d.is_video and d.num_frames == 3 and d.image_size == (8, 10)
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
    masks[0, 0, 0, 0], masks[0, 0, 1, 1], masks[0, 1, 2, 2] = 1, 3, 3
    v = SceneData(torch.zeros(1, 2, 3, 4, 4, dtype=torch.uint8), masks)
    assert v.num_objects().tolist() == [[2, 1]] and v.max_objects() == 3


def test_scenedata_arrays_roundtrip_and_concat(tmp_path):
    d = _scene(targets=True)
    arrays = d.to_arrays()
    back = cached("sd", {}, "1", lambda: arrays, tmp_path)
    back = cached("sd", {}, "1", lambda: 1 / 0, tmp_path)  # read from disk
    e = SceneData.from_arrays(back, meta={"source": "test"})
    assert e.ids == d.ids and torch.equal(e.images, d.images) and torch.equal(e.presence, d.presence)
    assert torch.equal(e.targets, d.targets) and e.masks.dtype == d.masks.dtype
    c = SceneData.concat([d[:2], d[2:]])
    assert c.ids == d.ids and torch.equal(c.images, d.images) and torch.equal(c.targets, d.targets)
    with pytest.raises(ValueError, match="incompatible"):
        SceneData.concat([_scene(h=8), _scene(h=6)])
    with pytest.raises(ValueError, match="missing"):
        SceneData.from_arrays({"images": arrays["images"]})


def test_require_helpers_name_the_path(tmp_path):
    with pytest.raises(MissingDataError, match=str(tmp_path / "nope")):
        require_dir(tmp_path / "nope", "CLEVR images")
    with pytest.raises(ValueError, match="CLEVR scenes: file"):  # MissingDataError is also a ValueError
        require_file(tmp_path / "x.json", "CLEVR scenes")
    with pytest.raises(FileNotFoundError):
        require_file(tmp_path, "a folder is not a file")
    assert require_dir(tmp_path, "ok") == tmp_path
    assert issubclass(DataFormatError, ValueError)


# ---- show -----------------------------------------------------------------------------------------------
def test_colorize_and_overlay():
    masks = np.array([[[0, 1], [2, 21]]])
    col = colorize_masks(masks)
    assert col.shape == (1, 2, 2, 3) and (col[0, 0, 0] == 0).all()
    assert (col[0, 0, 1] != col[0, 1, 0]).any()
    assert (col[0, 1, 1] == col[0, 0, 1]).all()  # palette wraps after 20 colours
    img = np.full((1, 3, 2, 2), 100, np.uint8)
    ov = overlay_masks(img, masks, alpha=1.0, boundaries=False)
    assert (ov[0, 0, 0] == 100).all()  # background untinted
    assert (ov[0, 0, 1] == col[0, 0, 1]).all()


def test_save_grid_layout(tmp_path):
    d = _scene(n=5, h=8, w=10)
    out = save_grid(d.images, d.masks, tmp_path / "sub" / "grid.png", ncols=2, scale=3)
    png = np.asarray(Image.open(out))
    # 3 rows x 2 columns of cells, each cell = image | overlay, panels 24 x 30 px, 2 px gap, 6 px padding.
    assert png.shape == (3 * (24 + 6) + 6, 2 * (2 * 30 + 2 + 6) + 6, 3)
    assert np.array_equal(png[6:30, 6:36], np.moveaxis(d.images[0].numpy(), 0, -1).repeat(3, 0).repeat(3, 1))
    v = _scene(n=2, t=2)
    png = np.asarray(Image.open(save_grid(v.images, v.masks, tmp_path / "v.png", ncols=4)))
    ph, pw = 16 * 8, 16 * 10  # default scale makes panels >= 128 px
    # One row of 2 samples; each: frame | overlay, 6 px, frame | overlay; 16 px between samples.
    assert png.shape == (ph + 32, 2 * (2 * (2 * pw + 2) + 6) + 3 * 16, 3)
    frame2 = np.moveaxis(v.images[0, 1].numpy(), 0, -1).repeat(16, 0).repeat(16, 1)
    assert np.array_equal(png[16:16 + ph, 16 + 2 * pw + 2 + 6:16 + 3 * pw + 2 + 6], frame2)
    with pytest.raises(ValueError, match="does not match"):
        save_grid(d.images, d.masks[:, :4], tmp_path / "bad.png")


@pytest.mark.parametrize("kwargs,match", [
    ({"count": -1}, "must be >= 0, got -1"),
    ({"seed": -2}, "seed must be >= 0, got -2"),
    ({"image_size": 4}, "image_size must be >= 8, got 4"),
    ({"split": "valid"}, "split must be one of"),
])
def test_every_generator_checks_its_arguments_alike(kwargs, match):
    from tasks.clevr.data import generate_clevr
    from tasks.clevrer.generate import generate_clevrer
    from tasks.clevrtex.data import generate_clevrtex
    from tasks.multi_dsprites.data import generate_multi_dsprites

    generators = [(generate_clevr, "num_images"), (generate_clevrtex, "num_images"),
                  (generate_clevrer, "num_videos"), (generate_multi_dsprites, "num_images")]
    for generate, count_name in generators:
        if "split" in kwargs and generate is generate_multi_dsprites:
            continue  # one stream per seed, no splits
        args = {count_name: kwargs.get("count", 1), "seed": kwargs.get("seed", 0),
                "image_size": kwargs.get("image_size", 16), "progress": False}
        if "split" in kwargs:
            args["split"] = kwargs["split"]
        with pytest.raises(ValueError, match=match):
            generate(**args)


def test_generators_give_empty_arrays_of_the_right_shape_for_zero_items():
    from tasks.clevr.data import generate_clevr
    from tasks.clevrer.generate import generate_clevrer
    from tasks.clevrtex.data import generate_clevrtex

    assert generate_clevr(0, image_size=16, progress=False)["images"].shape == (0, 3, 16, 16)
    assert generate_clevrtex(0, image_size=16, progress=False)["masks"].shape == (0, 16, 16)
    out = generate_clevrer(0, image_size=16, progress=False)
    assert out["images"].shape == (0, 2, 3, 16, 16) and out["masks"].shape == (0, 2, 16, 16)
