"""Tests for tasks.multi_dsprites: the generator, and the TFRecord / HDF5 readers on fixtures written here in
DeepMind's exact format (GZIP TFRecord, one-byte strings per pixel value, masks in (H, W, E, 1) order)."""
import h5py
import numpy as np
import pytest
import torch

from tasks.multi_dsprites import (DEFAULT_VARIANT, MAX_OBJECTS, SPLITS, entity_masks_to_index,
                                  generate_multi_dsprites, load_multi_dsprites, read_multi_dsprites_hdf5, read_multi_dsprites_tfrecord)
from tasks.multi_dsprites.show import main as show_main
from tasks.scenes import DataFormatError, MissingDataError
from tasks.scenes.tfrecord import encode_example, write_tfrecord


@pytest.fixture(scope="module")
def gen():
    return generate_multi_dsprites(600, seed=3, progress=False)  # the default: colored on grayscale, 2-5 sprites


@pytest.fixture(scope="module")
def gen_colored():
    return generate_multi_dsprites(600, seed=3, min_objects=1, max_objects=4, background="colored", progress=False)


# ---- generator --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["grayscale", "colored"])
def test_generator_shapes_and_counts(gen, gen_colored, variant):
    g, lo, hi = (gen, 2, 5) if variant == "grayscale" else (gen_colored, 1, 4)
    n = 600
    assert g["images"].shape == (n, 3, 64, 64) and g["images"].dtype == np.uint8
    assert g["masks"].shape == (n, 64, 64) and g["masks"].dtype == np.uint8
    counts = g["num_objects"]
    assert set(np.unique(counts)) == set(range(lo, hi + 1))  # all counts occur in 600 draws
    assert np.bincount(counts)[lo:].min() > 90  # roughly uniform
    # Every mask index belongs to a drawn sprite: indices are in [0, num_objects].
    assert (g["masks"].reshape(n, -1).max(1) <= counts).all()
    # Most drawn sprites are visible (occlusion hides a few completely).
    visible = np.array([len(np.unique(m)) - 1 for m in g["masks"]])
    assert (visible <= counts).all() and (visible == counts).mean() > 0.8
    shapes = g["shape"][g["shape"] >= 0]
    assert set(np.unique(shapes)) == {0, 1, 2}
    assert np.isnan(g["scale"][g["shape"] < 0]).all() and not np.isnan(g["scale"][g["shape"] >= 0]).any()


def test_default_is_grayscale_background_with_coloured_sprites(gen, gen_colored):
    assert MAX_OBJECTS == 5 and DEFAULT_VARIANT == "colored_on_grayscale"
    bg = gen["colors"][:, 0]  # (N, 3)
    assert (bg == bg[:, :1]).all()  # R = G = B
    assert len(np.unique(bg[:, 0])) > 100  # a random grey level per image
    sprite = gen["colors"][:, 1:]
    assert (sprite.max(-1) != sprite.min(-1)).mean() > 0.95  # sprites coloured
    # Background pixels really are grey; in the coloured variant they are not.
    img, masks = gen["images"], gen["masks"]
    bg_pix = img.transpose(0, 2, 3, 1)[masks == 0]  # (P, 3)
    assert (bg_pix == bg_pix[:, :1]).all()
    bgc = gen_colored["colors"][:, 0]
    assert (bgc.max(-1) != bgc.min(-1)).mean() > 0.95


@pytest.mark.parametrize("variant", ["grayscale", "colored"])
def test_generator_masks_partition_and_colours(gen, gen_colored, variant):
    # Each pixel's colour is exactly the colour of the entity its mask index names: the index map is a
    # partition of the image into background and objects, and occlusion order is respected.
    g = gen if variant == "grayscale" else gen_colored
    imgs, masks, colors = g["images"], g["masks"], g["colors"]
    expected = colors[np.arange(len(imgs))[:, None, None], masks].transpose(0, 3, 1, 2)
    assert np.array_equal(imgs, expected)
    oh = torch.nn.functional.one_hot(torch.from_numpy(masks).long(), 6)
    assert torch.equal(oh.sum(-1), torch.ones(masks.shape, dtype=torch.long))


def test_generator_sprite_sizes(gen_colored):
    # Sprites have sensible sizes: 9 px half-size at scale 1, i.e. between ~40 and ~400 visible pixels
    # for a single unoccluded sprite.
    single = gen_colored["num_objects"] == 1
    areas = (gen_colored["masks"][single] == 1).reshape(single.sum(), -1).sum(1)
    assert areas.min() > 30 and areas.max() < 450


def test_generator_object_positions_match_masks(gen_colored):
    # For single-sprite images, the mask centroid is near the sprite centre latent (x, y) (hearts and
    # clipped sprites are off-centre by a few pixels at most).
    g = gen_colored
    single = np.flatnonzero(g["num_objects"] == 1)
    for i in single[:40]:
        ys, xs = np.nonzero(g["masks"][i] == 1)
        cx, cy = (xs.mean() + 0.5) / 64, (ys.mean() + 0.5) / 64
        assert abs(cx - g["x"][i, 0]) < 4 / 64 and abs(cy - g["y"][i, 0]) < 4 / 64


def test_generator_is_deterministic_and_prefix_stable(gen):
    again = generate_multi_dsprites(600, seed=3, chunk=77, progress=False)
    for k in gen:
        assert np.array_equal(gen[k], again[k], equal_nan=True), k
    prefix = generate_multi_dsprites(100, seed=3, progress=False)
    assert np.array_equal(prefix["images"], gen["images"][:100])
    other = generate_multi_dsprites(100, seed=4, progress=False)
    assert not np.array_equal(other["images"], prefix["images"])
    with pytest.raises(ValueError, match="min_objects"):
        generate_multi_dsprites(5, min_objects=0)
    with pytest.raises(ValueError, match="background"):
        generate_multi_dsprites(5, background="grey")


def test_load_generated_splits_are_cached_and_distinct(tmp_path):
    tr = load_multi_dsprites("train", num_images=40, cache_dir=tmp_path, progress=False)
    va = load_multi_dsprites("val", num_images=40, cache_dir=tmp_path, progress=False)
    assert len(tr) == 40 and tr.images.shape == (40, 3, 64, 64) and tr.masks.dtype == torch.uint8
    assert not torch.equal(tr.images, va.images)
    assert len(list(tmp_path.glob("multi_dsprites-*.npz"))) == 2
    again = load_multi_dsprites("train", num_images=40, cache_dir=tmp_path, progress=False)
    assert torch.equal(again.images, tr.images) and torch.equal(again.masks, tr.masks)
    assert tr.meta["variant"] == "colored_on_grayscale" and int(tr.masks.max()) <= 5
    col = load_multi_dsprites("train", num_images=40, cache_dir=tmp_path, progress=False,
                              variant="colored_on_colored")
    assert not torch.equal(col.images, tr.images) and int(col.masks.max()) <= 4
    with pytest.raises(ValueError, match="variant"):
        load_multi_dsprites("train", num_images=4, cache_dir=tmp_path, variant="binarized")
    with pytest.raises(ValueError, match="split"):
        load_multi_dsprites("training", cache_dir=tmp_path)


# ---- real formats -----------------------------------------------------------------------------------------
def _deepmind_record(image_hwc: np.ndarray, entity_masks_ehw: np.ndarray, one_string: bool = False) -> bytes:
    """An Example exactly as DeepMind's files hold it: one 1-byte string per value, masks in (H, W, E, 1)."""
    e = entity_masks_ehw.shape[0]
    mask_raw = entity_masks_ehw.transpose(1, 2, 0)[..., None]  # (H, W, E, 1)
    if one_string:
        image_f, mask_f = [image_hwc.tobytes()], [mask_raw.tobytes()]
    else:
        image_f = [bytes([v]) for v in image_hwc.ravel()]
        mask_f = [bytes([v]) for v in mask_raw.ravel()]
    return encode_example({
        "image": image_f, "mask": mask_f,
        "x": np.random.default_rng(0).random(e), "y": np.zeros(e), "shape": np.zeros(e),
        "color": np.zeros((e, 3)), "visibility": np.ones(e), "orientation": np.zeros(e), "scale": np.zeros(e),
    })


def _fixture(n=5, seed=0, colored=False):
    kw = dict(min_objects=1, max_objects=4, background="colored") if colored else {}
    g = generate_multi_dsprites(n, seed=seed, progress=False, **kw)
    e = 5 if colored else 6  # DeepMind's entities per scene: background + max objects
    entity = (g["masks"][:, None] == np.arange(e)[None, :, None, None]).astype(np.uint8) * 255  # (N, E, H, W)
    return g["images"], g["masks"], entity


@pytest.mark.parametrize("variant", ["colored_on_grayscale", "colored_on_colored"])
def test_tfrecord_reader_returns_exact_arrays(tmp_path, variant):
    images, masks, entity = _fixture(colored=variant == "colored_on_colored")
    path = tmp_path / f"multi_dsprites_{variant}.tfrecords"
    recs = [_deepmind_record(images[i].transpose(1, 2, 0), entity[i], one_string=(i == 2)) for i in range(5)]
    write_tfrecord(path, recs, compression="GZIP")
    data = read_multi_dsprites_tfrecord(path, variant=variant, progress=False)
    assert torch.equal(data.images, torch.from_numpy(images))
    assert torch.equal(data.masks, torch.from_numpy(masks))
    part = read_multi_dsprites_tfrecord(path, start=1, count=2, variant=variant, progress=False)
    assert torch.equal(part.images, torch.from_numpy(images[1:3])) and part.ids[0].endswith(":1")
    with pytest.raises(DataFormatError, match=r"records 3\.\.5 were asked for, but the file ends after record 4"):
        read_multi_dsprites_tfrecord(path, start=3, count=3, variant=variant, progress=False)


def test_tfrecord_reader_errors_name_file_and_record(tmp_path):
    images, _, entity = _fixture(2)
    path = tmp_path / "md.tfrecords"
    good = _deepmind_record(images[0].transpose(1, 2, 0), entity[0])
    write_tfrecord(path, [good, encode_example({"image": [b"\x00"] * 10})], compression="GZIP")
    with pytest.raises(DataFormatError, match=r"md\.tfrecords: record 1: feature 'image' has 10 bytes"):
        read_multi_dsprites_tfrecord(path, progress=False)
    write_tfrecord(path, [encode_example({"x": np.zeros(3)})], compression="GZIP")
    with pytest.raises(DataFormatError, match=r"record 0 has no bytes feature 'image'"):
        read_multi_dsprites_tfrecord(path, progress=False)
    write_tfrecord(path, [good])
    with pytest.raises(DataFormatError, match="'mask' has 24576 bytes.*variant"):
        read_multi_dsprites_tfrecord(path, variant="colored_on_colored", progress=False)
    # A record without its mask, and a corrupt record, are named too.
    no_mask = encode_example({"image": [bytes([v]) for v in images[0].transpose(1, 2, 0).ravel()]})
    write_tfrecord(path, [good, good, no_mask])
    with pytest.raises(DataFormatError, match=r"md\.tfrecords: record 2 has no bytes feature 'mask'"):
        read_multi_dsprites_tfrecord(path, progress=False)
    write_tfrecord(path, [good, good])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 + 100] ^= 0xFF  # flip a byte inside record 1's data
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match=r"md\.tfrecords: data CRC mismatch at record 1"):
        read_multi_dsprites_tfrecord(path, progress=False)


@pytest.mark.parametrize("layout", ["index_hwc", "entity_chw_float", "deepmind_raw", "split_groups"])
def test_hdf5_reader_returns_exact_arrays(tmp_path, layout):
    images, masks, entity = _fixture(6, seed=1)
    path = tmp_path / "md.h5"
    with h5py.File(path, "w") as f:
        if layout == "index_hwc":
            f["images"] = images.transpose(0, 2, 3, 1)
            f["masks"] = masks[..., None]
        elif layout == "entity_chw_float":
            f["images"] = images.astype(np.float32) / 255
            f["masks"] = entity // 255
        elif layout == "deepmind_raw":
            f["imgs"] = images.transpose(0, 2, 3, 1)
            f["mask"] = entity.transpose(0, 2, 3, 1)[..., None]  # (N, H, W, E, 1)
        else:
            f["train/images"] = images[:4].transpose(0, 2, 3, 1)
            f["train/masks"] = masks[:4]
            f["validation/images"] = images[4:].transpose(0, 2, 3, 1)
            f["validation/masks"] = masks[4:]
    if layout == "split_groups":
        val = read_multi_dsprites_hdf5(path, split="val")
        assert torch.equal(val.images, torch.from_numpy(images[4:]))
        assert torch.equal(val.masks, torch.from_numpy(masks[4:]))
        tr = read_multi_dsprites_hdf5(path, split="train", start=1, count=2)
        assert torch.equal(tr.images, torch.from_numpy(images[1:3]))
    else:
        data = read_multi_dsprites_hdf5(path)
        assert torch.equal(data.images, torch.from_numpy(images))
        assert torch.equal(data.masks, torch.from_numpy(masks))


def test_hdf5_reader_errors(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(DataFormatError, match=r"bad\.h5: no dataset named masks / mask"):
        read_multi_dsprites_hdf5(path)
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 64, 64, 3), np.uint8)
        f["masks"] = np.zeros((2, 32, 32), np.uint8)
    with pytest.raises(DataFormatError, match=r"bad\.h5: masks in /masks have shape \(2, 32, 32\)"):
        read_multi_dsprites_hdf5(path)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataFormatError, match="text.h5: not a readable HDF5"):
        read_multi_dsprites_hdf5(tmp_path / "text.h5")


def test_load_real_via_data_dir_uses_split_ranges(tmp_path, monkeypatch):
    # Shrink the split table so the fixture holds train, val and test records.
    monkeypatch.setitem(SPLITS, "train", (0, 3))
    monkeypatch.setitem(SPLITS, "val", (3, 2))
    images, masks, entity = _fixture(5, seed=2)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_tfrecord(data_dir / "multi_dsprites_colored_on_grayscale.tfrecords",
                   [_deepmind_record(images[i].transpose(1, 2, 0), entity[i]) for i in range(5)], compression="GZIP")
    cache = tmp_path / "cache"
    tr = load_multi_dsprites("train", data_dir=data_dir, cache_dir=cache, progress=False)
    va = load_multi_dsprites("val", data_dir=data_dir, cache_dir=cache, progress=False)
    assert torch.equal(tr.images, torch.from_numpy(images[:3])) and torch.equal(va.masks, torch.from_numpy(masks[3:]))
    assert tr.meta["source"] == "multi_dsprites-real" and len(list(cache.glob("*.npz"))) == 2
    with pytest.raises(MissingDataError, match="nowhere"):
        load_multi_dsprites("train", data_dir=tmp_path / "nowhere", cache_dir=cache)


def test_splits_follow_the_official_configuration():
    # first 60,000 records train, next 320 validation, next 2,880 test (config/data/mdsprites.yaml)
    assert SPLITS == {"train": (0, 60_000), "val": (60_000, 320), "test": (60_320, 2_880)}


def test_data_dir_prefers_the_variants_file(tmp_path):
    gray, gray_masks, gray_ent = _fixture(2, seed=5)
    col, col_masks, col_ent = _fixture(2, seed=6, colored=True)
    for name, imgs, ent in (("colored_on_grayscale", gray, gray_ent), ("colored_on_colored", col, col_ent)):
        write_tfrecord(tmp_path / f"multi_dsprites_{name}.tfrecords",
                       [_deepmind_record(imgs[i].transpose(1, 2, 0), ent[i]) for i in range(2)], compression="GZIP")
    cache = tmp_path / "cache"
    default = load_multi_dsprites("train", num_images=2, data_dir=tmp_path, cache_dir=cache, progress=False)
    assert torch.equal(default.images, torch.from_numpy(gray))
    other = load_multi_dsprites("train", num_images=2, data_dir=tmp_path, cache_dir=cache, progress=False,
                                variant="colored_on_colored")
    assert torch.equal(other.masks, torch.from_numpy(col_masks))


def test_entity_masks_to_index():
    ent = np.zeros((1, 3, 2, 2), np.uint8)
    ent[0, 0] = 255
    ent[0, 2, 0, 1] = 255
    ent[0, 0, 0, 1] = 0
    assert entity_masks_to_index(ent).tolist() == [[[0, 2], [0, 0]]]


def test_show_entry_point(tmp_path, monkeypatch):
    monkeypatch.setenv("SA_MESH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "grid.png"
    assert show_main(["--num", "4", "--ncols", "2", "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size[0] > 2 * 2 * 128  # two samples per row, two 128-px panels each
