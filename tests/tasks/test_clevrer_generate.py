"""Tests for tasks.clevrer.generate / tasks.clevrer.data: the two-frame simulation and rendering (identities
across frames, counts, physics, determinism) and the measured count-growth rates of CLEVRER-S / -L."""
import math

import numpy as np
import pytest
import torch

import tasks.clevrer.data as clevrer_data
from tasks.clevr import decode_scenes
from tasks.clevrer import (MAX_OBJECTS, VARIANT_FRAMES, count_growth_rate, generate_clevrer, load_clevrer,
                           simulate_videos, visible_counts)
from tasks.clevrer.generate import NUM_FRAMES, OBJECT_SIZE, _clevrer_block, _inside_frame
from tasks.scenes.render import Camera, project

CAM = Camera()


@pytest.fixture(scope="module")
def pair_l():
    a = generate_clevrer(24, "L", seed=5, progress=False)
    return a, decode_scenes(a["meta_json"], a["meta_offsets"])


def test_shapes_counts_and_partition(pair_l):
    a, metas = pair_l
    assert a["images"].shape == (24, 2, 3, 64, 64) and a["images"].dtype == np.uint8
    assert a["masks"].shape == (24, 2, 64, 64) and a["masks"].dtype == np.uint8
    assert ((a["num_objects"] >= 2) & (a["num_objects"] <= MAX_OBJECTS)).all()
    counts = visible_counts(a["masks"])
    assert (counts[:, 0] >= 1).all() and (counts <= a["num_objects"][:, None]).all()
    for m, n in zip(a["masks"], a["num_objects"]):
        assert m.max() <= n  # labels are 0..num_objects: one label per pixel
    assert [m["frames"] for m in metas[:1]] == [list(VARIANT_FRAMES["L"])]


def _centroid(mask, k):
    ys, xs = np.nonzero(mask == k)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5]), len(xs)


def test_identities_are_consistent_across_frames(pair_l):
    """An index seen in both frames marks the same object: in each frame its mask sits where that object's
    simulated floor position projects, and its colour is the same in both frames."""
    a, metas = pair_l
    checked = 0
    for imgs, masks, meta in zip(a["images"], a["masks"], metas):
        for o in meta["objects"]:
            k = o["index"]
            if not ((masks[0] == k).sum() >= 10 and (masks[1] == k).sum() >= 10):
                continue
            means = []
            for f in range(2):
                c, area = _centroid(masks[f], k)
                ys, xs = np.nonzero(masks[f] == k)
                grown = np.zeros(masks[f].shape, bool)
                grown[max(ys.min() - 1, 0):ys.max() + 2, max(xs.min() - 1, 0):xs.max() + 2] = True
                free = not ((masks[f] > 0) & (masks[f] != k) & grown).any()
                free &= ys.min() > 0 and xs.min() > 0 and ys.max() < 63 and xs.max() < 63  # not cut by the border
                p = project(torch.tensor([[[*o["xy"][f], OBJECT_SIZE]]], dtype=torch.float64),
                            torch.tensor([meta["camera_location"]], dtype=torch.float64), CAM, 64, 64)[0, 0, :2]
                if free:  # an occluded object's visible part need not be centred on it
                    assert np.linalg.norm(c - p.numpy()) < 0.3 * math.sqrt(area) + 1.0
                means.append(imgs[f][:, masks[f] == k].astype(float).mean(1))
            checked += 1
            assert np.abs(means[0] - means[1]).max() < 60  # same object, same paint (lighting may differ)
    assert checked >= 15


def test_short_and_long_variants_share_the_first_frame():
    s = generate_clevrer(6, "S", seed=7, progress=False)
    el = generate_clevrer(6, "L", seed=7, progress=False)
    assert np.array_equal(s["images"][:, 0], el["images"][:, 0]) and np.array_equal(s["masks"][:, 0], el["masks"][:, 0])
    assert not np.array_equal(s["masks"][:, 1], el["masks"][:, 1])
    again = generate_clevrer(6, "S", seed=7, progress=False)
    assert all(np.array_equal(s[k], again[k]) for k in s)  # same seed, same bytes
    other = generate_clevrer(6, "S", seed=8, progress=False)
    assert not np.array_equal(other["images"], s["images"])


def test_mask_only_path_gives_the_same_masks():
    _, with_images, _ = _clevrer_block(3, 0, 0, 5, "S", 32, True)
    none, masks_only, _ = _clevrer_block(3, 0, 0, 5, "S", 32, False)
    assert none is None and np.array_equal(with_images, masks_only)


def test_simulation_physics_and_entry_times():
    sim = simulate_videos(np.random.default_rng(0), 64, CAM)
    xy, used = sim["xy"], sim["shape"] >= 0
    assert np.array_equal(used.sum(1), sim["num_objects"])
    assert np.isnan(xy.transpose(0, 2, 1, 3)[~used]).all() and not np.isnan(xy.transpose(0, 2, 1, 3)[used]).any()
    # Discs never overlap by more than a small step after collision handling.
    for f in (0, 15, 64, NUM_FRAMES - 1):
        p = xy[:, f]
        d = np.linalg.norm(p[:, :, None] - p[:, None], axis=-1)
        iu = np.triu_indices(MAX_OBJECTS, 1)
        dd = d[:, iu[0], iu[1]]
        assert np.nanmin(dd) > 2 * OBJECT_SIZE - 0.1
    # Entering objects are outside the frame two frames before their entry time and inside two after
    # (collisions on the way may change a few paths).
    before, after = [], []
    for b, j in zip(*np.nonzero(sim["entering"])):
        tau = sim["entry_frame"][b, j]
        if tau >= 3:
            before.append(_inside_frame(xy[b:b + 1, int(tau) - 2, j][None], sim["camera"][b:b + 1], CAM)[0, 0])
        if tau <= NUM_FRAMES - 4:
            late = xy[b:b + 1, int(math.ceil(tau)) + 2, j][None]
            after.append(_inside_frame(late, sim["camera"][b:b + 1], CAM)[0, 0])
    assert len(before) > 50 and np.mean(before) < 0.05 and np.mean(after) > 0.9
    # Initial objects start inside CLEVR's floor square.
    init = used & ~sim["entering"]
    assert (np.abs(xy[:, 0][init]) <= 3).all()


def test_count_growth_rates_match_the_paper():
    """Pairs whose visible-object count grows by >= 2: 9.5% (CLEVRER-S) and 68.8% (CLEVRER-L) in the paper.
    On 600 videos the binomial standard error is about 1.2 and 1.9 points; the bands are about 3 of them."""
    s = count_growth_rate("S", 600, seed=11)
    el = count_growth_rate("L", 600, seed=11)
    assert 0.06 <= s <= 0.13, s
    assert 0.63 <= el <= 0.75, el


def test_load_clevrer_generated_cached_and_real_dispatch(tmp_path, monkeypatch):
    d1 = load_clevrer("S", "val", num_videos=3, cache_dir=tmp_path, progress=False)
    d2 = load_clevrer("S", "validation", num_videos=3, cache_dir=tmp_path, progress=False)
    assert d1.images.shape == (3, 2, 3, 64, 64) and d1.is_video and torch.equal(d1.images, d2.images)
    assert d1.meta["frames"] == (0, 15) and d1.meta["split"] == "validation"
    assert len(list(tmp_path.glob("*.npz"))) == 1
    seen = {}
    monkeypatch.setattr(clevrer_data, "load_clevrer_real", lambda data_dir, **kw: seen.update(kw, data_dir=data_dir))
    load_clevrer("L", "val", data_dir=tmp_path / "clevrer", num_videos=4, size=(32, 32))
    assert seen["variant"] == "L" and seen["split"] == "validation" and seen["max_videos"] == 4
    assert seen["size"] == (32, 32) and seen["data_dir"] == tmp_path / "clevrer"
    with pytest.raises(ValueError, match="variant"):
        load_clevrer("M")
    with pytest.raises(ValueError, match="real data only"):
        load_clevrer("S", size=(32, 32))
