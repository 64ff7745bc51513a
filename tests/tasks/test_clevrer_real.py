"""Tests for tasks.clevrer.real: COCO RLE, PyAV frame decoding, and the CLEVRER-S/L reader on a fixture tree
written here in CLEVRER's layout (lossless MP4s, RLE proposal JSON, annotation JSON)."""
import json

import numpy as np
import pytest
import torch

from tasks.clevrer import real
from tasks.clevrer.real import load_clevrer_real, official_video_ids, read_video_frames, rle_decode, rle_encode
from tasks.scenes import DataFormatError, MissingDataError

from clevrer_fixtures import box, proposal_object, write_video

H, W, T = 32, 48, 130


# ---- RLE ------------------------------------------------------------------------------------------------------
def test_rle_hand_example_and_column_major_order():
    # [[0, 1], [1, 1]] in column-major order is 0, 1, 1, 1: runs [1 zero, 3 ones] -> "1" "3".
    assert rle_encode(np.array([[0, 1], [1, 1]])) == {"size": [2, 2], "counts": "13"}
    assert rle_decode({"size": [2, 2], "counts": "13"}).tolist() == [[False, True], [True, True]]
    assert rle_decode({"size": [2, 3], "counts": [2, 3, 1]}).tolist() == [[False, True, True], [False, True, False]]
    assert rle_encode(np.ones((1, 2)))["counts"] == "02"  # a mask starting with 1 has a zero-length first run


def test_rle_decodes_a_real_clevrer_proposal_string():
    # A sphere's mask from a CLEVRER derender proposal (sim_00005, frame 0), 320x480.
    rle = {"size": [320, 480], "counts": "jVc0`0^95K3N3M2M3N2N2O1N101N2N101N1000000000000000000000000000000000000"
                                         "001N101N2N101N2N2N2N2N3L3N3LYSd3"}
    m = rle_decode(rle)
    ys, xs = np.nonzero(m)
    assert m.shape == (320, 480) and m.sum() == 1763
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (140, 183, 61, 107)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert 0.7 < m.sum() / box < 0.9  # a disc fills pi/4 of its box
    assert rle_encode(m) == rle  # the encoder reproduces COCO's string byte for byte


def test_rle_roundtrip_random_and_errors():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = rng.integers(1, 40, 2)
        m = rng.random((h, w)) < rng.random()
        enc = rle_encode(m)
        assert np.array_equal(rle_decode(enc), m)
        assert np.array_equal(rle_decode(json.loads(json.dumps(enc))), m)
    with pytest.raises(ValueError, match="cover"):
        rle_decode({"size": [2, 2], "counts": "12"})
    with pytest.raises(ValueError, match="size"):
        rle_decode({"counts": "13"})
    with pytest.raises(ValueError, match="character"):
        rle_decode({"size": [2, 2], "counts": "1\x01"})


# ---- fixture ----------------------------------------------------------------------------------------------
def _box(y, x, h, w):
    return box(y, x, h, w, H, W)


@pytest.fixture(scope="module")
def clevrer_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clevrer")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, T, H, W, 3), dtype=np.uint8)  # noise frames: any loss would show
    write_video(root / "video_train/video_00000-01000/video_00000.mp4", frames[0])
    write_video(root / "video_train/video_00000-01000/video_00001.mp4", frames[1])
    write_video(root / "video_validation/video_10000-11000/video_10000.mp4", frames[0, :20])
    # Video 0 (annotated): blue rubber cube (id 0) moves; red metal sphere (id 2) stays; green cylinder (id 1)
    # enters later. A low-score detection is dropped; the sphere overlaps the cube with a higher score.
    cube_a, cube_b, cube_l = _box(2, 2, 10, 10), _box(4, 6, 10, 10), _box(20, 30, 10, 10)
    sph = _box(8, 8, 8, 8)
    cyl = _box(14, 34, 8, 10)
    p0 = {"video_index": 0, "video_name": "sim_00000", "frames": [
        {"frame_index": 0, "objects": [proposal_object(cube_a, "blue", "rubber", "cube", 0.9),
                                       proposal_object(sph, "red", "metal", "sphere", 0.95),
                                       proposal_object(_box(28, 0, 4, 4), "gray", "rubber", "cube", 0.1)]},
        {"frame_index": 7, "objects": []},
        {"frame_index": 15, "objects": [proposal_object(cyl, "green", "rubber", "cylinder"),
                                        proposal_object(cube_b, "blue", "rubber", "cube", 0.97),
                                        proposal_object(sph, "red", "metal", "sphere", 0.5)]},
        {"frame_index": 127, "objects": [proposal_object(cube_l, "blue", "rubber", "cube")]},
    ]}
    ann0 = {"video_index": 0, "object_property": [
        {"object_id": 0, "color": "blue", "material": "rubber", "shape": "cube"},
        {"object_id": 1, "color": "green", "material": "rubber", "shape": "cylinder"},
        {"object_id": 2, "color": "red", "material": "metal", "shape": "sphere"}]}
    # Video 1 (no annotation): ids by first appearance; a duplicate attribute set in frame 15 gets a fresh id.
    a, b, c = _box(0, 0, 6, 6), _box(10, 10, 6, 6), _box(20, 20, 6, 6)
    p1 = {"frames": [
        {"frame_index": 0, "objects": [proposal_object(a, "cyan", "metal", "cube"), proposal_object(b, "gray", "rubber", "sphere")]},
        {"frame_index": 15, "objects": [proposal_object(b, "gray", "rubber", "sphere"), proposal_object(c, "cyan", "metal", "cube", 0.6),
                                        proposal_object(a, "cyan", "metal", "cube", 0.8)]},
        {"frame_index": 127, "objects": []},
    ]}
    p10000 = {"frames": [{"frame_index": 0, "objects": []}, {"frame_index": 15, "objects": []}]}
    (root / "derender_proposals").mkdir()
    for idx, p in ((0, p0), (1, p1), (10000, p10000)):
        (root / f"derender_proposals/proposal_{idx:05d}.json").write_text(json.dumps(p))
    ann = root / "annotation_train/annotation_00000-01000/annotation_00000.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps(ann0))
    expected = {}
    m0a = np.zeros((H, W), np.uint8)
    m0a[cube_a] = 1
    m0a[sph] = 3
    m0b = np.zeros((H, W), np.uint8)
    m0b[sph] = 3
    m0b[cube_b] = 1  # higher score than the sphere in frame 15
    m0b[cyl] = 2
    m0l = np.zeros((H, W), np.uint8)
    m0l[cube_l] = 1
    m1a = np.zeros((H, W), np.uint8)
    m1a[a], m1a[b] = 1, 2
    m1b = np.zeros((H, W), np.uint8)
    m1b[b], m1b[a], m1b[c] = 2, 1, 3
    expected["S"] = np.stack([np.stack([m0a, m0b]), np.stack([m1a, m1b])])
    expected["L"] = np.stack([np.stack([m0a, m0l]), np.stack([m1a, np.zeros((H, W), np.uint8)])])
    return root, frames, expected


def test_read_video_frames_exact(clevrer_root):
    root, frames, _ = clevrer_root
    path = root / "video_train/video_00000-01000/video_00000.mp4"
    got = read_video_frames(path, (127, 0, 15))
    assert got.shape == (3, H, W, 3) and np.array_equal(got, frames[0][[127, 0, 15]])
    with pytest.raises(DataFormatError, match=r"video_00000\.mp4: has 130 frames"):
        read_video_frames(path, (0, 200))
    bad = root / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(DataFormatError, match="broken.mp4: cannot decode"):
        read_video_frames(bad, (0,))


@pytest.mark.parametrize("variant", ["S", "L"])
def test_load_real_exact_frames_masks_and_identities(clevrer_root, tmp_path, variant):
    root, frames, expected = clevrer_root
    d = load_clevrer_real(root, variant, "train", size=None, cache_dir=tmp_path, progress=False)
    fi = [0, 15] if variant == "S" else [0, 127]
    assert d.ids == ["video_00000", "video_00001"] and d.meta["frames"] == tuple(fi)
    assert d.images.shape == (2, 2, 3, H, W) and d.masks.shape == (2, 2, H, W)
    assert torch.equal(d.images, torch.from_numpy(frames[:, fi].transpose(0, 1, 4, 2, 3).copy()))
    assert torch.equal(d.masks, torch.from_numpy(expected[variant]))


def test_load_real_resize_crop_and_cache(clevrer_root, tmp_path, monkeypatch):
    root, _, expected = clevrer_root
    d = load_clevrer_real(root, "S", "train", size=(16, 16), crop=True, max_videos=1, cache_dir=tmp_path,
                          progress=False)
    assert d.images.shape == (1, 2, 3, 16, 16) and d.masks.shape == (1, 2, 16, 16)
    # Nearest-neighbour mask resizing keeps the identities: no new indices appear.
    assert set(d.masks.unique().tolist()) <= set(np.unique(expected["S"][0]).tolist())
    assert set(d.masks[0, 1].unique().tolist()) == {0, 1, 2, 3}
    # Second call comes from the cache: decoding is not called again.
    monkeypatch.setattr(real, "read_video_frames", lambda *a: pytest.fail("decoded again despite the cache"))
    again = load_clevrer_real(root, "S", "train", size=(16, 16), crop=True, max_videos=1, cache_dir=tmp_path,
                              progress=False)
    assert torch.equal(again.images, d.images) and torch.equal(again.masks, d.masks) and again.ids == d.ids


def test_load_real_errors_name_the_file(clevrer_root, tmp_path):
    root, _, _ = clevrer_root
    kw = {"cache_dir": tmp_path, "use_cache": False, "progress": False}
    with pytest.raises(DataFormatError, match=r"video_10000\.mp4: has 20 frames"):
        load_clevrer_real(root, "L", "val", **kw)
    with pytest.raises(MissingDataError, match="video_test"):
        load_clevrer_real(root, "S", "test", **kw)
    (tmp_path / "empty/video_train").mkdir(parents=True)
    with pytest.raises(MissingDataError, match="derender_proposals"):
        load_clevrer_real(tmp_path / "empty", "S", "train", **kw)
    with pytest.raises(MissingDataError, match="CLEVRER data folder"):
        load_clevrer_real(tmp_path / "absent", "S", "train", **kw)
    with pytest.raises(ValueError, match="variant"):
        load_clevrer_real(root, "M", "train", **kw)


@pytest.mark.parametrize("breakage, match", [
    ("missing_field", r"proposal_00000\.json: frame 0 object 0 lacks one of mask, color"),
    ("wrong_size", r"proposal_00000\.json: frame 0 object 0 mask is 10x10, the frame of .*video_00000\.mp4 is 32x48"),
    ("missing_frame", r"proposal_00000\.json: no entry with frame_index 15"),
    ("bad_json", r"proposal_00000\.json: cannot read JSON"),
    ("bad_annotation", r"annotation_00000\.json: object_property\[0\] lacks"),
    ("missing_proposal", r"proposal_00000\.json does not exist"),
    ("other_video", r"proposal_00000\.json: proposals of video 3, not of .*video_00000\.mp4"),
    ("short_video", r"video_00000\.mp4: has 12 frames, frame index 15 is needed"),
])
def test_bad_records_name_the_file(tmp_path, breakage, match):
    root = tmp_path / "root"
    frames = np.zeros((12 if breakage == "short_video" else 16, H, W, 3), np.uint8)
    write_video(root / "video_train/v/video_00000.mp4", frames)
    obj = proposal_object(_box(0, 0, 4, 4), "red", "metal", "cube")
    prop = {"frames": [{"frame_index": 0, "objects": [obj]}, {"frame_index": 15, "objects": [obj]}]}
    ann = {"object_property": [{"object_id": 0, "color": "red", "material": "metal", "shape": "cube"}]}
    if breakage == "missing_field":
        del prop["frames"][0]["objects"][0]["color"]
    elif breakage == "wrong_size":
        prop["frames"][0]["objects"][0] = proposal_object(np.zeros((10, 10), bool), "red", "metal", "cube")
    elif breakage == "missing_frame":
        prop["frames"].pop()
    elif breakage == "bad_annotation":
        del ann["object_property"][0]["object_id"]
    elif breakage == "other_video":
        prop["video_index"] = 3
    (root / "derender_proposals").mkdir()
    (root / "annotation_train").mkdir()
    (root / "annotation_train/annotation_00000.json").write_text(json.dumps(ann))
    if breakage == "bad_json":
        (root / "derender_proposals/proposal_00000.json").write_text("{oops")
    elif breakage != "missing_proposal":
        (root / "derender_proposals/proposal_00000.json").write_text(json.dumps(prop))
    with pytest.raises(ValueError, match=match):
        load_clevrer_real(root, "S", "train", size=None, use_cache=False, progress=False)


def test_official_splits_and_chosen_videos(clevrer_root, tmp_path):
    train, val, test = (official_video_ids(s) for s in ("train", "val", "test"))
    assert len(train) == 9_998 and train[0] == 0 and train[-1] == 9_999 and {7648, 9777}.isdisjoint(train)
    assert val == list(range(10_000, 10_320)) and test == list(range(15_000, 20_000))
    with pytest.raises(ValueError, match="split"):
        official_video_ids("dev")
    root, frames, expected = clevrer_root
    kw = {"size": None, "cache_dir": tmp_path, "progress": False}
    d = load_clevrer_real(root, "S", "train", video_ids=[1], **kw)
    assert d.ids == ["video_00001"] and torch.equal(d.masks, torch.from_numpy(expected["S"][1:]))
    # the first of the listed videos (max_videos) must exist; later ones are not needed
    assert load_clevrer_real(root, "S", "train", video_ids=[0, 5], max_videos=1, **kw).ids == ["video_00000"]
    with pytest.raises(MissingDataError, match=r"CLEVRER train videos: video_00005\.mp4 and 1 more not found"):
        load_clevrer_real(root, "S", "train", video_ids=[0, 5, 6], **kw)
