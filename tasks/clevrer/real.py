"""Reader for the real CLEVRER videos as the two-frame CLEVRER-S / CLEVRER-L sets (Sec. 5.4, App. F.4).

From each video we take the first frame and either the 16th (CLEVRER-S) or the 128th, last (CLEVRER-L),
i.e. 0-based frame indices (0, 15) or (0, 127), decoded with PyAV. Per-frame object masks come from
CLEVRER's mask proposal files (``derender_proposals/proposal_XXXXX.json``): for each frame a list of objects
with a COCO-style RLE mask ``{"size": [h, w], "counts": "..."}``, a detection ``score`` and the predicted
``color``, ``material`` and ``shape``. The RLE decoder (and an encoder, for fixtures) is written here, so
pycocotools is not needed.

Object identity across the two frames (needed by the temporal-consistency metric of App. F.4): CLEVRER's
objects in one video are told apart by (color, material, shape). When the video's annotation file
(``annotation_<split>/.../annotation_XXXXX.json``, field ``object_property``) is present, an object with
attributes matching annotated object ``object_id`` gets mask index ``object_id + 1``; otherwise indices are
given in order of first appearance (frame a in proposal order, then new objects of frame b). A detection
whose attributes match no annotated object, or a second detection of the same attributes in one frame,
gets a fresh index of its own. Detections below ``min_score`` are dropped; overlapping masks are resolved in
favour of the higher score.

Expected layout under ``data_dir`` (that of the CLEVRER downloads)::

    video_<split>/video_XXXXX-YYYYY/video_NNNNN.mp4   (any sub-folders; split: train, validation, test)
    derender_proposals/proposal_NNNNN.json
    annotation_<split>/annotation_XXXXX-YYYYY/annotation_NNNNN.json   (optional)

Splits: by default every video found under ``video_<split>/``; ``video_ids`` picks exactly the listed videos
(each must exist). ``official_video_ids(split)`` gives the official MESH configuration's splits: train
videos 0-9,999 without 7,648 and 9,777 (shorter than 128 frames), validation 10,000-10,319, test
15,000-19,999.

Frames are resized to ``size`` (bilinear with antialiasing for images, nearest for masks), optionally after a
centre square crop; the default, 64x64 without crop, squeezes the 480x320 frames (aspect ratio not kept), so
that objects entering at the left/right edges stay in view. The result is cached, keyed by the folder's path,
the chosen videos' count and total size, the proposal folder's mtime and the annotation count (an in-place
edit of a proposal file is not noticed: pass use_cache=False or clear the cache).

Known limits: proposals are detector output, so masks (and attribute-based identities) carry its errors;
the whole prefix of each video up to the last wanted frame is decoded (no seeking).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..scenes.cache import cached
from ..scenes.records import DataFormatError, MissingDataError, SceneData, require_dir

__all__ = ["VARIANT_FRAMES", "SPLIT_ALIASES", "READER_VERSION", "OFFICIAL_SPLITS", "official_video_ids",
           "rle_decode", "rle_encode", "read_video_frames", "load_clevrer_real"]

# variant -> 0-based indices of the two frames (the paper's frames 1 and 16, or 1 and 128).
VARIANT_FRAMES = {"S": (0, 15), "L": (0, 127)}
SPLIT_ALIASES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
READER_VERSION = "1"
# split -> (first video index, end (exclusive), indices left out): the official MESH configuration's splits
# (config/data/clevrer_{s,l}.yaml); 7648 and 9777 are shorter than 128 frames.
OFFICIAL_SPLITS = {"train": (0, 10_000, (7648, 9777)), "validation": (10_000, 10_320, ()),
                   "test": (15_000, 20_000, ())}
_ATTRS = ("color", "material", "shape")


def official_video_ids(split: str) -> list[int]:
    """Video indices of an official split ("train", "validation" / "val" or "test"), in order."""
    if split not in SPLIT_ALIASES:
        raise ValueError(f"split must be one of {sorted(SPLIT_ALIASES)}, got {split!r}")
    start, end, left_out = OFFICIAL_SPLITS[SPLIT_ALIASES[split]]
    return [i for i in range(start, end) if i not in left_out]


# ---- COCO run-length encoding ------------------------------------------------------------------------------
def _counts_from_string(s: str) -> list[int]:
    """COCO's compressed counts: 5-bit groups + 48, 0x20 = continuation, 0x10 = sign of the last group,
    each count from the third on stored as a difference to the count two places before."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("RLE string ends inside a number")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid RLE character {s[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """Decode a COCO RLE mask ``{"size": [h, w], "counts": str | list[int]}`` to a bool array (h, w).

    Runs alternate 0s and 1s, starting with 0s, over the pixels in column-major (Fortran) order.
    Raises ValueError if the runs do not cover exactly h * w pixels or the record is malformed.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE mask must be a dict with 'size' and 'counts'")
    try:
        h, w = (int(v) for v in rle["size"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"RLE 'size' must be [h, w], got {rle['size']!r}") from e
    raw = rle["counts"]
    if isinstance(raw, bytes):
        raw = raw.decode("ascii")
    counts = _counts_from_string(raw) if isinstance(raw, str) else [int(c) for c in raw]
    runs = np.asarray(counts, dtype=np.int64)
    if (runs < 0).any() or runs.sum() != h * w:
        raise ValueError(f"RLE runs cover {int(runs.sum())} pixels (negative: {bool((runs < 0).any())}), "
                         f"expected {h}x{w} = {h * w}")
    values = np.arange(len(runs)) % 2 == 1  # (runs,): 0s first
    flat = np.repeat(values, runs)  # (h*w,) in column-major order
    return flat.reshape(w, h).T


def rle_encode(mask: np.ndarray) -> dict:
    """Encode a 2-D binary mask (h, w) as COCO compressed RLE ``{"size": [h, w], "counts": str}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (h, w), got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.T.reshape(-1).astype(bool)  # column-major
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs  # the first run counts 0s
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return {"size": [h, w], "counts": "".join(out)}


# ---- video ----------------------------------------------------------------------------------------------------
def read_video_frames(path: str | Path, indices: tuple[int, ...]) -> np.ndarray:
    """Decode the frames with the given 0-based indices of a video: uint8 (len(indices), H, W, 3) RGB.

    Raises DataFormatError naming the file if it cannot be decoded or has too few frames.
    """
    import av

    path = Path(path)
    want = sorted(set(int(i) for i in indices))
    if not want or want[0] < 0:
        raise ValueError(f"frame indices must be >= 0, got {indices}")
    got: dict[int, np.ndarray] = {}
    n = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataFormatError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                n = i + 1
                if i in want:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= want[-1]:
                    break
    except DataFormatError:
        raise
    except Exception as e:  # PyAV raises its own error classes for unreadable files
        raise DataFormatError(f"{path}: cannot decode video ({e})") from e
    if len(got) < len(want):
        raise DataFormatError(f"{path}: has {n} frames, frame index {want[-1]} is needed")
    return np.stack([got[int(i)] for i in indices])


# ---- proposals / annotations ----------------------------------------------------------------------------------
def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read JSON ({e})") from e


def _frame_objects(proposal: dict, path: Path, frame: int) -> list[dict]:
    frames = proposal.get("frames")
    if not isinstance(frames, list):
        raise DataFormatError(f"{path}: no 'frames' list")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "frame_index" not in fr or "objects" not in fr:
            raise DataFormatError(f"{path}: frames[{i}] lacks 'frame_index' or 'objects'")
        if int(fr["frame_index"]) == frame:
            return fr["objects"]
    raise DataFormatError(f"{path}: no entry with frame_index {frame}")


def _annotated_ids(path: Path | None) -> tuple[dict[tuple, int], int]:
    """(color, material, shape) -> object_id from an annotation file (attribute sets seen twice are left
    out), and the largest object_id (-1 without annotation)."""
    if path is None:
        return {}, -1
    ann = _load_json(path)
    props = ann.get("object_property")
    if not isinstance(props, list):
        raise DataFormatError(f"{path}: no 'object_property' list")
    ids: dict[tuple, int] = {}
    dup = set()
    for i, p in enumerate(props):
        if not isinstance(p, dict) or "object_id" not in p or any(a not in p for a in _ATTRS):
            raise DataFormatError(f"{path}: object_property[{i}] lacks one of object_id, {', '.join(_ATTRS)}")
        key = tuple(str(p[a]) for a in _ATTRS)
        if key in ids:
            dup.add(key)
        ids[key] = int(p["object_id"])
    max_id = max((int(p["object_id"]) for p in props), default=-1)
    for key in dup:
        del ids[key]
    return ids, max_id


def _masks_for_pair(proposal_path: Path, annotation_path: Path | None, frames: tuple[int, int],
                    shape_hw: tuple[int, int], min_score: float, video: Path) -> np.ndarray:
    """Index masks uint8 (2, H, W) with identities shared by the two frames of ``video``."""
    proposal = _load_json(proposal_path)
    index = int(video.stem[len("video_"):])
    if not isinstance(proposal, dict):
        raise DataFormatError(f"{proposal_path}: not a JSON object")
    if "video_index" in proposal and proposal["video_index"] != index:
        raise DataFormatError(f"{proposal_path}: proposals of video {proposal['video_index']!r}, not of {video}")
    annotated, max_id = _annotated_ids(annotation_path)
    next_free = max_id + 2  # indices 1..max_id+1 belong to the annotated objects
    first_seen: dict[tuple, int] = {}
    out = np.zeros((2, *shape_hw), dtype=np.uint8)
    for t, frame in enumerate(frames):
        objs = _frame_objects(proposal, proposal_path, frame)
        dets = []
        for j, o in enumerate(objs):
            if not isinstance(o, dict) or "mask" not in o or any(a not in o for a in _ATTRS):
                raise DataFormatError(f"{proposal_path}: frame {frame} object {j} lacks one of mask, "
                                      f"{', '.join(_ATTRS)}")
            score = float(o.get("score", 1.0))
            if score < min_score:
                continue
            try:
                m = rle_decode(o["mask"])
            except ValueError as e:
                raise DataFormatError(f"{proposal_path}: frame {frame} object {j}: {e}") from e
            if m.shape != tuple(shape_hw):
                raise DataFormatError(f"{proposal_path}: frame {frame} object {j} mask is {m.shape[0]}x"
                                      f"{m.shape[1]}, the frame of {video} is {shape_hw[0]}x{shape_hw[1]}")
            dets.append((score, j, tuple(str(o[a]) for a in _ATTRS), m))
        # Identity: the highest-scoring detection of an attribute set takes that set's index.
        taken = set()
        labelled = []
        for score, j, key, m in sorted(dets, key=lambda d: (-d[0], d[1])):
            if key in taken:
                idx = next_free
                next_free += 1
            else:
                taken.add(key)
                if key in annotated:
                    idx = annotated[key] + 1
                elif key in first_seen:
                    idx = first_seen[key]
                else:
                    idx = first_seen[key] = next_free
                    next_free += 1
            labelled.append((score, j, idx, m))
        if next_free > 256:
            raise DataFormatError(f"{proposal_path}: more than 255 objects")
        for score, j, idx, m in sorted(labelled, key=lambda d: (d[0], -d[1])):  # highest score painted last
            out[t][m] = idx
    return out


def _resize(frames: np.ndarray, masks: np.ndarray, size: tuple[int, int] | None, crop: bool):
    """frames uint8 (T, H, W, 3), masks uint8 (T, H, W) -> (T, 3, h, w), (T, h, w)."""
    from PIL import Image

    if crop:
        h, w = masks.shape[1:]
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        frames, masks = frames[:, y0:y0 + s, x0:x0 + s], masks[:, y0:y0 + s, x0:x0 + s]
    if size is not None:
        hh, ww = size
        frames = np.stack([np.asarray(Image.fromarray(f).resize((ww, hh), Image.BILINEAR)) for f in frames])
        masks = np.stack([np.asarray(Image.fromarray(m).resize((ww, hh), Image.NEAREST)) for m in masks])
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2)), np.ascontiguousarray(masks)


def _index_files(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    out = {}
    for p in folder.rglob(f"{prefix}*{suffix}"):
        stem = p.name[len(prefix):-len(suffix)]
        if stem.isdigit():
            out[int(stem)] = p
    return out


def load_clevrer_real(data_dir: str | Path, variant: str = "S", split: str = "train",
                      size: tuple[int, int] | None = (64, 64), crop: bool = False, max_videos: int | None = None,
                      min_score: float = 0.5, cache_dir: str | Path | None = None, use_cache: bool = True,
                      progress: bool = True, video_ids: Sequence[int] | None = None) -> SceneData:
    """CLEVRER-S or CLEVRER-L from the real CLEVRER files (layout in the module docstring).

    Args:
        data_dir: CLEVRER root folder.
        variant: "S" (frames 1 and 16) or "L" (frames 1 and 128).
        split: "train", "validation" (or "val") or "test".
        size: output (height, width); None keeps the native 320x480.
        crop: centre-crop each frame to a square before resizing.
        max_videos: read only the first this-many videos of the split (by video index, or of ``video_ids``).
        min_score: drop mask proposals with a lower detection score.
        cache_dir, use_cache: the result is cached unless ``use_cache`` is False.
        progress: show a progress bar.
        video_ids: read exactly these videos (e.g. ``official_video_ids(split)``); None: every video of the
            split's folder.

    Returns:
        SceneData with images uint8 (N, 2, 3, h, w), masks uint8 (N, 2, h, w) (0 = background, an object has
        the same index in both frames), ids ``video_NNNNN``, and meta holding the frame indices.

    Raises:
        MissingDataError naming the missing folder or file; DataFormatError naming the file for bad data (a
        video with fewer frames than the variant needs, proposals of another video or frame size).
    """
    if variant not in VARIANT_FRAMES:
        raise ValueError(f"variant must be one of {sorted(VARIANT_FRAMES)}, got {variant!r}")
    if split not in SPLIT_ALIASES:
        raise ValueError(f"split must be one of {sorted(SPLIT_ALIASES)}, got {split!r}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (height, width) with positive entries or None, got {size!r}")
    if max_videos is not None and max_videos < 1:
        raise ValueError(f"max_videos must be >= 1, got {max_videos}")
    split = SPLIT_ALIASES[split]
    frames = VARIANT_FRAMES[variant]
    root = require_dir(data_dir, "CLEVRER data folder")
    video_dir = require_dir(root / f"video_{split}", f"CLEVRER {split} videos")
    prop_dir = require_dir(root / "derender_proposals", "CLEVRER mask proposals")
    ann_dir = root / f"annotation_{split}"
    videos = _index_files(video_dir, "video_", ".mp4")
    if not videos:
        raise MissingDataError(f"CLEVRER {split} videos: no video_NNNNN.mp4 files under {video_dir}")
    if video_ids is None:
        chosen = sorted(videos)
    else:
        chosen = [int(i) for i in video_ids]
        absent = [i for i in chosen[:max_videos] if i not in videos]
        if absent:
            more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
            raise MissingDataError(f"CLEVRER {split} videos: video_{absent[0]:05d}.mp4{more} not found under "
                                   f"{video_dir}")
    chosen = chosen[:max_videos] if max_videos else chosen
    annotations = _index_files(ann_dir, "annotation_", ".json") if ann_dir.is_dir() else {}

    def build() -> dict[str, np.ndarray]:
        images, masks = [], []
        for idx in tqdm(chosen, desc=f"CLEVRER-{variant} {split}", unit="video", disable=not progress):
            prop = prop_dir / f"proposal_{idx:05d}.json"
            if not prop.is_file():
                raise MissingDataError(f"CLEVRER mask proposals: file {prop} does not exist (for {videos[idx]})")
            rgb = read_video_frames(videos[idx], frames)  # (2, H, W, 3)
            m = _masks_for_pair(prop, annotations.get(idx), frames, rgb.shape[1:3], min_score, videos[idx])
            img, msk = _resize(rgb, m, size, crop)
            images.append(img)
            masks.append(msk)
        return {"images": np.stack(images), "masks": np.stack(masks),
                "ids": np.asarray([f"video_{i:05d}" for i in chosen], dtype=str)}

    meta = {"source": "clevrer-real", "variant": variant, "split": split, "frames": frames, "data_dir": str(root)}
    if not use_cache:
        return SceneData.from_arrays(build(), meta=meta)
    files = [videos[i] for i in chosen]
    fingerprint = {"root": str(root.resolve()), "videos": len(files),
                   "bytes": int(sum(p.stat().st_size for p in files)),
                   "proposals_mtime_ns": prop_dir.stat().st_mtime_ns, "annotations": len(annotations)}
    params = {"data": fingerprint, "variant": variant, "split": split, "size": list(size) if size else None,
              "crop": crop, "max_videos": max_videos, "min_score": min_score,
              "videos_sha1": hashlib.sha1(",".join(map(str, chosen)).encode()).hexdigest()}
    arrays = cached(f"clevrer-real-{variant}-{split}", params, READER_VERSION, build, cache_dir)
    return SceneData.from_arrays(arrays, meta=meta)
