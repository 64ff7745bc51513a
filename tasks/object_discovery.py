"""What the image object-discovery tasks share (Sec. 5.3, App. F.3, App. J): the data wrapper, the model of a
variant, the loss, the FG-ARI / FG-mIoU evaluation, the fixed-regions baseline and the pictures.

Data: a ``SceneData`` split (uint8 images (N, 3, S, S), index masks (N, S, S), 0 = background) is checked
(:func:`check_scenes`) and, for a reduced budget, resized to the run's resolution R (images bilinear with
antialiasing, masks nearest) once, in memory (:class:`ImageSet`). A batch is a dict: ``images`` float
(b, 3, R, R) in [-1, 1] and ``masks`` int64 (b, R, R).

Model (:func:`build_model`): ``slots.SlotAutoencoder`` with the App. F.3 architecture for the task's widths
(:class:`ModelSpec`), n_slots = max objects + 1, and the official code's slot-attention choices: the scaled
dot product for SA (Locatello et al.), the Euclidean (l2) cost for the OT variants, marginals scaled to the
number of slots, MESH with 4 steps of step size 8, 5 Sinkhorn iterations, and the raw transport plan as the
attention weights (``OTConfig.normalize_plan=False``). Loss: the mean squared reconstruction error.

Metrics (:func:`evaluate`): FG-ARI and FG-mIoU (``slots.fg_ari``, ``slots.fg_miou``) of the argmax alpha
masks, mean over the images of a split, in percent as the paper's Tables 3-4, and the reconstruction MSE.
The fixed-regions baseline (:func:`fixed_region_masks`) is a "model" that ignores the image: its K masks
are the Voronoi cells of K points placed by k-means on the pixel grid (compact regions, like the attention
of an SA run that split the image by position); :func:`evaluate_fixed_regions` scores it the same way.

Pictures (:func:`save_examples`, Fig. 2 / App. J): for a few images, one row each of input, reconstruction,
ground truth, predicted segmentation and, per slot, the attention map of the last slot-attention iteration
and the alpha mask, each multiplied with the input image as in App. J.

Known limits: everything is held in memory; attention maps live on the encoder's feature grid, which is the
image grid for the App. F.3 encoder (stride 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slots import OTConfig, SlotAutoencoder, fg_ari, fg_miou, image_autoencoder_config, to_model_range
from tasks.scenes.records import DataFormatError, SceneData
from tasks.scenes.show import colorize_masks

__all__ = ["ModelSpec", "ImageSet", "check_scenes", "build_model", "reconstruction_loss", "evaluate",
           "fixed_region_masks", "evaluate_fixed_regions", "save_examples", "VARIANT_COSTS"]

# Cost of each variant, as the official MESH configuration (original_slot_attention: dot_prod; others: l2).
VARIANT_COSTS = {"sa": "dot", "sa-sh": "l2", "sa-emd": "l2", "sa-mesh": "l2"}


@dataclass(frozen=True)
class ModelSpec:
    """The widths of App. F.3's architecture for one data set (Multi-dSprites: 32, 64, 128; ClevrTex: 64,
    128, 256) and its number of slots (max objects + 1)."""

    channels: int
    slot_dim: int
    mlp_hidden: int
    n_slots: int


def check_scenes(data: SceneData, size: int, max_objects: int, what: str) -> None:
    """Raise DataFormatError naming ``what`` (the split and its source) if ``data`` is not a still-image set of
    (N, 3, size, size) images with masks whose object indices are at most ``max_objects``."""
    if data.is_video or tuple(data.images.shape[-2:]) != (size, size):
        raise DataFormatError(f"{what}: images are {tuple(data.images.shape[1:])}, expected (3, {size}, {size})")
    if len(data) == 0:
        raise DataFormatError(f"{what}: no images")
    top = int(data.masks.max())
    if top > max_objects:
        i = int((data.masks.reshape(len(data), -1).amax(1) == top).nonzero()[0, 0])
        name = data.ids[i] if data.ids else f"image {i}"
        raise DataFormatError(f"{what}: {name} has mask index {top}, more than the {max_objects} objects "
                              f"the model has slots for")


class ImageSet:
    """Images and masks of one split at the run's resolution, indexable by a tensor of indices.

    Args:
        data: the split (uint8 images (N, 3, S, S), masks (N, S, S)).
        resolution: R; when R < S images are resized bilinearly with antialiasing, masks by nearest pixel.
    """

    def __init__(self, data: SceneData, resolution: int):
        images, masks = data.images, data.masks
        if resolution != images.shape[-1]:
            size = (resolution, resolution)
            images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            images = images.round_().clamp_(0, 255).to(torch.uint8)
            masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(masks.dtype)
        self.images, self.masks = images.contiguous(), masks.contiguous()  # (N, 3, R, R), (N, R, R)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """idx (b,) int64 -> {"images": float (b, 3, R, R) in [-1, 1], "masks": int64 (b, R, R)}."""
        return {"images": to_model_range(self.images[idx]), "masks": self.masks[idx].long()}


def build_model(spec: ModelSpec, variant: str, resolution: int, n_iters: int = 3, init: str = "learned",
                fast: bool = True, ot: OTConfig | None = None) -> SlotAutoencoder:
    """The autoencoder of a variant ("sa", "sa-sh", "sa-emd", "sa-mesh") at ``resolution`` (module docstring).

    ``n_iters`` and ``init`` ("learned" or "per_slot") are App. H's ablations; ``fast=False`` is the plain
    float32 eager model (no bf16 autocast, channels-last or factored broadcast); ``ot`` overrides the OT
    options (default: the official code's, with the raw plan).
    """
    if variant not in VARIANT_COSTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANT_COSTS)}")
    cfg = image_autoencoder_config(
        spec.n_slots, variant, VARIANT_COSTS[variant], resolution=resolution, channels=spec.channels,
        slot_dim=spec.slot_dim, mlp_hidden=spec.mlp_hidden, n_iters=n_iters, init=init,
        ot=ot if ot is not None else OTConfig(normalize_plan=False),
        bf16=fast, channels_last=fast, factored_broadcast=fast)
    return SlotAutoencoder(cfg)


def reconstruction_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error between the reconstruction and ``batch["images"]`` (b, 3, R, R); a () tensor."""
    images = batch["images"]
    return F.mse_loss(model(images).recon, images)


@torch.no_grad()
def _scores(masks: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image FG-ARI and FG-mIoU (B,) of masks (B, K, R, R) against gt (B, R, R)."""
    return fg_ari(masks, gt), fg_miou(masks, gt)


def _summary(ari: list[torch.Tensor], miou: list[torch.Tensor]) -> dict[str, float]:
    a, m = torch.cat(ari), torch.cat(miou)
    return {"fg_ari": 100 * float(torch.nanmean(a)), "fg_miou": 100 * float(torch.nanmean(m))}


@torch.no_grad()
def evaluate(model: SlotAutoencoder, data: ImageSet, batch_size: int = 64) -> dict[str, float]:
    """FG-ARI and FG-mIoU in percent (mean over images with foreground) and the reconstruction MSE."""
    ari, miou, sq = [], [], 0.0
    for s in range(0, len(data), batch_size):
        batch = data[torch.arange(s, min(s + batch_size, len(data)))]
        out = model(batch["images"])
        sq += float(F.mse_loss(out.recon, batch["images"], reduction="sum"))
        a, m = _scores(out.masks, batch["masks"])
        ari.append(a)
        miou.append(m)
    return {**_summary(ari, miou), "mse": sq / data.images.numel()}


def fixed_region_masks(n_regions: int, resolution: int, iters: int = 50) -> torch.Tensor:
    """K fixed, compact regions tiling an R x R image: the Voronoi cells of K points placed by k-means (Lloyd's
    algorithm from points on a Fermat spiral) on the pixel centres.

    Returns:
        (K, R, R) float one-hot masks (every pixel in exactly one region; no region empty).
    """
    if isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions < 1:
        raise ValueError(f"n_regions must be an integer >= 1, got {n_regions!r}")
    if resolution * resolution < n_regions:
        raise ValueError(f"{n_regions} regions do not fit in {resolution}x{resolution} pixels")
    c = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    pix = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)  # (R * R, 2)
    k = torch.arange(n_regions, dtype=torch.float64)
    r, th = 0.4 * torch.sqrt((k + 0.5) / n_regions), k * math.pi * (3 - math.sqrt(5))
    centres = 0.5 + torch.stack([r * torch.sin(th), r * torch.cos(th)], -1)  # (K, 2)
    for _ in range(iters):
        assign = torch.cdist(pix, centres).argmin(1)  # (R * R,)
        counts = torch.bincount(assign, minlength=n_regions)
        sums = torch.zeros_like(centres).index_add_(0, assign, pix)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    assign = torch.cdist(pix, centres).argmin(1)
    if torch.bincount(assign, minlength=n_regions).min() == 0:
        raise ValueError(f"k-means left a region empty for {n_regions} regions at {resolution}x{resolution}")
    return F.one_hot(assign, n_regions).T.reshape(n_regions, resolution, resolution).float()


def evaluate_fixed_regions(data: ImageSet, n_regions: int, batch_size: int = 256) -> dict[str, float]:
    """FG-ARI and FG-mIoU in percent of :func:`fixed_region_masks` on every image of ``data``."""
    regions = fixed_region_masks(n_regions, data.images.shape[-1])
    ari, miou = [], []
    for s in range(0, len(data), batch_size):
        gt = data.masks[s:s + batch_size].long()
        a, m = _scores(regions.expand(gt.shape[0], *regions.shape), gt)
        ari.append(a)
        miou.append(m)
    return _summary(ari, miou)


def _panel(x: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) uint8 -> upscaled by an integer factor (nearest)."""
    return x.repeat(scale, 0).repeat(scale, 1)


@torch.no_grad()
def save_examples(model: SlotAutoencoder, data: ImageSet, path: str | Path, indices=range(4),
                  title: str | None = None) -> Path:
    """Write the Fig. 2 / App. J picture of ``model`` on images ``indices`` of ``data`` as a PNG.

    Each image gives two rows: (input, reconstruction, then each slot's attention map times the input) and
    (ground truth, predicted segmentation, then each slot's alpha mask times the input). Attention maps are
    scaled by their maximum over the slots of the image, so that a slot attending little looks dark.
    ``title`` (e.g. the variant and step) is written above the rows. Returns the path.
    """
    from PIL import Image, ImageDraw

    idx = torch.as_tensor(list(indices), dtype=torch.long)
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(data):
        raise ValueError(f"indices must be in [0, {len(data)}), got {idx.tolist()}")
    batch = data[idx]
    model.eval()
    out = model(batch["images"])
    img = data.images[idx].permute(0, 2, 3, 1).float() / 255  # (b, R, R, 3) in [0, 1]
    recon = ((out.recon.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    R = img.shape[1]
    attn = F.interpolate(out.attn, size=(R, R), mode="nearest")  # (b, K, R, R) feature grid -> image grid
    attn = attn / attn.amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
    seg = out.masks.argmax(1) + 1  # (b, R, R): slot k is colour k + 1

    def u8(x):
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    s, gap = max(1, -(-96 // R)), 4
    K = out.masks.shape[1]
    rows = []
    for i in range(len(idx)):
        top = [u8(img[i]), u8(recon[i])] + [u8(img[i] * attn[i, k, :, :, None]) for k in range(K)]
        bottom = [colorize_masks(batch["masks"][i]), colorize_masks(seg[i])]
        bottom += [u8(img[i] * out.masks[i, k, :, :, None]) for k in range(K)]
        rows += [top, bottom]
    ph = s * R
    head = 18 if title else 0
    canvas = np.full((head + len(rows) * (ph + gap) + len(rows) // 2 * gap + gap, (K + 2) * (ph + gap) + 3 * gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y = head + gap + r * (ph + gap) + (r // 2) * gap  # a wider gap between images
        for c, p in enumerate(row):
            x = gap + c * (ph + gap) + (2 * gap if c >= 2 else 0)
            canvas[y:y + ph, x:x + ph] = _panel(p, s)
    picture = Image.fromarray(canvas)
    if title:
        ImageDraw.Draw(picture).text((gap, 3), title, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
