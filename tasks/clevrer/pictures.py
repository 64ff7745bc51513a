"""Pictures of a trained video model (App. J, Fig. 10): for a few test pairs, both frames, their
reconstructions, the ground truth and every slot's alpha mask, with slot k drawn in the same colour in both
frames, so that one sees whether a slot follows its object and whether new objects get a slot of their own.

Layout: one row per frame (two per pair, a gap between pairs); columns
    input | reconstruction | ground truth | slots | slot 1 | ... | slot K
"ground truth" tints each object in the colour of its index (the same in both frames); "slots" colours every
pixel by its argmax slot; "slot k" is slot k's alpha mask in slot k's colour on black. Colours come from
``tasks.scenes.show.PALETTE`` (slot k uses entry k mod 20; objects use their index's entry, as in the data
pictures).

Known limits: more than 20 slots repeat colours; labels use PIL's small default font.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from slots import to_model_range

from ..scenes.show import PALETTE, overlay_masks

__all__ = ["draw_video_slots", "draw_run_pictures"]


def _upscale(x: np.ndarray, s: int) -> np.ndarray:
    return x.repeat(s, axis=-3).repeat(s, axis=-2)  # (..., H, W, 3) -> (..., sH, sW, 3)


def draw_video_slots(images: torch.Tensor, gt: torch.Tensor, recon: torch.Tensor, masks: torch.Tensor,
                     path: str | Path, title: str = "", scale: int = 2) -> Path:
    """Write the picture described in the module docstring.

    Args:
        images: uint8 (N, T, 3, H, W) input frames. gt: integer (N, T, H, W) object index maps.
        recon: float (N, T, 3, H, W) reconstructions in [-1, 1]. masks: float (N, T, K, H, W) alpha masks.
        path: PNG file to write (parent folders are created). title: a line above the picture.
        scale: integer upscaling of every panel.

    Returns:
        the path written.
    """
    from PIL import Image, ImageDraw

    N, T, _, H, W = images.shape
    K = masks.shape[2]
    if gt.shape != (N, T, H, W) or recon.shape != images.shape or masks.shape != (N, T, K, H, W):
        raise ValueError(f"shapes do not match: images {tuple(images.shape)}, gt {tuple(gt.shape)}, recon "
                         f"{tuple(recon.shape)}, masks {tuple(masks.shape)}")
    colours = PALETTE[np.arange(K) % len(PALETTE)].astype(np.float32)  # (K, 3): slot k's colour
    m = masks.detach().float().cpu().numpy()  # (N, T, K, H, W)
    panels = [
        np.moveaxis(images.numpy(), 2, -1),  # input
        np.moveaxis(((recon.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().numpy(), 2, -1),
        overlay_masks(images, gt.long()),  # ground truth
        PALETTE[m.argmax(2) % len(PALETTE)],  # slots: argmax slot of each pixel
    ]
    panels += [(m[:, :, k, :, :, None] * colours[k]).round().astype(np.uint8) for k in range(K)]
    labels = ["input", "reconstruction", "ground truth", "slots"] + [f"slot {k + 1}" for k in range(K)]
    panels = [_upscale(p, scale) for p in panels]  # each (N, T, sH, sW, 3)
    ph, pw, gap, pair_gap, head = scale * H, scale * W, 4, 12, 30 if title else 16
    width = len(panels) * (pw + gap) + gap
    height = head + N * (T * (ph + gap) + pair_gap)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for i in range(N):
        for t in range(T):
            y = head + i * (T * (ph + gap) + pair_gap) + t * (ph + gap)
            for c, p in enumerate(panels):
                x = gap + c * (pw + gap)
                canvas[y:y + ph, x:x + pw] = p[i, t]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((gap, 2), title, fill=(0, 0, 0))
    for c, label in enumerate(labels):
        x = gap + c * (pw + gap)
        if c >= 4:  # a swatch of the slot's colour before its label
            draw.rectangle((x, head - 12, x + 8, head - 4), fill=tuple(int(v) for v in colours[c - 4]))
            x += 11
        draw.text((x, head - 13), label, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def draw_run_pictures(model, test, cfg, variant: str, run_dir: Path,
                      seed: int = 0) -> Path | None:
    """Draw ``run_dir / "pictures.png"`` (``tasks.clevrer.pictures``) for the first ``cfg.n_pictures`` test pairs
    (``cfg`` a ``tasks.clevrer.experiment.ClevrerConfig``); the model's random draws (slot initialization,
    noise) use ``seed``. Returns the path, or None for 0 pictures."""
    n = min(cfg.n_pictures, len(test))
    if n == 0:
        return None
    device = next(model.parameters()).device
    frames = test.images[:n]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        out = model(to_model_range(frames.to(device)))
    from .experiment import VARIANTS

    name = VARIANTS[variant].name if variant in VARIANTS else variant
    title = (f"{name}, {run_dir.name}, CLEVRER-{cfg.data}: rows are frames (two per test pair); slot k has the "
             "same colour in both frames")
    return draw_video_slots(frames, test.masks[:n], out.recon, out.masks, run_dir / "pictures.png", title)
