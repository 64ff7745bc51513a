"""PNG sample grids with object masks overlaid, for looking at the data (``python -m tasks.<task>.show``).

Each sample is drawn as ``image | image with masks overlaid``; for video samples (T frames) the row holds
``frame_1 | overlay_1 | frame_2 | overlay_2 | ...``. Mask index k always gets the same colour, so an
object whose identity is kept across frames keeps its colour, and the background (index 0) is not tinted.
Mask boundaries are drawn as thin dark lines at the output resolution. Small images are upscaled by an
integer factor (nearest neighbour) so that 64x64 data is still readable.

Also here: ``show_parser``, the command-line options shared by every task's ``show`` entry point.

Known limits: the palette has 20 colours; indices beyond that repeat colours.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..runner import int_at_least

__all__ = ["PALETTE", "colorize_masks", "overlay_masks", "save_grid", "show_parser", "write_samples"]

# 20 well-separated colours; index k >= 1 uses PALETTE[(k - 1) % 20].
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
], dtype=np.uint8)


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def colorize_masks(masks) -> np.ndarray:
    """Index maps (..., H, W) -> uint8 RGB (..., H, W, 3); background black, object k in its palette colour."""
    m = _to_numpy(masks, "masks").astype(np.int64)
    if m.ndim < 2:
        raise ValueError(f"masks must have shape (..., H, W), got {m.shape}")
    if m.size and m.min() < 0:
        raise ValueError("masks must be non-negative index maps")
    table = np.concatenate([np.zeros((1, 3), np.uint8), PALETTE])  # (21, 3): row 0 = background
    idx = np.where(m > 0, (m - 1) % len(PALETTE) + 1, 0)
    return table[idx]


def overlay_masks(images, masks, alpha: float = 0.55, boundaries: bool = True) -> np.ndarray:
    """Blend mask colours into images.

    Args:
        images: uint8 (..., 3, H, W) (channels first, as in SceneData).
        masks: integer (..., H, W) index maps, 0 = background (left untinted).
        alpha: weight of the mask colour on object pixels, in [0, 1].
        boundaries: darken pixels whose right or lower neighbour has a different index.

    Returns:
        uint8 (..., H, W, 3) channels-last RGB.
    """
    img = _to_numpy(images, "images")
    m = _to_numpy(masks, "masks").astype(np.int64)
    if img.dtype != np.uint8 or img.ndim < 3 or img.shape[-3] != 3:
        raise ValueError(f"images must be uint8 (..., 3, H, W), got {img.dtype} {img.shape}")
    if m.shape != img.shape[:-3] + img.shape[-2:]:
        raise ValueError(f"masks shape {m.shape} does not match images {img.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.moveaxis(img, -3, -1).astype(np.float32)  # (..., H, W, 3)
    col = colorize_masks(m).astype(np.float32)
    obj = (m > 0)[..., None]
    out = np.where(obj, (1 - alpha) * rgb + alpha * col, rgb)
    if boundaries:
        edge = np.zeros(m.shape, dtype=bool)
        edge[..., :, :-1] |= m[..., :, :-1] != m[..., :, 1:]
        edge[..., :-1, :] |= m[..., :-1, :] != m[..., 1:, :]
        out = np.where(edge[..., None], out * 0.25, out)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_grid(images, masks, path: str | Path, ncols: int = 8, scale: int | None = None) -> Path:
    """Write a PNG grid of samples, each shown as image | image with masks overlaid.

    Args:
        images: uint8 (N, 3, H, W) or (N, T, 3, H, W), torch or numpy.
        masks: integer (N, H, W) or (N, T, H, W) index maps, 0 = background.
        path: output PNG path (parent folders are created).
        ncols: samples per grid row.
        scale: integer upscaling factor; default makes each panel at least 128 px tall.

    Returns:
        the path written.
    """
    from PIL import Image

    img = _to_numpy(images, "images")
    m = _to_numpy(masks, "masks")
    if img.ndim == 4:
        img, m = img[:, None], m[:, None]  # (N, 1, 3, H, W): a still image is a one-frame video
    if img.ndim != 5 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, 3, H, W) or (N, T, 3, H, W), got {img.dtype} {img.shape}")
    if m.shape != img.shape[:2] + img.shape[3:]:
        raise ValueError(f"masks shape {m.shape} does not match images {img.shape}")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    n, t, _, h, w = img.shape
    if n == 0:
        raise ValueError("save_grid needs at least one sample")
    s = scale if scale is not None else max(1, -(-128 // h))
    if s < 1:
        raise ValueError(f"scale must be >= 1, got {s}")
    # Upscale first so that the boundary lines are one output pixel wide.
    img_up = img.repeat(s, axis=-2).repeat(s, axis=-1)  # (N, T, 3, sH, sW)
    m_up = m.repeat(s, axis=-2).repeat(s, axis=-1)  # (N, T, sH, sW)
    plain = np.moveaxis(img_up, 2, -1)  # (N, T, sH, sW, 3)
    over = overlay_masks(img_up, m_up)  # (N, T, sH, sW, 3)
    # gap: between image and overlay; fpad: between frames of one sample; pad: between samples (wider for
    # video so that a sample's frames read as one group).
    ph, pw, gap, fpad = s * h, s * w, 2, 6
    pad = 6 if t == 1 else 16
    cell_w = t * (2 * pw + gap) + (t - 1) * fpad
    cols = min(ncols, n)
    rows = -(-n // cols)
    canvas = np.full((rows * (ph + pad) + pad, cols * (cell_w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        y = pad + (i // cols) * (ph + pad)
        x = pad + (i % cols) * (cell_w + pad)
        for f in range(t):
            canvas[y:y + ph, x:x + pw] = plain[i, f]
            canvas[y:y + ph, x + pw + gap:x + 2 * pw + gap] = over[i, f]
            x += 2 * pw + gap + fpad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


def show_parser(task: str, default_num: int = 16) -> argparse.ArgumentParser:
    """An argparse parser with the options every ``python -m tasks.<task>.show`` shares.

    Options: ``--data-dir`` (real data set root; generated data when omitted), ``--split``, ``--num``
    (samples shown), ``--seed``, ``--ncols``, ``--cache-dir``, ``--workers`` (generator processes) and ``--out``
    (PNG path, default ``<task>_samples.png`` in the current folder).
    """
    p = argparse.ArgumentParser(prog=f"python -m tasks.{task}.show",
                                description=f"Write a PNG grid of {task} samples with their masks overlaid.")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="root of the real data set; without it the embedded generator is used")
    p.add_argument("--split", default="train", help="data split (default: train)")
    p.add_argument("--num", type=int_at_least(1), default=default_num,
                   help=f"number of samples (default: {default_num})")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.add_argument("--ncols", type=int_at_least(1), default=4, help="samples per grid row (default: 4)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache folder (default: $SA_MESH_CACHE or ~/.cache/sa-mesh)")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="generator processes (default: 1)")
    p.add_argument("--out", type=Path, default=Path(f"{task}_samples.png"), help="output PNG path")
    return p


def write_samples(data, args: argparse.Namespace, what: str = "samples") -> int:
    """Write the grid of the first ``args.num`` samples of ``data`` (SceneData) to ``args.out`` and say so;
    returns the exit status 0."""
    out = save_grid(data.images[:args.num], data.masks[:args.num], args.out, ncols=args.ncols)
    print(f"wrote {out} ({min(args.num, len(data))} {what}, {data.meta.get('source')})")
    return 0
