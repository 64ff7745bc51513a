"""Generated two-frame CLEVRER-S / CLEVRER-L data (Sec. 5.4, App. F.4): a simple 2-d simulation rendered twice.

CLEVRER (Yi et al., 2019) films objects sliding and colliding on CLEVR's floor while new objects enter the
view. The paper keeps two frames per video: frames 1 and 16 (CLEVRER-S) or 1 and 128 (CLEVRER-L), and
reports that the total number of objects grows by two or more in 9.5% (S) and 68.8% (L) of the pairs.

The generator simulates a 128-frame video at 25 frames per second:
- 2-4 objects start inside the view (CLEVR's placement and visibility rules); each moves with probability
  ``P_MOVE`` (speed uniform in ``INITIAL_SPEED``, random direction) and may drift out of the view.
- A Poisson(``ENTER_RATE``) number of objects (capped so that a video holds at most ``MAX_OBJECTS``)
  enter from outside the frame. Each has an entry frame drawn from an exponential distribution of scale
  ``ENTER_SCALE`` frames truncated to (0.5, 127], a target point in the central area, and a speed in
  ``ENTER_SPEED``; it is started outside the view on the line through its target so that, decelerating by
  friction, its centre crosses the frame's edge at the entry frame. Objects may pass through and leave.
- Objects are discs on the floor (radius ``OBJECT_SIZE``) whose speed decays as exp(-``FRICTION`` t), with
  elastic collisions between equal masses (4 sub-steps per frame).
All objects share one size (CLEVRER's objects do); shapes, colours and materials are CLEVR's. Both frames
are rendered by ``tasks.scenes.render`` (64x64, the squeezed 480x320 frame, 2x2 rays per pixel) with the same
camera and light jitter; an object's mask index (slot + 1) is the same in both frames, and an object out
of view is simply absent from that frame's mask.

``ENTER_RATE`` and ``ENTER_SCALE`` were tuned so that the visible-object count (objects with at least one
mask pixel at 64x64) grows by >= 2 between the two frames in about 9.5% (S) and 68.8% (L) of the pairs.
``count_growth_rate`` measures it; on 2 x 4,000 videos (seeds 2024 and 0) it gave 9.38% / 9.45% (S) and
69.1% / 70.4% (L) with generator version 1; with version 2 (initial scenes keep their object count when
redrawn) 2 x 4,000 videos (seeds 7 and 11) gave 9.32% / 9.35% (S) and 70.70% / 70.67% (L), i.e. L runs
about 2 points (4 standard errors) above the paper's figure.

Known limits: no 3-d physics (no toppling, spinning or bouncing), new objects enter only across the left,
right and bottom edges of the frame, one object size (0.45, our estimate of CLEVRER's), and the rendering is
the ray-cast approximation of ``tasks/scenes/render.py``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..clevr.data import encode_scenes
from ..scenes.render import (COLOR_NAMES, COLORS, MATERIALS, SHAPES, Camera, check_generation, concat_blocks,
                             geometry_batch, index_map, project, render, run_in_blocks, sample_geometry)
from .real import VARIANT_FRAMES

__all__ = ["GENERATOR_VERSION", "MAX_OBJECTS", "IMAGE_SIZE", "OBJECT_SIZE", "NUM_FRAMES", "FPS", "ENTER_RATE", "SPLITS",
           "ENTER_SCALE", "simulate_videos", "generate_clevrer", "count_growth_rate", "visible_counts"]

GENERATOR_VERSION = "2"
MAX_OBJECTS = 7
IMAGE_SIZE = 64
OBJECT_SIZE = 0.45
NUM_FRAMES = 128
FPS = 25.0
SUBSTEPS = 4
INITIAL_OBJECTS = (2, 4)
P_MOVE = 0.5
INITIAL_SPEED = (0.3, 1.2)  # world units per second
ENTER_SPEED = (1.5, 3.0)
FRICTION = 0.25  # 1/s: speed decays as exp(-FRICTION * t)
ENTER_RATE = 2.85  # mean number of entering objects (before the cap)
ENTER_SCALE = 74.0  # frames
TARGET_EXTENT = 2.5
BLOCK = 32
_NATIVE = (480, 320)
# Generated split -> random stream id and default number of videos (CLEVRER: 10k train, 5k val, 5k test).
SPLITS = {"train": (0, 10_000), "validation": (1, 5_000), "test": (2, 5_000)}


def _inside_frame(points: np.ndarray, camera_pos: np.ndarray, cam: Camera) -> np.ndarray:
    """Whether ground points (B, N, 2) (at height OBJECT_SIZE) project inside the frame: bool (B, N)."""
    p = np.concatenate([points, np.full(points.shape[:-1] + (1,), OBJECT_SIZE)], -1)
    pr = project(torch.from_numpy(p), torch.from_numpy(camera_pos), cam, _NATIVE[1], _NATIVE[0]).numpy()
    x, y = pr[..., 0], pr[..., 1]
    return (pr[..., 2] > 0) & (x >= 0) & (x <= _NATIVE[0]) & (y >= 0) & (y <= _NATIVE[1])


def _entry_paths(rng: np.random.Generator, n: int, k: int, camera_pos: np.ndarray, cam: Camera):
    """Targets (n, k, 2), unit directions (n, k, 2) and entry points (n, k, 2) on the frame's edge, for paths
    that enter from the left, right or front (those whose backward exit lies within 10 units)."""
    target = rng.uniform(-TARGET_EXTENT, TARGET_EXTENT, size=(n, k, 2))
    ang = rng.uniform(0, 2 * math.pi, size=(n, k))
    todo = np.ones((n, k), bool)
    for _ in range(100):
        u = np.stack([np.cos(ang), np.sin(ang)], -1)
        far = target - 10.0 * u
        bad = _inside_frame(far, camera_pos, cam) & todo
        if not bad.any():
            break
        ang = np.where(bad, rng.uniform(0, 2 * math.pi, size=(n, k)), ang)
        todo = bad
    u = np.stack([np.cos(ang), np.sin(ang)], -1)
    lo, hi = np.zeros((n, k)), np.full((n, k), 10.0)
    for _ in range(30):  # bisection for the distance back from the target to the frame's edge
        mid = (lo + hi) / 2
        inside = _inside_frame(target - mid[..., None] * u, camera_pos, cam)
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    return target, u, target - hi[..., None] * u


def simulate_videos(rng: np.random.Generator, num_videos: int, cam: Camera | None = None) -> dict[str, np.ndarray]:
    """Simulate CLEVRER-like videos (see the module docstring).

    Returns numpy arrays (B = num_videos, K = MAX_OBJECTS, T = NUM_FRAMES):
        xy float64 (B, T, K, 2) object positions per frame (NaN for unused slots); shape, color, material
        int64 (B, K) (-1 unused); rotation float64 (B, K) degrees; entering bool (B, K); entry_frame float64
        (B, K) (NaN for initial objects); num_objects int64 (B,); camera (B, 3) and lights (B, 3, 3).
    """
    cam = cam or Camera()
    b, k = num_videos, MAX_OBJECTS
    geom = sample_geometry(rng, b, cam, (OBJECT_SIZE,), INITIAL_OBJECTS[0], INITIAL_OBJECTS[1], slots=k,
                           check_size=(80, 120))
    n0 = geom["num_objects"]
    n_enter = np.minimum(rng.poisson(ENTER_RATE, size=b), k - n0)
    # Truncated exponential entry frames in (0.5, NUM_FRAMES - 1].
    lo, hi = 0.5, NUM_FRAMES - 1.0
    u01 = rng.random((b, k))
    tau = lo - ENTER_SCALE * np.log(1 - u01 * (1 - math.exp(-(hi - lo) / ENTER_SCALE)))
    target, udir, entry = _entry_paths(rng, b, k, geom["camera"], cam)
    speed_in = rng.uniform(*ENTER_SPEED, size=(b, k))
    moving = rng.random((b, k)) < P_MOVE
    speed0 = np.where(moving, rng.uniform(*INITIAL_SPEED, size=(b, k)), 0.0)
    ang0 = rng.uniform(0, 2 * math.pi, size=(b, k))
    shape = rng.integers(0, len(SHAPES), size=(b, k))
    rot = 360.0 * rng.random((b, k))
    color = rng.integers(0, len(COLORS), size=(b, k))
    material = rng.integers(0, len(MATERIALS), size=(b, k))

    slot = np.arange(k)[None]
    initial = slot < n0[:, None]
    entering = (slot >= n0[:, None]) & (slot < (n0 + n_enter)[:, None])
    used = initial | entering
    # Start state. An entering object starts back along its path by the distance it slides in tau frames.
    t_in = tau / FPS
    back = speed_in * (1 - np.exp(-FRICTION * t_in)) / FRICTION
    pos = np.where(initial[..., None], np.nan_to_num(geom["xy"]), entry - back[..., None] * udir)
    vel = np.where(initial[..., None], speed0[..., None] * np.stack([np.cos(ang0), np.sin(ang0)], -1),
                   speed_in[..., None] * udir)
    vel = np.where(used[..., None], vel, 0.0)
    pos = np.where(used[..., None], pos, 1e3 * (1 + slot[..., None]))  # unused slots parked far away

    radius = OBJECT_SIZE
    dt = 1.0 / (FPS * SUBSTEPS)
    decay = math.exp(-FRICTION * dt)
    pair = np.triu(np.ones((k, k), bool), 1)[None]

    def collide(pos, vel, bounce):
        """Push overlapping discs apart; with ``bounce``, approaching pairs exchange their normal velocities
        (equal masses, elastic)."""
        delta = pos[:, None, :, :] - pos[:, :, None, :]  # (B, K, K, 2): j - i
        dist = np.sqrt((delta ** 2).sum(-1))
        hit = pair & (dist < 2 * radius)
        for bb, ii, jj in zip(*np.nonzero(hit)):
            nn = delta[bb, ii, jj] / max(dist[bb, ii, jj], 1e-9)
            vi, vj = vel[bb, ii] @ nn, vel[bb, jj] @ nn
            if bounce and vj - vi < 0:
                vel[bb, ii] += (vj - vi) * nn
                vel[bb, jj] += (vi - vj) * nn
            overlap = 2 * radius - dist[bb, ii, jj]
            pos[bb, ii] -= 0.5 * overlap * nn
            pos[bb, jj] += 0.5 * overlap * nn
        return bool(hit.any())

    for _ in range(20):  # entering objects may start overlapping outside the view: separate them first
        if not collide(pos, vel, bounce=False):
            break
    xy = np.empty((b, NUM_FRAMES, k, 2))
    xy[:, 0] = pos
    for f in range(1, NUM_FRAMES):
        for _ in range(SUBSTEPS):
            pos = pos + vel * dt
            vel = vel * decay
            collide(pos, vel, bounce=True)
        xy[:, f] = pos
    xy = np.where(used[:, None, :, None], xy, np.nan)
    return {"xy": xy, "shape": np.where(used, shape, -1), "color": np.where(used, color, -1),
            "material": np.where(used, material, -1), "rotation": np.where(used, rot, 0.0), "entering": entering,
            "entry_frame": np.where(entering, tau, np.nan), "num_objects": (n0 + n_enter).astype(np.int64),
            "camera": geom["camera"], "lights": geom["lights"]}


def _frame_geometry(sim: dict, frame: int) -> dict[str, np.ndarray]:
    used = sim["shape"] >= 0
    r = np.where(sim["shape"] == SHAPES.index("cube"), OBJECT_SIZE / math.sqrt(2), OBJECT_SIZE)
    return {"num_objects": sim["num_objects"], "shape": sim["shape"], "size": np.where(used, 0, -1),
            "r": np.where(used, r, 1.0), "xy": sim["xy"][:, frame], "rotation": sim["rotation"],
            "camera": sim["camera"], "lights": sim["lights"]}


def _clevrer_block(seed: int, stream: int, block: int, count: int, variant: str, image_size: int, images: bool):
    rng = np.random.default_rng([seed, stream, block])
    cam = Camera()
    sim = simulate_videos(rng, BLOCK, cam)
    sim = {key: v[:count] for key, v in sim.items()}
    frames = VARIANT_FRAMES[variant]
    rgb = np.asarray([COLORS[c] for c in COLOR_NAMES], np.float32)[sim["color"].clip(0)] / 255.0
    out_img, out_msk = [], []
    for f in frames:
        batch = geometry_batch(_frame_geometry(sim, f), albedo=rgb, metal=sim["material"] == 1)
        if images:
            img, msk = render(batch, cam, image_size, image_size, supersample=2, chunk=2)
            out_img.append(img.numpy())
        else:
            msk = index_map(batch, cam, image_size, image_size, chunk=4)
        out_msk.append(msk.numpy())
    masks = np.stack(out_msk, 1)  # (B, 2, S, S)
    imgs = np.stack(out_img, 1) if images else None
    metas = []
    for b in range(count):
        objs = []
        for j in range(int(sim["num_objects"][b])):
            objs.append({"index": j + 1, "shape": SHAPES[sim["shape"][b, j]], "color": COLOR_NAMES[sim["color"][b, j]],
                         "material": MATERIALS[sim["material"][b, j]], "rotation": float(sim["rotation"][b, j]),
                         "entering": bool(sim["entering"][b, j]),
                         "entry_frame": None if not sim["entering"][b, j] else float(sim["entry_frame"][b, j]),
                         "xy": [[float(v) for v in sim["xy"][b, f, j]] for f in frames]})
        metas.append({"video_index": block * BLOCK + b, "frames": list(frames), "objects": objs,
                      "camera_location": [float(v) for v in sim["camera"][b]]})
    return imgs, masks, metas


def _blocks(num_videos: int, seed: int, split: str, variant: str, image_size: int, images: bool, workers: int,
            progress: bool, desc: str) -> list:
    """Simulate (and with ``images`` shade) the videos in blocks; the blocks' (images, masks, metas)."""
    check_generation(num_videos, seed, image_size, split, SPLITS, count_name="num_videos")
    if variant not in VARIANT_FRAMES:
        raise ValueError(f"variant must be one of {sorted(VARIANT_FRAMES)}, got {variant!r}")
    stream = SPLITS[split][0]
    # Both variants share the stream, so S and L of one seed are two views of the same videos.
    return run_in_blocks(_clevrer_block, num_videos, BLOCK,
                         lambda blk, n: (seed, stream, blk, n, variant, image_size, images), workers, progress, desc)


def generate_clevrer(num_videos: int, variant: str = "S", seed: int = 0, split: str = "train",
                     image_size: int = IMAGE_SIZE, workers: int = 1, progress: bool = True) -> dict[str, np.ndarray]:
    """Generate CLEVRER-S ("S": frames 1 and 16) or CLEVRER-L ("L": frames 1 and 128) pairs,
    deterministically in (seed, split); S and L of the same seed come from the same simulated videos.

    Returns a dict of numpy arrays (S = image_size):
        images uint8 (N, 2, 3, S, S); masks uint8 (N, 2, S, S) (0 = background, k = object k, the same
        object in both frames); num_objects int64 (N,) objects in the video (visible or not);
        meta_json uint8 (L,) and meta_offsets int64 (N + 1,): per-video metadata (the jittered camera
        location; objects with their attributes, entry frames and floor positions at the two frames);
        ``tasks.clevr.decode_scenes`` turns them into dicts.
    """
    parts = _blocks(num_videos, seed, split, variant, image_size, True, workers, progress, f"CLEVRER-{variant} {split}")
    s = image_size
    images, masks, metas = concat_blocks(parts, (0, 2, 3, s, s), (0, 2, s, s))
    data, offsets = encode_scenes(metas)
    return {"images": images, "masks": masks, "num_objects": np.array([len(m["objects"]) for m in metas], np.int64),
            "meta_json": data, "meta_offsets": offsets}


def visible_counts(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    """Number of objects with at least one pixel in each frame: masks (N, T, H, W) -> int64 (N, T)."""
    m = torch.as_tensor(np.asarray(masks)).long()
    n, t = m.shape[:2]
    flat = m.reshape(n, t, -1)
    present = torch.zeros(n, t, int(flat.max()) + 1 if flat.numel() else 1, dtype=torch.bool)
    present.scatter_(-1, flat, True)
    return present[..., 1:].sum(-1).numpy().astype(np.int64)


def count_growth_rate(variant: str, num_videos: int, seed: int = 0, split: str = "train",
                      image_size: int = IMAGE_SIZE, workers: int = 1, progress: bool = False) -> float:
    """Fraction of generated pairs whose visible-object count grows by >= 2 from the first to the second
    frame. Uses the generator's masks without shading them (the same masks ``generate_clevrer`` returns)."""
    parts = _blocks(num_videos, seed, split, variant, image_size, False, workers, progress, "CLEVRER masks")
    counts = visible_counts(np.concatenate([p[1] for p in parts]))
    return float(np.mean(counts[:, 1] - counts[:, 0] >= 2))
