"""Multi-dSprites for object discovery (Sec. 5.3, App. F.3): generator and real-data readers.

The paper follows Locatello et al. (2020), who follow IODINE: DeepMind's "colored sprites on a grayscale
background" variant with 2-5 sprites per image (6 slots). That is the default here (``DEFAULT_VARIANT``);
"colored_on_colored" (1-4 sprites on a coloured background) is the option (``VARIANTS``).

Generated (the embedded default): each 64x64 image holds min-max sprites (count uniform) of dSprites' three
shapes (square, ellipse, heart). Every sprite colour is a uniformly random RGB value; the background is a
uniform random grey level (R = G = B) for "colored_on_grayscale" and a random RGB value for
"colored_on_colored". Each sprite's latents are drawn from dSprites' grids (scale: 6 values in [0.5, 1];
orientation: 40 values in [0, 2*pi]; x and y: 32 values in [0, 1]). Sprites are binary (no anti-aliasing)
and drawn in order, later ones occluding earlier ones, so the index mask (0 = background, k = the k-th drawn
sprite) partitions the image. Rendering is vectorised with numpy over chunks of images; 60,000 images take a
few seconds.

Real data, read without TensorFlow:
- DeepMind's TFRecord files ``multi_dsprites_<variant>.tfrecords`` (GZIP; the default file is
  ``multi_dsprites_colored_on_grayscale.tfrecords``): per Example, ``image`` is a bytes_list of 64*64*3
  one-byte strings (H, W, C order) and ``mask`` a bytes_list of 64*64*E one-byte strings in (H, W, E, 1)
  order (their reader parses it as FixedLenFeature(IMAGE_SIZE + [E, 1]) and transposes to (E, H, W, 1));
  E = 6 for colored_on_grayscale (background + 5 objects), 5 for colored_on_colored, 4 for binarized. A
  single raw string per feature is accepted as well.
- The HDF5 layout of earlier PyTorch ports: datasets ``images`` (N, H, W, 3) or (N, 3, H, W) (uint8, or float
  in [0, 1]) and ``masks`` (index maps (N, H, W[, 1]), or per-entity masks (N, E, H, W[, 1]) or
  (N, H, W, E, 1)), at the top level or inside one group per split.
Per-entity masks become index maps by argmax over entities, so entity e (0 = background) becomes index e.
A corrupt record (CRC or protobuf), a missing image or mask feature, or a feature of the wrong size is a
``DataFormatError`` naming the file and the record.

Splits (``SPLITS``), as the official MESH configuration: the file's first 60,000 records are ``train``, the
next 320 ``val`` and the next 2,880 ``test``; generated splits have the same sizes and independent seeds.

Known limits: the generated sprite sizes and position margins approximate dSprites' look (we do not ship
dSprites' bitmaps); per-object factors of real files (x, y, shape, colour, ...) are not returned.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..scenes.cache import cached
from ..scenes.records import DataFormatError, MissingDataError, SceneData, require_dir, require_file
from ..scenes.render import check_generation
from ..scenes.tfrecord import read_examples

__all__ = [
    "IMAGE_SIZE", "MAX_OBJECTS", "SHAPES", "GENERATOR_VERSION", "SPLITS", "VARIANT_ENTITIES", "VARIANTS",
    "DEFAULT_VARIANT", "generate_multi_dsprites", "load_multi_dsprites", "read_multi_dsprites_tfrecord",
    "read_multi_dsprites_hdf5", "entity_masks_to_index",
]

IMAGE_SIZE = 64
SHAPES = ("square", "ellipse", "heart")
GENERATOR_VERSION = "2"
# split -> (first record / seed offset, default number of images)
SPLITS = {"train": (0, 60_000), "val": (60_000, 320), "test": (60_320, 2_880)}
# Generated variants: name -> (background, min sprites, max sprites).
VARIANTS = {"colored_on_grayscale": ("grayscale", 2, 5), "colored_on_colored": ("colored", 1, 4)}
DEFAULT_VARIANT = "colored_on_grayscale"
MAX_OBJECTS = VARIANTS[DEFAULT_VARIANT][2]  # the default variant's: 6 slots
BACKGROUNDS = ("grayscale", "colored")
# DeepMind variant -> masks per scene (background + objects); binarized images are grayscale.
VARIANT_ENTITIES = {"colored_on_colored": 5, "colored_on_grayscale": 6, "binarized": 4}

# dSprites' latent grids.
_SCALES = np.linspace(0.5, 1.0, 6)
_ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
_POSITIONS = np.linspace(0.0, 1.0, 32)
# Sprite geometry in units of the image side (64 px): half-size at scale 1 and the margin of the centre grid.
_HALF = 9.0 / 64
_MARGIN = 10.0 / 64
_LATENT_BLOCK = 1024


def _inside(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which sprite-frame points (u, v) (unit = sprite half-size, v pointing up) are inside each shape.

    shape: int (B, K, 1, 1); u, v: float (B, K, H, W). Returns bool (B, K, H, W).
    """
    square = np.maximum(np.abs(u), np.abs(v)) <= 1.0
    ellipse = (u / 1.35) ** 2 + (v / 0.7) ** 2 <= 1.0
    # Heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, which spans x in [-1.14, 1.14], y in [-1, 1.24];
    # scaled by 0.95 and shifted down so that it is centred and about as large as the square.
    x, y = u / 0.95, v / 0.95 + 0.12
    r = x * x + y * y - 1.0
    heart = r * r * r <= x * x * y * y * y
    return np.where(shape == 0, square, np.where(shape == 1, ellipse, heart))


def _render(shape, scale, theta, cx, cy, n_obj, colors, size):
    """Render a chunk. shape/scale/theta/cx/cy: (B, K); n_obj: (B,); colors: uint8 (B, K+1, 3).

    Returns images uint8 (B, 3, size, size) and index masks uint8 (B, size, size).
    """
    b, k = shape.shape
    c = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres in [0, 1]
    px = c[None, None, None, :]  # (1, 1, 1, W)
    py = c[None, None, :, None]  # (1, 1, H, 1), image rows grow downwards
    dx = px - cx[..., None, None].astype(np.float32)  # (B, K, 1, W)
    dy = cy[..., None, None].astype(np.float32) - py  # (B, K, H, 1): y up in the sprite frame
    cos = np.cos(theta)[..., None, None].astype(np.float32)
    sin = np.sin(theta)[..., None, None].astype(np.float32)
    half = (scale * _HALF)[..., None, None].astype(np.float32)
    u = (cos * dx + sin * dy) / half  # (B, K, H, W): rotate by -theta into the sprite frame
    v = (-sin * dx + cos * dy) / half
    inside = _inside(shape[..., None, None], u, v)  # (B, K, H, W)
    index = np.zeros((b, size, size), dtype=np.uint8)
    for j in range(k):  # later sprites occlude earlier ones
        draw = inside[:, j] & (j < n_obj)[:, None, None]
        index[draw] = j + 1
    images = colors[np.arange(b)[:, None, None], index]  # (B, H, W, 3)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), index


def generate_multi_dsprites(num_images: int, seed: int = 0, min_objects: int = 2,
                            max_objects: int = MAX_OBJECTS, image_size: int = IMAGE_SIZE,
                            chunk: int = 256, progress: bool = True,
                            background: str = "grayscale") -> dict[str, np.ndarray]:
    """Generate Multi-dSprites scenes, deterministically from ``seed`` (>= 0); the first m images of a set of
    n > m equal the set of m with the same seed. The defaults are the colored-on-grayscale variant (2-5
    sprites, ``background="grayscale"``); ``min_objects=1, max_objects=4, background="colored"`` is
    colored-on-colored.

    Returns a dict of numpy arrays (K = ``max_objects``):
        images uint8 (N, 3, S, S); masks uint8 (N, S, S) (0 = background, k = k-th sprite, drawn in order);
        num_objects int64 (N,); shape int64 (N, K) (0 square, 1 ellipse, 2 heart, -1 absent);
        scale, orientation float32 (N, K) (dSprites latents) and x, y float32 (N, K) (sprite centre as a
        fraction of the image side, y downwards), NaN where absent; colors uint8 (N, K+1, 3) (row 0 the background).
    """
    check_generation(num_images, seed, image_size)
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if max_objects > 254:
        raise ValueError(f"max_objects must fit a uint8 mask, got {max_objects}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    n, k = num_images, max_objects
    # Latents are drawn in fixed blocks of _LATENT_BLOCK images, each from its own stream (seed, block), so
    # the first m images of a larger set equal a set of m images, whatever the chunk size.
    blocks = []
    for blk in range(-(-n // _LATENT_BLOCK)):
        rng = np.random.default_rng([seed, blk])
        m = _LATENT_BLOCK
        latents = (rng.integers(min_objects, max_objects + 1, size=m), rng.integers(0, 3, size=(m, k)),
                   _SCALES[rng.integers(0, len(_SCALES), size=(m, k))],
                   _ORIENTATIONS[rng.integers(0, len(_ORIENTATIONS), size=(m, k))],
                   _POSITIONS[rng.integers(0, len(_POSITIONS), size=(m, k))],
                   _POSITIONS[rng.integers(0, len(_POSITIONS), size=(m, k))],
                   rng.integers(0, 256, size=(m, k + 1, 3), dtype=np.uint8))
        if background == "grayscale":
            latents[-1][:, 0, :] = rng.integers(0, 256, size=(m, 1), dtype=np.uint8)  # one grey level per image
        blocks.append(latents)
    if blocks:
        n_obj, shape, scale, theta, px, py, colors = (np.concatenate(parts)[:n] for parts in zip(*blocks))
    else:
        n_obj, shape = np.zeros(0, np.int64), np.zeros((0, k), np.int64)
        scale = theta = px = py = np.zeros((0, k))
        colors = np.zeros((0, k + 1, 3), np.uint8)
    cx = _MARGIN + px * (1 - 2 * _MARGIN)
    cy = _MARGIN + py * (1 - 2 * _MARGIN)
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=np.uint8)
    bar = tqdm(total=n, desc="Multi-dSprites", unit="img", disable=not progress or n == 0)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        images[s:e], masks[s:e] = _render(shape[s:e], scale[s:e], theta[s:e], cx[s:e], cy[s:e],
                                          n_obj[s:e], colors[s:e], image_size)
        bar.update(e - s)
    bar.close()
    absent = np.arange(k)[None, :] >= n_obj[:, None]  # (N, K)
    nan = np.float32(np.nan)
    return {
        "images": images, "masks": masks, "num_objects": n_obj.astype(np.int64),
        "shape": np.where(absent, -1, shape).astype(np.int64),
        "scale": np.where(absent, nan, scale).astype(np.float32),
        "orientation": np.where(absent, nan, theta).astype(np.float32),
        "x": np.where(absent, nan, cx).astype(np.float32),
        "y": np.where(absent, nan, cy).astype(np.float32),
        "colors": colors,
    }


def entity_masks_to_index(entity_masks: np.ndarray) -> np.ndarray:
    """Per-entity masks (N, E, H, W) (binary 0/1 or 0/255; entity 0 = background) -> uint8 index maps
    (N, H, W) with value e where entity e's mask is largest (ties and all-zero pixels go to the lower index)."""
    if entity_masks.ndim != 4:
        raise ValueError(f"entity masks must have shape (N, E, H, W), got {entity_masks.shape}")
    if entity_masks.shape[1] > 255:
        raise ValueError(f"too many entities for a uint8 index map: {entity_masks.shape[1]}")
    return entity_masks.argmax(axis=1).astype(np.uint8)


def _check_split(split: str) -> tuple[int, int]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _file_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_multi_dsprites_tfrecord(path: str | Path, start: int = 0, count: int | None = None,
                                 variant: str = DEFAULT_VARIANT, verify: bool = True,
                                 progress: bool = True) -> SceneData:
    """Read records ``[start, start + count)`` of DeepMind's Multi-dSprites TFRecord file.

    Returns SceneData with images uint8 (N, 3, 64, 64) (grayscale ``binarized`` images are repeated over the
    three channels) and masks uint8 (N, 64, 64), where mask index e is DeepMind's entity e (0 = background).
    Raises DataFormatError naming the file and record for missing features or wrong sizes.
    """
    if variant not in VARIANT_ENTITIES:
        raise ValueError(f"variant must be one of {sorted(VARIANT_ENTITIES)}, got {variant!r}")
    path = require_file(path, "Multi-dSprites TFRecord")
    ents = VARIANT_ENTITIES[variant]
    ch = 1 if variant == "binarized" else 3
    hw = IMAGE_SIZE * IMAGE_SIZE
    images, masks = [], []
    # the bar is closed on errors too, so that the error message starts a line of its own
    with tqdm(total=count, desc=f"reading {path.name}", unit="rec", disable=not progress) as bar:
        for i, ex in enumerate(read_examples(path, bytes_as="uint8", verify=verify, start=start, count=count)):
            rec = start + i
            for key, want in (("image", hw * ch), ("mask", hw * ents)):
                got = ex.get(key)
                if not isinstance(got, np.ndarray) or got.dtype != np.uint8:
                    raise DataFormatError(f"{path}: record {rec} has no bytes feature {key!r} "
                                          f"(features: {sorted(ex)})")
                if got.size != want:
                    raise DataFormatError(f"{path}: record {rec}: feature {key!r} has {got.size} bytes, expected "
                                          f"{want} (64x64x{want // hw}); is variant={variant!r} right?")
            img = ex["image"].reshape(IMAGE_SIZE, IMAGE_SIZE, ch).transpose(2, 0, 1)  # (C, H, W)
            images.append(np.repeat(img, 3, axis=0) if ch == 1 else img)
            ent = ex["mask"].reshape(IMAGE_SIZE, IMAGE_SIZE, ents).transpose(2, 0, 1)  # (E, H, W)
            masks.append(entity_masks_to_index(ent[None])[0])
            bar.update(1)
    if not images:
        raise DataFormatError(f"{path}: no records in range start={start}, count={count}")
    if count is not None and len(images) < count:
        raise DataFormatError(f"{path}: records {start}..{start + count - 1} were asked for, but the file ends "
                              f"after record {start + len(images) - 1}")
    return SceneData(np.stack(images), np.stack(masks), ids=[f"{path.name}:{start + i}" for i in range(len(images))],
                     meta={"source": "multi_dsprites-tfrecord", "file": str(path), "variant": variant})


def _first_key(group, names: tuple[str, ...], path: Path, where: str):
    for name in names:
        if name in group:
            return group[name]
    raise DataFormatError(f"{path}: no dataset named {' / '.join(names)} in {where} (found: {sorted(group.keys())})")


def read_multi_dsprites_hdf5(path: str | Path, split: str | None = None, start: int = 0,
                             count: int | None = None) -> SceneData:
    """Read the ``images`` / ``masks`` HDF5 layout (see the module docstring).

    If the file has a group named ``split`` (``val`` also matches ``validation``), samples ``[start,
    start + count)`` of that group are read; otherwise ``[start, start + count)`` of the top-level datasets.
    Returns SceneData with images uint8 (N, 3, H, W) and masks uint8 (N, H, W).
    """
    import h5py

    path = require_file(path, "Multi-dSprites HDF5")
    if start < 0 or (count is not None and count < 0):
        raise ValueError(f"start and count must be >= 0, got start={start}, count={count}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataFormatError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        group, where = f, "the file root"
        if split is not None:
            for name in (split, "validation") if split == "val" else (split,):
                if name in f and isinstance(f[name], h5py.Group):
                    group, where = f[name], f"group {name!r}"
                    break
        img_ds = _first_key(group, ("images", "image", "imgs"), path, where)
        msk_ds = _first_key(group, ("masks", "mask"), path, where)
        n = img_ds.shape[0]
        if msk_ds.shape[0] != n:
            raise DataFormatError(f"{path}: {img_ds.name} has {n} samples but {msk_ds.name} has {msk_ds.shape[0]}")
        stop = n if count is None else min(n, start + count)
        if start >= stop:
            raise DataFormatError(f"{path}: no samples in range start={start}, count={count} ({n} in {where})")
        img = np.asarray(img_ds[start:stop])
        msk = np.asarray(msk_ds[start:stop])
        img_name, msk_name = img_ds.name, msk_ds.name
    # Images -> uint8 (N, 3, H, W).
    if img.dtype.kind == "f":
        if img.size and (img.min() < 0 or img.max() > 1):
            raise DataFormatError(f"{path}: float images in {img_name} must lie in [0, 1]")
        img = np.rint(img * 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataFormatError(f"{path}: images in {img_name} must be uint8 or float, got {img.dtype}")
    if img.ndim == 3:
        img = img[:, None]
    elif img.ndim == 4 and img.shape[-1] in (1, 3) and img.shape[1] not in (1, 3):
        img = img.transpose(0, 3, 1, 2)
    if img.ndim != 4 or img.shape[1] not in (1, 3):
        raise DataFormatError(f"{path}: images in {img_name} have shape {img.shape}; expected (N, H, W, 3) "
                              "or (N, 3, H, W)")
    if img.shape[1] == 1:
        img = np.repeat(img, 3, axis=1)
    h, w = img.shape[2:]
    # Masks -> uint8 index maps (N, H, W).
    if msk.ndim == 5 and msk.shape[-1] == 1:
        msk = msk[..., 0]
        if msk.shape[1:3] == (h, w) and msk.shape[3] != w:  # (N, H, W, E): DeepMind's raw order
            msk = msk.transpose(0, 3, 1, 2)
        if msk.shape[2:] != (h, w):
            raise DataFormatError(f"{path}: masks in {msk_name} do not match images of size {h}x{w}")
        msk = entity_masks_to_index(msk)
    elif msk.ndim == 4 and msk.shape[1:3] == (h, w) and msk.shape[3] == 1:
        msk = msk[..., 0]
    elif msk.ndim == 4 and msk.shape[2:] == (h, w):
        msk = entity_masks_to_index(msk)
    if msk.ndim != 3 or msk.shape[1:] != (h, w):
        raise DataFormatError(f"{path}: masks in {msk_name} have shape {msk.shape}; expected index maps "
                              f"(N, {h}, {w}) or per-entity masks (N, E, {h}, {w})")
    if msk.dtype.kind not in "iub" or (msk.size and (msk.min() < 0 or msk.max() > 255)):
        raise DataFormatError(f"{path}: masks in {msk_name} must be integer indices in [0, 255]")
    return SceneData(img, msk.astype(np.uint8), ids=[f"{path.name}:{start + i}" for i in range(len(img))],
                     meta={"source": "multi_dsprites-hdf5", "file": str(path)})


def _find_real_file(data_dir: Path, variant: str) -> Path:
    if data_dir.is_file():
        return data_dir
    require_dir(data_dir, "Multi-dSprites data folder")
    preferred = [f"multi_dsprites_{variant}{ext}" for ext in (".tfrecords", ".h5", ".hdf5")]
    preferred += ["multi_dsprites.h5", "multi_dsprites.hdf5"]
    for name in preferred:
        if (data_dir / name).is_file():
            return data_dir / name
    found = sorted(p for p in data_dir.iterdir() if p.suffix in (".tfrecords", ".tfrecord", ".h5", ".hdf5"))
    if len(found) == 1:
        return found[0]
    raise MissingDataError(f"Multi-dSprites: no unique data file in {data_dir}; expected one of {preferred} "
                           f"(found {[p.name for p in found]})")


def load_multi_dsprites(split: str = "train", num_images: int | None = None, seed: int = 0,
                        data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                        progress: bool = True, variant: str = DEFAULT_VARIANT) -> SceneData:
    """A Multi-dSprites split as SceneData: images uint8 (N, 3, 64, 64), masks uint8 (N, 64, 64) with
    0 = background and 1..K the sprites (K = 5 for colored_on_grayscale, 4 for colored_on_colored).

    Args:
        split: "train", "val" or "test" (see ``SPLITS``).
        num_images: number of samples (default: the split's size in ``SPLITS``).
        seed: generator seed (ignored for real data); each split draws from its own stream.
        data_dir: a folder holding the real TFRecord or HDF5 file (or the file itself); None = generated.
            In a folder, ``multi_dsprites_<variant>.tfrecords`` (or .h5 / .hdf5) is looked for first.
        cache_dir: cache folder (default: $SA_MESH_CACHE or ~/.cache/sa-mesh).
        progress: show progress bars.
        variant: "colored_on_grayscale" (default) or "colored_on_colored" (``VARIANTS``); for real
            TFRecord files also "binarized".

    Both generated and real data are cached (real data keyed by the file's path, size and mtime).
    """
    first, default_n = _check_split(split)
    n = default_n if num_images is None else int(num_images)
    if n < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if data_dir is None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)} for generated data, got {variant!r}")
        background, lo, hi = VARIANTS[variant]
        params = {"split": split, "num_images": n, "seed": seed, "variant": variant, "image_size": IMAGE_SIZE}
        # Splits use disjoint seed streams: SeedSequence entropy (seed, split offset).
        split_seed = int(np.random.SeedSequence([seed, first]).generate_state(1)[0])
        arrays = cached(f"multi_dsprites-{split}", params, GENERATOR_VERSION,
                        lambda: generate_multi_dsprites(n, split_seed, min_objects=lo, max_objects=hi,
                                                        background=background, progress=progress), cache_dir)
        return SceneData(arrays["images"], arrays["masks"],
                         meta={"source": "multi_dsprites-generated", "split": split, "seed": seed,
                               "variant": variant, "version": GENERATOR_VERSION})
    if variant not in VARIANT_ENTITIES:
        raise ValueError(f"variant must be one of {sorted(VARIANT_ENTITIES)}, got {variant!r}")
    path = _find_real_file(Path(data_dir).expanduser(), variant)
    is_tf = path.suffix in (".tfrecords", ".tfrecord") or ".tfrecord" in path.name
    params = {"file": _file_fingerprint(path), "split": split, "num_images": n, "variant": variant}

    def build() -> dict[str, np.ndarray]:
        if is_tf:
            data = read_multi_dsprites_tfrecord(path, start=first, count=n, variant=variant, progress=progress)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                has_groups = split in f or (split == "val" and "validation" in f)
            data = read_multi_dsprites_hdf5(path, split=split if has_groups else None,
                                            start=0 if has_groups else first, count=n)
        return data.to_arrays()

    arrays = cached(f"multi_dsprites-real-{split}", params, GENERATOR_VERSION, build, cache_dir)
    return SceneData.from_arrays(arrays, meta={"source": "multi_dsprites-real", "file": str(path), "split": split,
                                               "variant": variant})
