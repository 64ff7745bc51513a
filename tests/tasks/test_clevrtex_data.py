"""Tests for tasks.clevrtex: the real ClevrTex reader on a fixture tree written here in ClevrTex's layout
(exact arrays, Karazija et al.'s crop and resize, splits, errors), and the textured generator."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.clevr import decode_scenes
from tasks.clevrtex import (CROP_FRACTION, MAX_OBJECTS, SIZES, TEX_MATERIALS, crop_and_resize, generate_clevrtex,
                            load_clevrtex, read_clevrtex)
from tasks.scenes import DataFormatError, MissingDataError
from tasks.scenes.render import SHAPES

N = 10


def _write_tree(root, n=N, size=(320, 240), mask_mode="L", variant="full"):
    rng = np.random.default_rng(0)
    base = root / f"clevrtex_{variant}"
    images, masks = [], []
    for i in range(n):
        folder = base / str(i // 4)  # ClevrTex splits its files into numbered sub-folders
        folder.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
        img[..., 3] = 255
        msk = rng.integers(0, 4 + i % 6, size=(size[1], size[0]), dtype=np.uint8)
        stem = f"CLEVRTEX_{variant}_{i:06d}"
        Image.fromarray(img, "RGBA").save(folder / f"{stem}.png")
        m = Image.fromarray(msk, "L")
        if mask_mode == "P":
            m = m.convert("P")
        m.save(folder / f"{stem}_flat.png")
        (folder / f"{stem}.json").write_text(json.dumps({"ground_material": "x", "objects": [{"index": 1}]}))
        images.append(img)
        masks.append(msk)
    return base, np.stack(images), np.stack(masks)


@pytest.mark.parametrize("mask_mode", ["L", "P"])
def test_read_real_exact_arrays_and_splits(tmp_path, mask_mode):
    base, images, masks = _write_tree(tmp_path, mask_mode=mask_mode)
    for split, idx in (("test", [0]), ("val", [1]), ("train", list(range(2, N)))):
        d = read_clevrtex(tmp_path, split, crop=False, size=None, progress=False)  # the parent folder works too
        assert d.images.dtype == torch.uint8 and d.masks.dtype == torch.uint8
        assert np.array_equal(d.images.numpy(), images[idx, :, :, :3].transpose(0, 3, 1, 2))
        assert np.array_equal(d.masks.numpy(), masks[idx])
        assert d.ids == [f"CLEVRTEX_full_{i:06d}.png" for i in idx]
    d = read_clevrtex(base, "train", max_images=3, crop=False, size=None, progress=False)
    assert len(d) == 3 and d.ids[0] == "CLEVRTEX_full_000002.png"


def test_outd_variant_is_not_split_as_in_the_benchmark(tmp_path):
    _, images, _ = _write_tree(tmp_path, variant="outd")
    for split in ("train", "val", "test"):
        d = read_clevrtex(tmp_path, split, variant="outd", crop=False, size=None, progress=False)
        assert np.array_equal(d.images.numpy(), images[..., :3].transpose(0, 3, 1, 2)), split


def test_read_real_crop_and_resize_follow_karazija(tmp_path):
    _, images, masks = _write_tree(tmp_path)
    d = read_clevrtex(tmp_path, "train", progress=False)
    assert d.images.shape == (N - 2, 3, 64, 64) and d.masks.shape == (N - 2, 64, 64)
    # Referee: the crop box of the ClevrTex loader, int(0.8 * 240) = 192 -> (64, 24, 256, 216), then PIL.
    c = int(CROP_FRACTION * 240)
    assert c == 192
    for k, i in enumerate(range(2, N)):
        img = images[i][24:216, 64:256]
        msk = masks[i][24:216, 64:256]
        ref_img = np.asarray(Image.fromarray(img, "RGBA").resize((64, 64), Image.BILINEAR))[..., :3]
        ref_msk = np.asarray(Image.fromarray(msk, "L").resize((64, 64), Image.NEAREST))
        assert np.array_equal(d.images[k].numpy(), ref_img.transpose(2, 0, 1))
        assert np.array_equal(d.masks[k].numpy(), ref_msk)
        # Nearest-neighbour downscaling by 3 keeps the centre pixel of each 3x3 block.
        assert np.array_equal(d.masks[k].numpy(), msk[1::3, 1::3])
    cached = load_clevrtex("train", data_dir=tmp_path, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(cached.images, d.images) and torch.equal(cached.masks, d.masks) and cached.ids == d.ids


def test_crop_and_resize_function_directly():
    img = Image.fromarray(np.arange(240 * 320 * 3, dtype=np.uint32).astype(np.uint8).reshape(240, 320, 3))
    msk = Image.fromarray((np.arange(240 * 320) % 7).astype(np.uint8).reshape(240, 320))
    a, m = crop_and_resize(img, msk, crop=True, size=None)
    assert a.shape == (3, 192, 192) and np.array_equal(m, np.asarray(msk)[24:216, 64:256])
    assert np.array_equal(a, np.asarray(img)[24:216, 64:256].transpose(2, 0, 1))


def test_read_real_errors_name_the_file(tmp_path):
    with pytest.raises(MissingDataError, match="no CLEVRTEX_full"):
        read_clevrtex(tmp_path, "train")
    base, _, _ = _write_tree(tmp_path)
    (base / "1" / "CLEVRTEX_full_000005_flat.png").unlink()
    with pytest.raises(MissingDataError, match="CLEVRTEX_full_000005_flat.png"):
        read_clevrtex(base, "train", progress=False)
    Image.fromarray(np.zeros((240, 320, 3), np.uint8)).save(base / "1" / "CLEVRTEX_full_000005_flat.png")
    with pytest.raises(DataFormatError, match="CLEVRTEX_full_000005_flat.png: mask mode 'RGB'"):
        read_clevrtex(base, "train", progress=False)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(base / "1" / "CLEVRTEX_full_000005_flat.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(base / "1" / "CLEVRTEX_full_000005.png")
    with pytest.raises(DataFormatError, match="CLEVRTEX_full_000005.png: image is 10x10, expected 320x240"):
        read_clevrtex(base, "train", progress=False)
    (base / "1" / "CLEVRTEX_full_000005.json").write_text(json.dumps({"no_objects": 1}))
    with pytest.raises(DataFormatError, match="CLEVRTEX_full_000005.json: expected .*'objects'"):
        read_clevrtex(base, "train", progress=False)
    (base / "1" / "CLEVRTEX_full_000004.png").unlink()
    with pytest.raises(DataFormatError, match=r"lacks image numbers \[4\]"):
        read_clevrtex(base, "train", progress=False)
    with pytest.raises(ValueError, match="split"):
        read_clevrtex(base, "dev")


# ---- generator ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen():
    a = generate_clevrtex(16, seed=2, progress=False)
    return a, decode_scenes(a["meta_json"], a["meta_offsets"])


def test_generated_masks_counts_and_metadata(gen):
    a, metas = gen
    assert a["images"].shape == (16, 3, 64, 64) and a["masks"].shape == (16, 64, 64)
    assert ((a["num_objects"] >= 3) & (a["num_objects"] <= MAX_OBJECTS)).all()
    for m, meta, n in zip(a["masks"], metas, a["num_objects"]):
        assert meta["num_objects"] == n == len(meta["objects"])
        assert [o["index"] for o in meta["objects"]] == list(range(1, n + 1))
        assert m.max() <= n and np.bincount(m.ravel()).sum() == m.size  # one label per pixel
        assert len(np.unique(m)) >= 2  # at least one object inside the crop
        assert meta["ground_material"] in TEX_MATERIALS
        for o in meta["objects"]:
            assert o["material"] in TEX_MATERIALS and o["shape"] in SHAPES and o["size"] in SIZES
            r = SIZES[o["size"]] / (math.sqrt(2) if o["shape"] == "cube" else 1)
            assert abs(o["3d_coords"][2] - r) < 1e-12


def test_generated_mask_centroids_match_pixel_coords_in_the_crop(gen):
    a, metas = gen
    checked = 0
    for m, meta in zip(a["masks"], metas):
        for o in meta["objects"]:
            k = o["index"]
            ys, xs = np.nonzero(m == k)
            if len(xs) < 12 or xs.min() == 0 or ys.min() == 0 or xs.max() == 63 or ys.max() == 63:
                continue  # absent, tiny or cut by the crop
            grown = np.zeros(m.shape, bool)
            grown[ys.min() - 1:ys.max() + 2, xs.min() - 1:xs.max() + 2] = True
            if ((m > 0) & (m != k) & grown).any():
                continue  # possibly occluded
            px = (o["pixel_coords"][0] - 64) * 64 / 192  # 320x240 frame -> 64x64 crop
            py = (o["pixel_coords"][1] - 24) * 64 / 192
            assert math.hypot(xs.mean() + 0.5 - px, ys.mean() + 0.5 - py) < 0.3 * math.sqrt(len(xs)) + 1.0
            checked += 1
    assert checked >= 10


def test_generated_images_are_textured_and_deterministic(gen):
    a, _ = gen
    # Textures: the ground varies within an image far more than CLEVR's smooth grey floor does.
    img = a["images"].astype(np.float32)
    ground = a["masks"] == 0
    spread = [img[i][:, ground[i]].std(axis=1).mean() for i in range(len(img))]
    assert np.median(spread) > 8
    b = generate_clevrtex(4, seed=2, progress=False)
    assert np.array_equal(b["images"], a["images"][:4]) and np.array_equal(b["masks"], a["masks"][:4])
    c = generate_clevrtex(4, seed=3, progress=False)
    assert not np.array_equal(c["images"], b["images"])


def test_load_clevrtex_generated_cached(tmp_path):
    d1 = load_clevrtex("val", num_images=3, cache_dir=tmp_path, progress=False)
    d2 = load_clevrtex("val", num_images=3, cache_dir=tmp_path, progress=False)
    assert d1.images.shape == (3, 3, 64, 64) and torch.equal(d1.images, d2.images)
    assert d1.to_onehot_masks(MAX_OBJECTS).shape == (3, 11, 64, 64)
    with pytest.raises(ValueError, match="num_images"):
        load_clevrtex("val", num_images=0)
