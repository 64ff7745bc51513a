"""CLEVR for object property prediction (Sec. 5.2, App. F.2): generator and real-format loader.

Both paths meet in CLEVR's scenes-JSON schema: per scene ``image_filename`` and ``objects``, per object
``3d_coords``, ``pixel_coords``, ``rotation``, ``size``, ``material``, ``shape``, ``color`` (plus
``relationships`` and ``directions``). ``scenes_to_targets`` turns a list of such scenes into DSPN's targets
(Zhang et al., 2019): per object the 3-d coordinates divided by 3 (so about [-1, 1]) followed by one-hot
material (rubber, metal), colour (cyan, blue, yellow, purple, red, green, gray, brown), shape (sphere,
cube, cylinder) and size (large, small), 3 + 2 + 8 + 3 + 2 = 18 numbers, up to 10 objects in scene order,
with a presence mask. Images are resized to 128x128 (PIL bilinear, as torchvision's Resize does), which
squeezes CLEVR's 480x320 frame.

Generated (the embedded default): scenes drawn by CLEVR's own rules (3-10 objects; shape, colour, material,
size uniform; position uniform in [-3, 3]^2 with the minimum-distance and margin rules; rotation uniform;
camera and lights jittered) and rendered by ``tasks.scenes.render`` straight at 128x128 (the squeezed full
frame), with exact per-object index masks (0 = background, k = ``objects[k - 1]``). CLEVR's visibility rule
(200 visible pixels per object at 480x320) is applied to the rendered masks, scaled to 21 pixels at
128x128; the objects of failing scenes are redrawn, keeping the scene's object count (as CLEVR does), so
the counts stay uniform in 3-10. The ``pixel_coords`` are in the 480x320 frame, as in the real files.
Output is deterministic in the seed: scenes come in blocks of 32, each drawn from the random stream
(seed, split, block), so the result does not depend on ``workers``.

Real: ``CLEVR_v1.0/images/<split>/<image_filename>`` and ``CLEVR_v1.0/scenes/CLEVR_<split>_scenes.json``
(splits train and val; CLEVR's test split ships no scenes). CLEVR has no object masks, so real data come
with all-zero masks and ``meta["has_masks"] = False``.

Known limits: the generated images are a ray-cast approximation of CLEVR's Cycles renders (see
``tasks/scenes/render.py``); generated split sizes default to 10,000 / 2,000 / 2,000 images rather than
CLEVR's 70,000 / 15,000.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..pool import cores
from ..scenes.cache import cached
from ..scenes.records import DataFormatError, SceneData, require_dir, require_file, resize_images
from ..scenes.render import (CLEVR_MIN_PIXELS, COLOR_NAMES, COLORS, MATERIALS, SHAPES, SIZES, Camera,
                             cached_scenes, check_generation, concat_blocks, directions, geometry_batch, project,
                             render, run_in_blocks, sample_geometry)

__all__ = [
    "GENERATOR_VERSION", "IMAGE_SIZE", "MAX_OBJECTS", "TARGET_DIM", "DSPN_CLASSES", "COORD_SCALE", "SPLITS",
    "scenes_to_targets", "generate_clevr", "read_clevr", "load_clevr", "write_clevr_tree", "encode_scenes",
    "decode_scenes", "SET_PREDICTION_LAYOUT", "SET_PREDICTION_SLICES", "SET_TARGET_DIM", "set_prediction_targets",
    "resize_images", "describe_set_predictions", "ClevrSet", "load_split", "GENERATOR_SEED",
]

GENERATOR_VERSION = "2"
IMAGE_SIZE = 128
MAX_OBJECTS = 10
COORD_SCALE = 3.0
# DSPN's class order for the one-hot parts of the target.
DSPN_CLASSES = {
    "material": ("rubber", "metal"),
    "color": ("cyan", "blue", "yellow", "purple", "red", "green", "gray", "brown"),
    "shape": ("sphere", "cube", "cylinder"),
    "size": ("large", "small"),
}
TARGET_DIM = 3 + sum(len(v) for v in DSPN_CLASSES.values())
# Locatello et al.'s set-prediction layout (19 numbers per object): part -> width, in vector order. The
# one-hot parts keep DSPN's class order within each attribute.
SET_PREDICTION_LAYOUT = {"coords": 3, "size": 2, "material": 2, "shape": 3, "color": 8, "real": 1}
SET_TARGET_DIM = sum(SET_PREDICTION_LAYOUT.values())
# split -> (stream id, default number of generated images)
SPLITS = {"train": (0, 10_000), "val": (1, 2_000), "test": (2, 2_000)}
BLOCK = 32
NATIVE_SIZE = (480, 320)
_SIZE_NAMES = tuple(SIZES)
_FIELDS = ("3d_coords", "material", "color", "shape", "size")


# ---- targets ------------------------------------------------------------------------------------------------
def scenes_to_targets(scenes: list[dict], max_objects: int = MAX_OBJECTS,
                      source: str = "scenes") -> tuple[np.ndarray, np.ndarray]:
    """DSPN targets of CLEVR scenes.

    Args:
        scenes: N scene dicts with an ``objects`` list (CLEVR's schema).
        max_objects: K, rows per scene.
        source: name used in error messages (the scenes file).

    Returns:
        targets float32 (N, K, 18) (coordinates / 3, one-hot material, colour, shape, size; zero rows for
        absent objects) and presence bool (N, K).

    Raises:
        DataFormatError naming ``source``, the scene and the field for missing or unknown values, or for a
        scene with more than ``max_objects`` objects.
    """
    n = len(scenes)
    targets = np.zeros((n, max_objects, TARGET_DIM), np.float32)
    presence = np.zeros((n, max_objects), bool)
    for i, scene in enumerate(scenes):
        objs = scene.get("objects") if isinstance(scene, dict) else None
        name = scene.get("image_filename", f"#{i}") if isinstance(scene, dict) else f"#{i}"
        if not isinstance(objs, list):
            raise DataFormatError(f"{source}: scene {i} ({name}) has no 'objects' list")
        if len(objs) > max_objects:
            raise DataFormatError(f"{source}: scene {i} ({name}) has {len(objs)} objects, more than {max_objects}")
        for j, obj in enumerate(objs):
            missing = [f for f in _FIELDS if not isinstance(obj, dict) or f not in obj]
            if missing:
                raise DataFormatError(f"{source}: scene {i} ({name}), object {j} lacks field(s) {missing}")
            coords = obj["3d_coords"]
            if (not isinstance(coords, (list, tuple)) or len(coords) != 3
                    or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in coords)):
                raise DataFormatError(f"{source}: scene {i} ({name}), object {j}: '3d_coords' must be 3 numbers, "
                                      f"got {coords!r}")
            row = [c / COORD_SCALE for c in coords]
            for key, classes in DSPN_CLASSES.items():
                if obj[key] not in classes:
                    raise DataFormatError(f"{source}: scene {i} ({name}), object {j}: unknown {key} {obj[key]!r} "
                                          f"(expected one of {list(classes)})")
                row += [float(obj[key] == c) for c in classes]
            targets[i, j] = row
            presence[i, j] = True
    return targets, presence


def _offsets(layout: dict[str, int]) -> dict[str, slice]:
    out, start = {}, 0
    for name, width in layout.items():
        out[name] = slice(start, start + width)
        start += width
    return out


SET_PREDICTION_SLICES = _offsets(SET_PREDICTION_LAYOUT)  # part -> slice of the 19 numbers


def set_prediction_targets(targets, presence) -> torch.Tensor:
    """Locatello et al.'s (2020) set-prediction targets from DSPN targets (App. F.2).

    Per object: the 3-d coordinates mapped from [-3, 3] to [0, 1] by (x + 3) / 6, one-hot size, material,
    shape and colour, then 1 for a real object (``SET_PREDICTION_LAYOUT``, 19 numbers); absent objects are
    all-zero rows, as Locatello et al. pad them.

    Args:
        targets: float (N, K, 18) DSPN targets (``scenes_to_targets``). presence: bool (N, K).

    Returns:
        float32 (N, K, 19) tensor.
    """
    targets = torch.as_tensor(targets, dtype=torch.float32)
    presence = torch.as_tensor(presence, dtype=torch.bool)
    if targets.dim() != 3 or targets.shape[2] != TARGET_DIM or tuple(presence.shape) != tuple(targets.shape[:2]):
        raise ValueError(f"need DSPN targets (N, K, {TARGET_DIM}) and presence (N, K), got {tuple(targets.shape)} "
                         f"and {tuple(presence.shape)}")
    dspn = _offsets({"coords": 3, **{k: len(v) for k, v in DSPN_CLASSES.items()}})
    out = torch.zeros(*targets.shape[:2], SET_TARGET_DIM)
    for name, where in SET_PREDICTION_SLICES.items():
        if name == "coords":
            out[..., where] = (targets[..., dspn[name]] * COORD_SCALE + 3) / 6
        elif name == "real":
            out[..., where] = 1.0
        else:
            out[..., where] = targets[..., dspn[name]]
    return out * presence[..., None]


def describe_set_predictions(pred) -> list[dict]:
    """The objects a set-prediction output describes, in CLEVR's terms (the inverse of
    :func:`set_prediction_targets` for one image).

    Args:
        pred: float (K, 19) predictions (``SET_PREDICTION_LAYOUT``).

    Returns:
        K dicts (one per slot, in slot order): "real" (the "real object" confidence in [0, 1]; above 0.5 the slot
        predicts an object), "3d_coords" (x, y, z in CLEVR units, [-3, 3] mapped back from [0, 1] by 6 c - 3),
        and the argmax class of "size", "material", "shape" and "color" (DSPN's class names).
    """
    pred = torch.as_tensor(pred, dtype=torch.float32)
    if pred.dim() != 2 or pred.shape[1] != SET_TARGET_DIM:
        raise ValueError(f"need predictions (K, {SET_TARGET_DIM}), got {tuple(pred.shape)}")
    objects = []
    for row in pred:
        obj = {"real": float(row[SET_PREDICTION_SLICES["real"]][0]),
               "3d_coords": [float(c) * 6 - 3 for c in row[SET_PREDICTION_SLICES["coords"]]]}
        for name in ("size", "material", "shape", "color"):
            obj[name] = DSPN_CLASSES[name][int(row[SET_PREDICTION_SLICES[name]].argmax())]
        objects.append(obj)
    return objects


# ---- generator ----------------------------------------------------------------------------------------------
def _relationships(coords: np.ndarray, dirs: dict, eps: float = 0.2) -> dict[str, list[list[int]]]:
    """CLEVR's spatial relationships: rel[name][i] lists the j whose offset from i along the direction > eps."""
    out = {}
    for name in ("right", "behind", "front", "left"):
        dot = (coords[None, :, :] - coords[:, None, :]) @ np.asarray(dirs[name])  # (n, n): j relative to i
        np.fill_diagonal(dot, -np.inf)
        out[name] = [np.flatnonzero(row > eps).tolist() for row in dot]
    return out


def _clevr_block(seed: int, stream: int, block: int, count: int, split: str, image_size: int):
    """Render one block (the first ``count`` of its BLOCK scenes): images, masks, scene dicts.

    CLEVR's visibility rule (every object at least 200 of 480x320 pixels, scaled to the output size) is
    checked on the rendered masks themselves; the objects of failing scenes are drawn and rendered again,
    keeping each scene's object count and camera / light jitter (as CLEVR's ``add_random_objects`` does;
    redrawing the count too would bias the counts towards small scenes)."""
    rng = np.random.default_rng([seed, stream, block])
    cam = Camera()
    k = MAX_OBJECTS
    need_px = max(1, int(round(CLEVR_MIN_PIXELS * image_size * image_size / (NATIVE_SIZE[0] * NATIVE_SIZE[1]))))
    rgb_table = np.asarray([COLORS[c] for c in COLOR_NAMES], np.float32) / 255.0  # linear albedo

    def draw(n, num_objects=None):
        geom = sample_geometry(rng, n, cam, tuple(SIZES.values()), 3, k, check=False, num_objects=num_objects)
        geom["color"] = rng.integers(0, len(COLORS), size=(n, k))
        geom["material"] = rng.integers(0, len(MATERIALS), size=(n, k))
        return geom

    geom = draw(BLOCK)
    images = np.zeros((BLOCK, 3, image_size, image_size), np.uint8)
    masks = np.zeros((BLOCK, image_size, image_size), np.uint8)
    todo = np.arange(BLOCK)
    for _ in range(200):
        part = {key: v[todo] for key, v in geom.items()}
        batch = geometry_batch(part, albedo=rgb_table[part["color"]], metal=part["material"] == 1)
        img, msk = render(batch, cam, image_size, image_size, chunk=2)
        counts = np.stack([np.bincount(m.ravel(), minlength=k + 1)[1:] for m in msk.numpy()])  # (n, K)
        good = ((counts >= need_px) | (part["shape"] < 0)).all(1)
        images[todo[good]], masks[todo[good]] = img.numpy()[good], msk.numpy()[good]
        todo = todo[~good]
        if todo.size == 0:
            break
        fresh = draw(todo.size, geom["num_objects"][todo])
        for key in geom:
            if key not in ("num_objects", "camera", "lights"):
                geom[key][todo] = fresh[key]
    else:
        raise RuntimeError("CLEVR generator: scenes kept failing the visibility rule")
    geom = {key: v[:count] for key, v in geom.items()}
    images, masks = images[:count], masks[:count]
    centres = torch.from_numpy(np.concatenate([np.nan_to_num(geom["xy"]), geom["r"][..., None]], -1))  # float64
    pix = project(centres, torch.from_numpy(geom["camera"]), cam, NATIVE_SIZE[1], NATIVE_SIZE[0]).numpy()
    dirs = directions(cam)
    scenes = []
    for b in range(count):
        idx = block * BLOCK + b
        objs = []
        for j in range(int(geom["num_objects"][b])):
            xyz = [float(geom["xy"][b, j, 0]), float(geom["xy"][b, j, 1]), float(geom["r"][b, j])]
            objs.append({
                "shape": SHAPES[geom["shape"][b, j]], "size": _SIZE_NAMES[geom["size"][b, j]],
                "material": MATERIALS[geom["material"][b, j]], "3d_coords": xyz,
                "rotation": float(geom["rotation"][b, j]),
                "pixel_coords": [int(round(pix[b, j, 0])), int(round(pix[b, j, 1])), float(pix[b, j, 2])],
                "color": COLOR_NAMES[geom["color"][b, j]],
            })
        coords = np.array([o["3d_coords"] for o in objs])
        scenes.append({"split": split, "image_index": idx, "image_filename": f"CLEVR_{split}_{idx:06d}.png",
                       "objects": objs, "relationships": _relationships(coords, dirs), "directions": dirs})
    return images, masks, scenes


def encode_scenes(scenes: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Scenes -> (utf-8 bytes uint8 (L,), offsets int64 (N + 1,)), a cache-friendly form."""
    blobs = [json.dumps(s, separators=(",", ":")).encode() for s in scenes]
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), np.uint8).copy(), offsets


def decode_scenes(data: np.ndarray, offsets: np.ndarray) -> list[dict]:
    """Inverse of the cache encoding: uint8 (L,) JSON bytes and int64 (N + 1,) offsets -> N scene dicts."""
    raw = data.tobytes()
    return [json.loads(raw[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]


def generate_clevr(num_images: int, seed: int = 0, split: str = "train", image_size: int = IMAGE_SIZE,
                   workers: int = 1, progress: bool = True) -> dict[str, np.ndarray]:
    """Generate CLEVR-like scenes, deterministically in (seed, split); the first m images of a set of n > m
    equal the set of m.

    Returns a dict of numpy arrays (S = image_size, K = 10):
        images uint8 (N, 3, S, S); masks uint8 (N, S, S) (0 = background, k = objects[k - 1]); targets
        float32 (N, K, 18) and presence bool (N, K) (DSPN); scenes_json uint8 (L,) and scenes_offsets int64
        (N + 1,): the scenes in CLEVR's JSON schema (``decode_scenes`` turns them into dicts).
    """
    check_generation(num_images, seed, image_size, split, SPLITS)
    stream, s = SPLITS[split][0], image_size
    parts = run_in_blocks(_clevr_block, num_images, BLOCK, lambda blk, n: (seed, stream, blk, n, split, s),
                          workers, progress, f"CLEVR {split}")
    images, masks, scenes = concat_blocks(parts, (0, 3, s, s), (0, s, s))
    targets, presence = scenes_to_targets(scenes, source="generated scenes")
    data, offsets = encode_scenes(scenes)
    return {"images": images, "masks": masks, "targets": targets, "presence": presence,
            "scenes_json": data, "scenes_offsets": offsets}


# ---- real data --------------------------------------------------------------------------------------------
def _clevr_root(data_dir: Path) -> Path:
    data_dir = require_dir(data_dir, "CLEVR data folder")
    return data_dir / "CLEVR_v1.0" if (data_dir / "CLEVR_v1.0").is_dir() else data_dir


def _read_scenes_file(path: Path) -> list[dict]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path}: not a readable JSON file ({e})") from e
    scenes = doc.get("scenes") if isinstance(doc, dict) else None
    if not isinstance(scenes, list):
        raise DataFormatError(f"{path}: expected a JSON object with a 'scenes' list")
    for i, sc in enumerate(scenes):
        if not isinstance(sc, dict) or "image_filename" not in sc or "objects" not in sc:
            raise DataFormatError(f"{path}: scene {i} lacks 'image_filename' or 'objects'")
    return scenes


def read_clevr(data_dir: str | Path, split: str = "train", max_images: int | None = None,
               image_size: int | None = IMAGE_SIZE, native_size: tuple[int, int] | None = NATIVE_SIZE,
               progress: bool = True) -> tuple[SceneData, list[dict]]:
    """Read a split of the real CLEVR v1.0 (``data_dir`` is ``CLEVR_v1.0`` or its parent folder).

    Args:
        split: "train" or "val" (the splits with scenes files).
        max_images: read only the first this-many scenes of the scenes file.
        image_size: resize to image_size x image_size with PIL bilinear (None keeps the native size).
        native_size: (W, H) every image must have (CLEVR: 480x320); None accepts any common size.

    Returns:
        (SceneData, scenes): images uint8 (N, 3, S, S); masks uint8 (N, S, S) all zero (CLEVR has no masks);
        targets float32 (N, 10, 18) and presence (N, 10) from ``scenes_to_targets``; ids = image file
        names; and the scene dicts as read.

    Raises:
        MissingDataError naming the missing folder or file; DataFormatError naming the file for a bad
        scenes file or an image of the wrong size.
    """
    from PIL import Image

    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    root = _clevr_root(Path(data_dir).expanduser())
    scenes_path = require_file(root / "scenes" / f"CLEVR_{split}_scenes.json", f"CLEVR {split} scenes")
    image_dir = require_dir(root / "images" / split, f"CLEVR {split} images")
    scenes = _read_scenes_file(scenes_path)
    if max_images is not None:
        scenes = scenes[:max_images]
    if not scenes:
        raise DataFormatError(f"{scenes_path}: no scenes")
    targets, presence = scenes_to_targets(scenes, source=str(scenes_path))
    from tqdm import tqdm

    images = []
    first_size = None
    for sc in tqdm(scenes, desc=f"reading CLEVR {split}", unit="img", disable=not progress):
        path = require_file(image_dir / sc["image_filename"], f"CLEVR {split} image")
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except OSError as e:
            raise DataFormatError(f"{path}: not a readable image ({e})") from e
        if native_size is not None and im.size != tuple(native_size):
            raise DataFormatError(f"{path}: image is {im.size[0]}x{im.size[1]}, expected "
                                  f"{native_size[0]}x{native_size[1]}")
        first_size = first_size or im.size
        if im.size != first_size:
            raise DataFormatError(f"{path}: image is {im.size[0]}x{im.size[1]}, but earlier images are "
                                  f"{first_size[0]}x{first_size[1]}")
        if image_size is not None:
            im = im.resize((image_size, image_size), resample=Image.BILINEAR)
        images.append(np.asarray(im).transpose(2, 0, 1))
    images = np.stack(images)
    masks = np.zeros((len(images),) + images.shape[2:], np.uint8)
    data = SceneData(images, masks, targets=targets, presence=presence, ids=[sc["image_filename"] for sc in scenes],
                     meta={"source": "clevr-real", "split": split, "root": str(root), "has_masks": False})
    return data, scenes


def write_clevr_tree(root: str | Path, images: np.ndarray | torch.Tensor, scenes: list[dict], split: str) -> Path:
    """Write images and scenes in CLEVR v1.0's layout under ``root`` (``images/<split>/<image_filename>``
    and ``scenes/CLEVR_<split>_scenes.json``), e.g. to hand generated data to tools that read CLEVR.

    images: uint8 (N, 3, H, W); scenes: N scene dicts (their ``image_filename`` names the PNGs).
    Returns the scenes file path."""
    from PIL import Image

    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8 or len(images) != len(scenes):
        raise ValueError(f"write_clevr_tree: need uint8 (N, 3, H, W) images, one per scene; got {images.dtype} "
                         f"{images.shape} for {len(scenes)} scenes")
    root = Path(root)
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    (root / "scenes").mkdir(parents=True, exist_ok=True)
    for im, sc in zip(images, scenes):
        Image.fromarray(im.transpose(1, 2, 0)).save(img_dir / sc["image_filename"])
    path = root / "scenes" / f"CLEVR_{split}_scenes.json"
    doc = {"info": {"split": split, "version": "1.0", "generator": f"sa-mesh CLEVR generator {GENERATOR_VERSION}"},
           "scenes": scenes}
    path.write_text(json.dumps(doc))
    return path


# ---- entry point --------------------------------------------------------------------------------------------
def load_clevr(split: str = "train", num_images: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
               cache_dir: str | Path | None = None, workers: int = 1, progress: bool = True,
               return_scenes: bool = False):
    """CLEVR split as SceneData: images uint8 (N, 3, 128, 128), masks uint8 (N, 128, 128), targets float32
    (N, 10, 18), presence bool (N, 10).

    Args:
        split: "train", "val" or "test" (generated); "train" or "val" for real data.
        num_images: number of samples (generated default: ``SPLITS``; real default: the whole split).
        seed: generator seed (ignored for real data).
        data_dir: folder holding ``CLEVR_v1.0`` (or that folder itself); None = generated data.
        cache_dir: cache folder (default: $SA_MESH_CACHE or ~/.cache/sa-mesh).
        workers: processes used to generate (the result does not depend on it).
        progress: show progress bars.
        return_scenes: also return the list of scene dicts (CLEVR's JSON schema).

    Both generated and real data are cached.
    """
    if data_dir is None:
        arrays, meta = cached_scenes("clevr", split, num_images, seed, SPLITS, IMAGE_SIZE, GENERATOR_VERSION,
                                     generate_clevr, workers, progress, cache_dir)
        meta["has_masks"] = True
    else:
        if num_images is not None and num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        root = _clevr_root(Path(data_dir).expanduser())
        scenes_path = require_file(root / "scenes" / f"CLEVR_{split}_scenes.json", f"CLEVR {split} scenes")
        st = scenes_path.stat()
        params = {"root": str(root.resolve()), "split": split, "num_images": num_images,
                  "scenes_bytes": st.st_size, "scenes_mtime_ns": st.st_mtime_ns, "image_size": IMAGE_SIZE}

        def build() -> dict[str, np.ndarray]:
            data, scenes = read_clevr(root, split, max_images=num_images, progress=progress)
            out = data.to_arrays()
            out["scenes_json"], out["scenes_offsets"] = encode_scenes(scenes)
            return out

        arrays = cached(f"clevr-real-{split}", params, GENERATOR_VERSION, build, cache_dir)
        meta = {"source": "clevr-real", "split": split, "root": str(root), "has_masks": False}
    scenes = decode_scenes(arrays["scenes_json"], arrays["scenes_offsets"])
    ids = arrays["ids"].tolist() if "ids" in arrays else [sc["image_filename"] for sc in scenes]
    data = SceneData(arrays["images"], arrays["masks"], targets=arrays["targets"], presence=arrays["presence"],
                     ids=ids, meta=meta)
    return (data, scenes) if return_scenes else data


# ---- the sets of the experiment -------------------------------------------------------------------------------
GENERATOR_SEED = 0  # the generated scenes of every run


class ClevrSet:
    """A CLEVR split ready for training, in memory.

    Holds images uint8 (N, S, S, 3) (channels last) and targets float32 (N, 10, 19). ``ds[idx]`` with idx a
    (b,) int64 tensor returns {"image": float32 (b, 3, S, S) in [-1, 1] in channels-last memory, "target":
    (b, 10, 19)}: one gather and one conversion, no other copy.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3 or len(targets) != len(images):
            raise ValueError(f"need uint8 images (N, 3, S, S) and targets (N, K, D), got {tuple(images.shape)} "
                             f"{images.dtype} and {tuple(targets.shape)}")
        self.images = images.permute(0, 2, 3, 1).contiguous()  # (N, S, S, 3)
        self.targets = targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: torch.Tensor) -> dict:
        image = self.images[idx].permute(0, 3, 1, 2).float()  # (b, 3, S, S), channels-last strides kept
        return {"image": image.mul_(2 / 255).sub_(1), "target": self.targets[idx]}


_LOADED: dict[str, tuple[tuple, ClevrSet]] = {}  # split -> (what was loaded, the set)


def load_split(cfg, split: str, progress: bool = False) -> ClevrSet:
    """The training ("train", ``cfg.n_train`` images) or evaluation ("val", ``cfg.n_test``) set of the options
    ``cfg`` (``tasks.clevr.experiment.ClevrConfig``: data_dir, n_train, n_test, image_size).

    Generated scenes are built once and cached on disk (``tasks.clevr.data.load_clevr``); real ones are
    read, checked and cached on first use. The last set of each split stays in memory for this process.

    Raises:
        MissingDataError / DataFormatError naming the file: a missing folder, scenes file or image, an
        unknown attribute value, an image of the wrong size, or fewer scenes than asked for.
    """
    n = cfg.n_train if split == "train" else cfg.n_test
    key = (cfg.data_dir, split, n, cfg.image_size)
    if _LOADED.get(split, (None,))[0] != key:
        workers = min(cores(), max(1, n // 256))
        data = load_clevr(split, num_images=n, seed=GENERATOR_SEED, data_dir=cfg.data_dir, workers=workers,
                          progress=progress)
        if len(data) < n:
            option = "--n-train" if split == "train" else "--n-test"
            raise DataFormatError(f"CLEVR {split} scenes file under {data.meta.get('root')} has {len(data)} scenes, "
                                  f"fewer than the {n} asked for ({option})")
        dataset = ClevrSet(resize_images(data.images, cfg.image_size),
                           set_prediction_targets(data.targets, data.presence))
        _LOADED[split] = (key, dataset)
    return _LOADED[split][1]
