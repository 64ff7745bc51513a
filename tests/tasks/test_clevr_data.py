"""Tests for tasks.clevr: DSPN targets, the real CLEVR v1.0 reader on a fixture tree written here, and the
generator (masks, visibility, targets consistent with the rendered image, determinism, one loader for both)."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.clevr import (DSPN_CLASSES, MAX_OBJECTS, TARGET_DIM, decode_scenes, generate_clevr, load_clevr,
                         read_clevr, scenes_to_targets, write_clevr_tree)
from tasks.scenes import DataFormatError, MissingDataError
from tasks.scenes.render import SHAPES, Camera, SceneBatch, index_map, project


def _obj(coords, material="rubber", color="red", shape="cube", size="large"):
    return {"3d_coords": list(coords), "pixel_coords": [0, 0, 10.0], "rotation": 0.0, "material": material,
            "color": color, "shape": shape, "size": size}


# ---- targets ----------------------------------------------------------------------------------------------
def test_targets_follow_dspn_layout():
    scenes = [{"image_filename": "a.png", "objects": [_obj((3.0, -1.5, 0.7), "metal", "brown", "cylinder", "small"),
                                                      _obj((0.0, 0.3, 0.35), "rubber", "cyan", "sphere", "large")]},
              {"image_filename": "b.png", "objects": []}]
    t, p = scenes_to_targets(scenes)
    assert t.shape == (2, MAX_OBJECTS, 18) == (2, 10, TARGET_DIM) and t.dtype == np.float32
    assert p.tolist() == [[True, True] + [False] * 8, [False] * 10]
    # coords / 3 | material (rubber, metal) | colour (cyan, blue, yellow, purple, red, green, gray, brown) |
    # shape (sphere, cube, cylinder) | size (large, small)
    want0 = [1.0, -0.5, 0.7 / 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1]
    want1 = [0.0, 0.1, 0.35 / 3, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0]
    assert np.allclose(t[0, 0], want0) and np.allclose(t[0, 1], want1)
    assert not t[0, 2:].any() and not t[1].any()
    assert DSPN_CLASSES["color"][7] == "brown"


@pytest.mark.parametrize("bad, match", [
    ({"material": "wood"}, "unknown material 'wood'"),
    ({"3d_coords": [1, 2]}, "3d_coords"),
    ({"color": None}, "unknown color"),
])
def test_target_errors_name_source_scene_and_field(bad, match):
    obj = _obj((0, 0, 0.7))
    obj.update(bad)
    with pytest.raises(DataFormatError, match=match) as e:
        scenes_to_targets([{"image_filename": "x.png", "objects": [obj]}], source="S.json")
    assert "S.json" in str(e.value) and "x.png" in str(e.value)
    obj = _obj((0, 0, 0.7))
    del obj["shape"]
    with pytest.raises(DataFormatError, match="lacks field.*shape"):
        scenes_to_targets([{"image_filename": "x.png", "objects": [obj]}])
    with pytest.raises(DataFormatError, match="11 objects"):
        scenes_to_targets([{"image_filename": "x.png", "objects": [_obj((0, 0, 0.7))] * 11}])


# ---- real format --------------------------------------------------------------------------------------------
def _write_real_tree(root, n=3, size=(480, 320), split="val"):
    rng = np.random.default_rng(1)
    root = root / "CLEVR_v1.0"
    (root / "images" / split).mkdir(parents=True)
    (root / "scenes").mkdir()
    scenes, images = [], []
    for i in range(n):
        img = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
        img[..., 3] = 255  # CLEVR's PNGs are RGBA
        name = f"CLEVR_{split}_{i:06d}.png"
        Image.fromarray(img, "RGBA").save(root / "images" / split / name)
        objs = [_obj(rng.uniform(-3, 3, 3).tolist(), ["rubber", "metal"][j % 2], DSPN_CLASSES["color"][(i + j) % 8],
                     ["cube", "sphere", "cylinder"][j % 3], ["large", "small"][(i * j) % 2]) for j in range(3 + i)]
        scenes.append({"split": split, "image_index": i, "image_filename": name, "objects": objs})
        images.append(img[..., :3].transpose(2, 0, 1))
    (root / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"info": {}, "scenes": scenes}))
    return root, np.stack(images), scenes


def test_read_real_returns_exact_arrays(tmp_path):
    root, images, scenes = _write_real_tree(tmp_path)
    data, got_scenes = read_clevr(tmp_path, "val", image_size=None, progress=False)  # parent of CLEVR_v1.0
    assert data.images.dtype == torch.uint8 and np.array_equal(data.images.numpy(), images)
    assert got_scenes == scenes
    t, p = scenes_to_targets(scenes)
    assert np.array_equal(data.targets.numpy(), t) and np.array_equal(data.presence.numpy(), p)
    assert data.presence.sum(1).tolist() == [3, 4, 5]
    assert not data.masks.any() and data.meta["has_masks"] is False
    assert data.ids == [s["image_filename"] for s in scenes]
    # Resized as DSPN does it (PIL bilinear to 128x128), and read again from the cache.
    small, _ = read_clevr(root, "val", progress=False)
    ref = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).resize((128, 128), Image.BILINEAR))
                    for im in images]).transpose(0, 3, 1, 2)
    assert small.images.shape == (3, 3, 128, 128) and np.array_equal(small.images.numpy(), ref)
    cached1 = load_clevr("val", data_dir=root, cache_dir=tmp_path / "cache", progress=False)
    cached2 = load_clevr("val", data_dir=root, cache_dir=tmp_path / "cache", progress=False)
    for d in (cached1, cached2):
        assert torch.equal(d.images, small.images) and torch.equal(d.targets, small.targets)
        assert d.ids == small.ids
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


def test_read_real_errors_name_the_file(tmp_path):
    with pytest.raises(MissingDataError, match="CLEVR_train_scenes.json"):
        read_clevr(tmp_path, "train")
    root, _, scenes = _write_real_tree(tmp_path)
    (root / "images" / "val" / scenes[1]["image_filename"]).unlink()
    with pytest.raises(MissingDataError, match="CLEVR_val_000001.png"):
        read_clevr(root, "val", progress=False)
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(root / "images" / "val" / scenes[1]["image_filename"])
    with pytest.raises(DataFormatError, match=r"CLEVR_val_000001.png: image is 100x100, expected 480x320"):
        read_clevr(root, "val", progress=False)
    bad = root / "scenes" / "CLEVR_val_scenes.json"
    bad.write_text(json.dumps({"scenes": [{"image_filename": "a.png"}]}))
    with pytest.raises(DataFormatError, match="CLEVR_val_scenes.json: scene 0 lacks"):
        read_clevr(root, "val", progress=False)
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match="CLEVR_val_scenes.json"):
        read_clevr(root, "val", progress=False)


# ---- generator ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen():
    a = generate_clevr(20, seed=3, split="val", progress=False)
    return a, decode_scenes(a["scenes_json"], a["scenes_offsets"])


def test_generated_arrays_and_scene_schema(gen):
    a, scenes = gen
    assert a["images"].shape == (20, 3, 128, 128) and a["images"].dtype == np.uint8
    assert a["masks"].shape == (20, 128, 128) and a["masks"].dtype == np.uint8
    assert len(scenes) == 20
    for i, sc in enumerate(scenes):
        assert sc["image_filename"] == f"CLEVR_val_{i:06d}.png" and sc["split"] == "val"
        assert 3 <= len(sc["objects"]) <= 10
        assert set(sc["directions"]) == {"behind", "front", "left", "right", "above", "below"}
        for name in ("left", "right", "front", "behind"):
            assert len(sc["relationships"][name]) == len(sc["objects"])
        for o in sc["objects"]:
            assert set(o) == {"shape", "size", "material", "3d_coords", "rotation", "pixel_coords", "color"}
            r = {"large": 0.7, "small": 0.35}[o["size"]] / (math.sqrt(2) if o["shape"] == "cube" else 1)
            assert abs(o["3d_coords"][2] - r) < 1e-12 and max(map(abs, o["3d_coords"][:2])) <= 3
            assert 0 <= o["rotation"] < 360
    t, p = scenes_to_targets(scenes)
    assert np.array_equal(a["targets"], t) and np.array_equal(a["presence"], p)
    assert np.abs(a["targets"][..., :3]).max() <= 1.0


def test_generated_masks_partition_and_obey_the_visibility_rule(gen):
    a, scenes = gen
    for m, sc in zip(a["masks"], scenes):
        n = len(sc["objects"])
        counts = np.bincount(m.ravel(), minlength=n + 1)
        assert len(counts) == n + 1 and counts.sum() == m.size  # one label per pixel, labels 0..n only
        # CLEVR's 200 visible pixels at 480x320, scaled to 128x128.
        assert (counts[1:] >= round(200 * 128 * 128 / (480 * 320))).all()


def _camera_from_pixel_coords(objs, cam):
    """The (jittered) camera location that explains the objects' pixel_coords (x, y in the 480x320 frame,
    depth): camera = world point - the point's camera-frame offset, averaged over the objects."""
    basis = cam.basis()  # rows: right, up, forward
    tx, ty = cam.tan_half()
    est = []
    for o in objs:
        px, py, depth = o["pixel_coords"]
        u, v = (2 * px / 480 - 1) * tx, (1 - 2 * py / 320) * ty
        offset = depth * (u * basis[0] + v * basis[1] + basis[2])
        est.append(np.asarray(o["3d_coords"]) - offset)
    return np.mean(est, 0)


def test_masks_match_the_3d_coordinates_of_the_targets(gen):
    """For every object that is not occluded, its mask centroid is near the projection of its 3-d
    coordinates, and its mask is its silhouette rendered alone from the scene's camera."""
    a, scenes = gen
    cam = Camera()
    checked = 0
    for m, sc in zip(a["masks"], scenes):
        cpos = _camera_from_pixel_coords(sc["objects"], cam)
        assert (np.abs(cpos - np.asarray(cam.location)) <= 0.5 + 0.02).all()  # CLEVR's camera jitter
        for j, o in enumerate(sc["objects"]):
            mine = m == j + 1
            ys, xs = np.nonzero(mine)
            grown = np.zeros_like(mine)
            grown[max(ys.min() - 1, 0):ys.max() + 2, max(xs.min() - 1, 0):xs.max() + 2] = True
            if ((m > 0) & (m != j + 1) & grown).any():
                continue  # may be occluded: only free-standing objects are compared
            checked += 1
            xyz = np.asarray(o["3d_coords"])
            pr = project(torch.tensor(xyz[None, None]), torch.tensor(cpos[None]), cam, 128, 128)[0, 0].numpy()
            cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
            assert math.hypot(cx - pr[0], cy - pr[1]) < 0.3 * math.sqrt(len(xs)) + 1.0
            alone = SceneBatch(position=[[xyz]], scale=[[xyz[2]]], rotation=[[math.radians(o["rotation"])]],
                               shape=[[SHAPES.index(o["shape"])]], albedo=np.zeros((1, 1, 3)), metal=[[False]],
                               camera=[cpos], lights=np.zeros((1, 3, 3)), ground_albedo=np.zeros((1, 3)))
            sil = index_map(alone, cam, 128, 128)[0].numpy() == 1
            iou = (sil & mine).sum() / (sil | mine).sum()
            assert iou > 0.9, (sc["image_filename"], j, iou)
    assert checked >= 20


def test_generated_scenes_roundtrip_through_the_real_reader(gen, tmp_path):
    a, scenes = gen
    write_clevr_tree(tmp_path / "CLEVR_v1.0", a["images"][:5], scenes[:5], "val")
    data, back = read_clevr(tmp_path, "val", image_size=None, native_size=None, progress=False)
    assert back == scenes[:5]
    assert np.array_equal(data.images.numpy(), a["images"][:5])
    assert np.array_equal(data.targets.numpy(), a["targets"][:5])


def test_generator_is_deterministic_and_prefix_stable(gen):
    a, _ = gen
    b = generate_clevr(5, seed=3, split="val", progress=False)
    for k in b:
        if k in ("scenes_json", "scenes_offsets"):
            continue
        assert np.array_equal(a[k][:5], b[k]), k
    first = decode_scenes(a["scenes_json"], a["scenes_offsets"])[:5]
    assert decode_scenes(b["scenes_json"], b["scenes_offsets"]) == first
    c = generate_clevr(5, seed=4, split="val", progress=False)
    d = generate_clevr(5, seed=3, split="train", progress=False)
    assert not np.array_equal(c["images"], b["images"]) and not np.array_equal(d["images"], b["images"])


def test_workers_do_not_change_the_bytes():
    one = generate_clevr(34, seed=1, image_size=32, workers=1, progress=False)
    two = generate_clevr(34, seed=1, image_size=32, workers=2, progress=False)
    assert all(np.array_equal(one[k], two[k]) for k in one)


def test_load_clevr_generated_uses_the_cache(tmp_path):
    d1 = load_clevr("test", num_images=4, seed=2, cache_dir=tmp_path, progress=False)
    d2, scenes = load_clevr("test", num_images=4, seed=2, cache_dir=tmp_path, progress=False, return_scenes=True)
    assert d1.images.shape == (4, 3, 128, 128) and d1.targets.shape == (4, 10, 18)
    assert torch.equal(d1.images, d2.images) and torch.equal(d1.masks, d2.masks)
    assert len(scenes) == 4 and d1.ids == [s["image_filename"] for s in scenes]
    assert d1.meta["has_masks"] is True
    with pytest.raises(ValueError, match="split"):
        load_clevr("dev")
    with pytest.raises(ValueError, match="num_images"):
        load_clevr("train", num_images=0)
