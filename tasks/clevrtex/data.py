"""ClevrTex for object discovery (Sec. 5.3, App. F.3): generator and real-format loader.

Real ClevrTex (Karazija et al., 2021) is CLEVR's world with textured objects and ground: 320x240 images,
3-10 objects, four shapes, three sizes (0.9, 0.6, 0.4), 60 materials. The paper preprocesses it as the
benchmark's own loader does: a centre crop of side ``int(0.8 * 240) = 192`` (pixel box (64, 24, 256, 216)),
then a resize to 64x64 (bilinear for images, nearest for masks); up to 10 objects, so 11 slots.

Generated (the embedded default): scenes drawn by CLEVR's rules with ClevrTex's object counts (3-10) and
sizes, rendered by ``tasks.scenes.render`` directly into the 64x64 crop (2x2 rays per pixel, so fine
textures are averaged as the downscaling of the real renders does). Every object and the ground get one
of ``TEX_MATERIALS``: procedural value noise, stripes, checks or marble (plain and metallic variants) in
two random colours. Masks are index maps with k = ``objects[k - 1]`` (ClevrTex's ``index``), 0 = ground;
objects outside the crop are in the metadata but not in the mask, as in the real data. The visibility rule
(200 pixels per object) is checked in the full 320x240 frame, as ClevrTex's generator does.

Real: the ``clevrtex_<variant>`` folder (any sub-folders) with ``CLEVRTEX_<variant>_NNNNNN.png`` (image),
``CLEVRTEX_<variant>_NNNNNN_flat.png`` (object index mask) and ``CLEVRTEX_<variant>_NNNNNN.json``
(metadata with an ``objects`` list). Splits are index ranges of the sorted file numbers as in the
benchmark's loader: test [0, 10%), val [10%, 20%), train [20%, 100%); the ``outd`` (out-of-distribution)
variant has no splits there, so every split of it is the whole set, as there. For the 50,000 images of
``full`` this gives the official MESH configuration's test [0, 5,000) and train [10,000, 50,000).

Known limits: ClevrTex's fourth shape (Suzanne, the monkey head) is not generated; the 60 scanned
materials are stood in for by 16 procedural ones.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..clevr.data import encode_scenes
from ..scenes.cache import cached
from ..scenes.records import DataFormatError, MissingDataError, SceneData, require_dir, require_file
from ..scenes.render import (SHAPES, TEXTURES, Camera, cached_scenes, check_generation, concat_blocks,
                             geometry_batch, project, render, run_in_blocks, sample_geometry)

__all__ = [
    "GENERATOR_VERSION", "IMAGE_SIZE", "MAX_OBJECTS", "SIZES", "TEX_MATERIALS", "SPLITS", "CROP_FRACTION",
    "NATIVE_SIZE", "generate_clevrtex", "read_clevrtex", "load_clevrtex", "crop_and_resize",
]

GENERATOR_VERSION = "2"
IMAGE_SIZE = 64
MAX_OBJECTS = 10
NATIVE_SIZE = (320, 240)
CROP_FRACTION = 0.8
SIZES = {"large": 0.9, "medium": 0.6, "small": 0.4}
# name -> (texture kind, pattern frequency per world unit, metallic)
TEX_MATERIALS = {
    "plain_rubber": ("plain", 1.0, False), "plain_metal": ("plain", 1.0, True),
    "noise_fine": ("noise", 7.0, False), "noise_coarse": ("noise", 3.0, False), "noise_metal": ("noise", 5.0, True),
    "stripes_thin": ("stripes", 5.0, False), "stripes_wide": ("stripes", 2.0, False),
    "stripes_metal": ("stripes", 3.5, True),
    "checks_small": ("checks", 5.0, False), "checks_large": ("checks", 2.2, False),
    "checks_metal": ("checks", 3.5, True),
    "marble_fine": ("marble", 3.0, False), "marble_coarse": ("marble", 1.4, False),
    "marble_metal": ("marble", 2.2, True),
    "noise_dense": ("noise", 12.0, False), "stripes_dense": ("stripes", 8.0, False),
}
# Generated split -> (stream id, default size); real split -> fraction range of the sorted index.
SPLITS = {"train": (0, 40_000), "val": (1, 5_000), "test": (2, 5_000)}
REAL_SPLITS = {"test": (0.0, 0.1), "val": (0.1, 0.2), "train": (0.2, 1.0)}
UNSPLIT_VARIANTS = ("outd",)  # the benchmark's loader gives every split of these the whole set
BLOCK = 32
_GROUND_FREQ_SCALE = 0.5
_MAT_NAMES = tuple(TEX_MATERIALS)
_SIZE_NAMES = tuple(SIZES)


def _camera(crop: bool = True) -> Camera:
    cam = Camera(native_size=NATIVE_SIZE)
    return cam.center_crop(CROP_FRACTION) if crop else cam


# ---- generator ------------------------------------------------------------------------------------------------
def _unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.normal(size=shape + (3,))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _clevrtex_block(seed: int, stream: int, block: int, count: int, image_size: int):
    """One block of ClevrTex-like scenes: images, masks, metadata dicts (first ``count`` of BLOCK)."""
    rng = np.random.default_rng([seed, stream, block])
    full = _camera(crop=False)
    geom = sample_geometry(rng, BLOCK, full, tuple(SIZES.values()), 3, MAX_OBJECTS)
    k = MAX_OBJECTS
    mat = rng.integers(0, len(TEX_MATERIALS), size=(BLOCK, k))
    c1, c2 = rng.random((BLOCK, k, 3)), rng.random((BLOCK, k, 3))
    tdir = _unit_vectors(rng, (BLOCK, k))
    gmat = rng.integers(0, len(TEX_MATERIALS), size=BLOCK)
    g1, g2 = rng.random((BLOCK, 3)), rng.random((BLOCK, 3))
    gdir = _unit_vectors(rng, (BLOCK,))
    sl = slice(0, count)
    geom = {key: v[sl] for key, v in geom.items()}
    mat, c1, c2, tdir, gmat, g1, g2, gdir = (x[sl] for x in (mat, c1, c2, tdir, gmat, g1, g2, gdir))
    kinds = np.array([TEXTURES.index(TEX_MATERIALS[m][0]) for m in _MAT_NAMES])
    freqs = np.array([TEX_MATERIALS[m][1] for m in _MAT_NAMES])
    metal = np.array([TEX_MATERIALS[m][2] for m in _MAT_NAMES])
    # The ground is a single matte material; plain grounds get a faint second colour to stay close to c1.
    batch = geometry_batch(
        geom, albedo=c1, metal=metal[mat], ground_albedo=0.2 + 0.6 * g1,
        texture=kinds[mat], albedo2=c2, tex_freq=freqs[mat], tex_dir=tdir,
        ground_texture=kinds[gmat], ground_albedo2=0.2 + 0.6 * g2, ground_freq=freqs[gmat] * _GROUND_FREQ_SCALE,
        ground_dir=gdir)
    cam = _camera(crop=True)
    images, masks = render(batch, cam, image_size, image_size, supersample=2, chunk=2)
    centres = torch.from_numpy(np.concatenate([np.nan_to_num(geom["xy"]), geom["r"][..., None]], -1))
    pix = project(centres, torch.from_numpy(geom["camera"]), full, NATIVE_SIZE[1], NATIVE_SIZE[0]).numpy()
    metas = []
    for b in range(count):
        idx = block * BLOCK + b
        objs = []
        for j in range(int(geom["num_objects"][b])):
            objs.append({
                "index": j + 1, "shape": SHAPES[geom["shape"][b, j]], "size": _SIZE_NAMES[geom["size"][b, j]],
                "material": _MAT_NAMES[mat[b, j]], "rotation": float(geom["rotation"][b, j]),
                "3d_coords": [float(geom["xy"][b, j, 0]), float(geom["xy"][b, j, 1]), float(geom["r"][b, j])],
                "pixel_coords": [int(round(pix[b, j, 0])), int(round(pix[b, j, 1])), float(pix[b, j, 2])],
            })
        metas.append({"image_index": idx, "image_filename": f"CLEVRTEX_generated_{idx:06d}.png",
                      "num_objects": len(objs), "ground_material": _MAT_NAMES[gmat[b]], "objects": objs})
    return images.numpy(), masks.numpy(), metas


def generate_clevrtex(num_images: int, seed: int = 0, split: str = "train", image_size: int = IMAGE_SIZE,
                      workers: int = 1, progress: bool = True) -> dict[str, np.ndarray]:
    """Generate ClevrTex-like scenes (already centre-cropped and at ``image_size``), deterministically in
    (seed, split); the first m images of a set of n > m equal the set of m.

    Returns a dict of numpy arrays: images uint8 (N, 3, S, S); masks uint8 (N, S, S) (0 = ground, k =
    objects[k - 1]); num_objects int64 (N,) (objects in the scene, some possibly outside the crop);
    meta_json uint8 (L,) and meta_offsets int64 (N + 1,): per-image metadata in ClevrTex's JSON layout
    (``tasks.clevr.decode_scenes`` turns them into dicts).
    """
    check_generation(num_images, seed, image_size, split, SPLITS)
    stream, s = SPLITS[split][0], image_size
    parts = run_in_blocks(_clevrtex_block, num_images, BLOCK, lambda blk, n: (seed, stream, blk, n, s), workers,
                          progress, f"ClevrTex {split}")
    images, masks, metas = concat_blocks(parts, (0, 3, s, s), (0, s, s))
    data, offsets = encode_scenes(metas)
    return {"images": images, "masks": masks, "num_objects": np.array([m["num_objects"] for m in metas], np.int64),
            "meta_json": data, "meta_offsets": offsets}


# ---- real data ----------------------------------------------------------------------------------------------
def crop_and_resize(image, mask=None, crop: bool = True, size: int | None = IMAGE_SIZE):
    """ClevrTex's preprocessing of one PIL image and its PIL index mask (or None): centre crop of side
    ``int(0.8 * min(W, H))`` and resize to size x size (bilinear image, nearest mask).

    Returns image uint8 (3, s, s) (the first three channels) and mask uint8 (s, s) (None without a mask)."""
    from PIL import Image

    if crop:
        c = int(CROP_FRACTION * float(min(image.width, image.height)))
        box = ((image.width - c) // 2, (image.height - c) // 2, (image.width + c) // 2, (image.height + c) // 2)
        image = image.crop(box)
        mask = None if mask is None else mask.crop(box)
    if size is not None:
        image = image.resize((size, size), resample=Image.BILINEAR)
        mask = None if mask is None else mask.resize((size, size), resample=Image.NEAREST)
    img = np.asarray(image)
    img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
    return np.ascontiguousarray(img.transpose(2, 0, 1)), None if mask is None else np.asarray(mask)


def _index_clevrtex(root: Path, variant: str) -> dict[int, Path]:
    pattern = re.compile(rf"^CLEVRTEX_{re.escape(variant)}_(\d{{6}})\.png$")
    index: dict[int, Path] = {}
    for p in root.rglob(f"CLEVRTEX_{variant}_*.png"):
        m = pattern.match(p.name)
        if not m:
            continue
        i = int(m.group(1))
        if i in index:
            raise DataFormatError(f"ClevrTex: image number {i} appears twice: {index[i]} and {p}")
        index[i] = p
    return index


def read_clevrtex(data_dir: str | Path, split: str = "train", variant: str = "full", max_images: int | None = None,
                  crop: bool = True, size: int | None = IMAGE_SIZE,
                  native_size: tuple[int, int] | None = NATIVE_SIZE, progress: bool = True) -> SceneData:
    """Read a split of the real ClevrTex data (``data_dir`` is ``clevrtex_<variant>`` or its parent).

    Args:
        split: "train", "val" or "test" (index ranges, see the module docstring; the whole set for "outd").
        variant: "full", "camo", "grassbg", "pbg", "vbg" or "outd" (file-name infix).
        max_images: read only the first this-many images of the split.
        crop, size: centre crop and resize (``crop_and_resize``); size None keeps the cropped size.
        native_size: (W, H) every image must have (320x240); None accepts any size shared by image and mask.

    Returns:
        SceneData with images uint8 (N, 3, S, S), masks uint8 (N, S, S) (0 = background, k = object k),
        ids = image file names.

    Raises:
        MissingDataError for a missing folder or a missing mask / metadata file (naming it), DataFormatError
        naming the file for wrong sizes, a mask that is not an index image or a JSON file without ``objects``.
    """
    from PIL import Image
    from tqdm import tqdm

    if split not in REAL_SPLITS:
        raise ValueError(f"split must be one of {sorted(REAL_SPLITS)}, got {split!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    root = require_dir(Path(data_dir).expanduser(), "ClevrTex data folder")
    sub = f"clevrtex_{variant.lower()}"
    if root.name != sub and (root / sub).is_dir():
        root = root / sub
    index = _index_clevrtex(root, variant)
    if not index:
        raise MissingDataError(f"ClevrTex: no CLEVRTEX_{variant}_NNNNNN.png images under {root}")
    numbers = sorted(index)
    missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
    if missing:
        more = " ..." if len(missing) > 10 else ""
        raise DataFormatError(f"ClevrTex: {root} lacks image numbers {missing[:10]}{more}")
    lo, hi = (0.0, 1.0) if variant.lower() in UNSPLIT_VARIANTS else REAL_SPLITS[split]
    n = len(numbers)
    chosen = numbers[int(lo * n):int(hi * n)]
    if max_images is not None:
        chosen = chosen[:max_images]
    if not chosen:
        raise DataFormatError(f"ClevrTex: split {split!r} of the {n} images under {root} is empty")
    images, masks, ids = [], [], []
    for i in tqdm(chosen, desc=f"reading ClevrTex {split}", unit="img", disable=not progress):
        img_path = index[i]
        stem = img_path.name[:-len(".png")]
        msk_path = require_file(img_path.with_name(f"{stem}_flat.png"), "ClevrTex mask")
        meta_path = require_file(img_path.with_name(f"{stem}.json"), "ClevrTex metadata")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataFormatError(f"{meta_path}: not a readable JSON file ({e})") from e
        if not isinstance(meta, dict) or not isinstance(meta.get("objects"), list):
            raise DataFormatError(f"{meta_path}: expected a JSON object with an 'objects' list")
        try:
            image, mask = Image.open(img_path), Image.open(msk_path)
            image.load()
            mask.load()
        except OSError as e:
            raise DataFormatError(f"{img_path} or {msk_path}: not a readable image ({e})") from e
        if native_size is not None and image.size != tuple(native_size):
            raise DataFormatError(f"{img_path}: image is {image.size[0]}x{image.size[1]}, expected "
                                  f"{native_size[0]}x{native_size[1]}")
        if mask.size != image.size:
            raise DataFormatError(f"{msk_path}: mask is {mask.size[0]}x{mask.size[1]}, but its image is "
                                  f"{image.size[0]}x{image.size[1]}")
        if mask.mode not in ("L", "P", "I", "I;16", "1"):
            raise DataFormatError(f"{msk_path}: mask mode {mask.mode!r} is not a single-channel index image")
        img, msk = crop_and_resize(image, mask, crop=crop, size=size)
        if msk.size and int(msk.max()) > MAX_OBJECTS:
            raise DataFormatError(f"{msk_path}: mask index {int(msk.max())} exceeds {MAX_OBJECTS} objects")
        images.append(img)
        masks.append(msk.astype(np.uint8))
        ids.append(img_path.name)
    shapes = {m.shape for m in masks}
    if len(shapes) > 1:
        raise DataFormatError(f"ClevrTex: images under {root} have different sizes {sorted(shapes)}; pass size=")
    return SceneData(np.stack(images), np.stack(masks), ids=ids,
                     meta={"source": "clevrtex-real", "split": split, "variant": variant, "root": str(root)})


# ---- entry point ----------------------------------------------------------------------------------------------
def load_clevrtex(split: str = "train", num_images: int | None = None, seed: int = 0,
                  data_dir: str | Path | None = None, variant: str = "full", cache_dir: str | Path | None = None,
                  workers: int = 1, progress: bool = True) -> SceneData:
    """ClevrTex split as SceneData: images uint8 (N, 3, 64, 64), masks uint8 (N, 64, 64), 0 = background and
    1..10 the objects.

    Args:
        split: "train", "val" or "test".
        num_images: number of samples (generated default: ``SPLITS``; real default: the whole split).
        seed: generator seed (ignored for real data).
        data_dir: the ``clevrtex_<variant>`` folder or its parent; None = generated data.
        variant: real-data variant (file-name infix), default "full".
        cache_dir: cache folder (default: $SA_MESH_CACHE or ~/.cache/sa-mesh).
        workers: generator processes (the result does not depend on it).
        progress: show progress bars.

    Both generated and real data are cached.
    """
    if data_dir is None:
        arrays, meta = cached_scenes("clevrtex", split, num_images, seed, SPLITS, IMAGE_SIZE, GENERATOR_VERSION,
                                     generate_clevrtex, workers, progress, cache_dir)
        return SceneData(arrays["images"], arrays["masks"], meta=meta)
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    root = require_dir(Path(data_dir).expanduser(), "ClevrTex data folder")
    files = sorted(root.rglob(f"CLEVRTEX_{variant}_*.png"))
    fingerprint = {"root": str(root.resolve()), "files": len(files), "bytes": int(sum(p.stat().st_size for p in files))}
    params = {"data": fingerprint, "split": split, "variant": variant, "num_images": num_images,
              "image_size": IMAGE_SIZE}
    arrays = cached(f"clevrtex-real-{split}", params, GENERATOR_VERSION,
                    lambda: read_clevrtex(root, split, variant, max_images=num_images, progress=progress).to_arrays(),
                    cache_dir)
    return SceneData.from_arrays(arrays, meta={"source": "clevrtex-real", "split": split, "variant": variant,
                                               "root": str(root)})
