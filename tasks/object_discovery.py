"""What the image object-discovery tasks share (Sec. 5.3, App. F.3, App. J): the data wrapper, the model of a
variant, the loss, the FG-ARI / FG-mIoU evaluation, the fixed-regions baseline, the pictures, and
:func:`make_task`, which turns a data set (:class:`ImageDataset`) into a spec of the shared runner
(``tasks.runner``): ``tasks.multi_dsprites`` and ``tasks.clevrtex`` are each such a spec.

Data: a ``SceneData`` split (uint8 images (N, 3, S, S), index masks (N, S, S), 0 = background) is checked
(:func:`check_scenes`) and, for a reduced budget, resized to the run's resolution R (images bilinear with
antialiasing, masks nearest) once, in memory (:class:`ImageSet`). A training batch is a dict holding
``images`` float (b, 3, R, R) in [-1, 1].

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

Runner spec (:func:`make_task`): variants SA, SA-SH, SA-MESH (SA-EMD opt-in); the training data are the same
for every seed (the seed fixes the initial parameters and the data order); the test data are the first
``n_test`` images of the test split; the table shows FG-ARI, FG-mIoU and MSE, mean and standard deviation
over seeds, next to the paper's Tables 3-4, with the fixed-regions baseline as a row; every run folder gets
``examples.png`` (:func:`save_examples` on the first four test images). Bad input (a corrupt record, a
missing mask, images of the wrong size) is found by :func:`prepare` before any run folder is written.

Known limits: everything is held in memory; attention maps live on the encoder's feature grid, which is the
image grid for the App. F.3 encoder (stride 1).
"""
from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from slots import (SLOT_INITS, OTConfig, SlotAutoencoder, fg_ari, fg_miou,
                   image_autoencoder_config, native_bf16, to_model_range)
from slots.train import CHECKPOINT_NAME
from tasks.scenes.records import DataFormatError, SceneData
from tasks.scenes.show import colorize_masks, save_grid, show_parser

from . import runner
from .runner import BACKENDS, Budget, Metric, Task
from .runs import load_run

__all__ = ["ModelSpec", "ImageSet", "check_scenes", "build_model", "reconstruction_loss", "evaluate",
           "fixed_region_masks", "evaluate_fixed_regions", "save_examples", "VARIANT_COSTS", "VARIANT_NAMES",
           "ObjectDiscoveryConfig", "ImageDataset", "make_task", "prepare", "load_split", "METRICS", "EXAMPLES",
           "show_runs", "show_command", "paper_budget", "command"]

# Cost of each variant, as the official MESH configuration (original_slot_attention: dot_prod; others: l2).
VARIANT_COSTS = {"sa": "dot", "sa-sh": "l2", "sa-emd": "l2", "sa-mesh": "l2"}
VARIANT_NAMES = {"sa": "SA", "sa-sh": "SA-SH", "sa-mesh": "SA-MESH", "sa-emd": "SA-EMD"}  # slowest last
METRICS = (Metric("fg_ari", "FG-ARI (%)", fmt=".1f", paper_fmt=".1f"),
           Metric("fg_miou", "FG-mIoU (%)", fmt=".1f", paper_fmt=".1f"),
           Metric("mse", "MSE", lower_is_better=True, fmt=".4f"))
EXAMPLES = "examples.png"  # the App. J picture in every run folder


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
            images = torch.cat([self._resize_images(images[s:s + 1024], resolution)
                                for s in range(0, len(images), 1024)])  # chunks: no float copy of the whole set
            masks = F.interpolate(masks[:, None], size=(resolution, resolution), mode="nearest-exact")[:, 0]
        self.images, self.masks = images.contiguous(), masks.contiguous()  # (N, 3, R, R), (N, R, R)

    @staticmethod
    def _resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
        """uint8 (n, 3, S, S) -> uint8 (n, 3, R, R), bilinear with antialiasing."""
        x = F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear", antialias=True,
                          align_corners=False)
        return x.round_().clamp_(0, 255).to(torch.uint8)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """idx (b,) int64 -> a training batch {"images": float (b, 3, R, R) in [-1, 1]}; the masks (``.masks``)
        are only read by the evaluation."""
        return {"images": to_model_range(self.images[idx])}


def build_model(spec: ModelSpec, variant: str, resolution: int, n_iters: int = 3, init: str = "learned",
                fast: bool = True, ot: OTConfig | None = None) -> SlotAutoencoder:
    """The autoencoder of a variant ("sa", "sa-sh", "sa-emd", "sa-mesh") at ``resolution`` (module docstring).

    ``n_iters`` and ``init`` ("learned" or "per_slot") are App. H's ablations; ``fast=False`` is the plain
    float32 eager model (no bf16 autocast, channels-last or factored broadcast; with ``fast`` the bf16
    autocast is on only where bfloat16 is native, ``slots.native_bf16``); ``ot`` overrides the OT options
    (default: the official code's, with the raw plan).
    """
    if variant not in VARIANT_COSTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANT_COSTS)}")
    cfg = image_autoencoder_config(
        spec.n_slots, variant, VARIANT_COSTS[variant], resolution=resolution, channels=spec.channels,
        slot_dim=spec.slot_dim, mlp_hidden=spec.mlp_hidden, n_iters=n_iters, init=init,
        ot=ot if ot is not None else OTConfig(normalize_plan=False),
        bf16=fast and native_bf16(), channels_last=fast,
        factored_broadcast=fast)
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
        idx = torch.arange(s, min(s + batch_size, len(data)))
        images = data[idx]["images"]
        out = model(images)
        sq += float(F.mse_loss(out.recon, images, reduction="sum"))
        a, m = _scores(out.masks, data.masks[idx])
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
        bottom = [colorize_masks(data.masks[idx[i]]), colorize_masks(seg[i])]
        bottom += [u8(img[i] * out.masks[i, k, :, :, None]) for k in range(K)]
        rows += [top, bottom]
    ph = s * R
    head = 18 if title else 0
    height = head + len(rows) * (ph + gap) + len(rows) // 2 * gap + gap
    canvas = np.full((height, (K + 2) * (ph + gap) + 3 * gap, 3), 255, np.uint8)
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


# ---------------------------------------------------------------------------------------------------
# The runner spec


@dataclass
class ObjectDiscoveryConfig:
    """Data and model options of an image object-discovery task (a task subclasses it to set its defaults).

    Attributes:
        resolution: image side R the model sees (the data's native side or less: resized in memory).
        n_train, n_test: images of the train and test splits used (None: the whole split); the test images
            are the first ``n_test`` of the test split.
        data_dir: real data (the task's reader); None: the generated data.
        data_variant: the data set's variant (e.g. Multi-dSprites "colored_on_grayscale", ClevrTex "full").
        n_iters: slot-attention iterations (App. H: 5). init: slot initialization ("learned": a Gaussian
            with learned mean and std; "per_slot": one learned vector per slot, App. H).
        normalize_plan: normalize OT plans over the inputs (False: the raw plan, as the official code).
        fast: the speed options of ``slots.SlotAutoencoderConfig`` (bf16 convolutions, channels-last, the
            factored first decoder layer); False is the plain float32 eager model.
        eval_batch: images per forward pass in evaluation.
        backend: OT backend ("auto": the fused C++ loops on CPU, Triton on CUDA).
    """

    resolution: int = 64
    n_train: int | None = None
    n_test: int | None = None
    data_dir: str | None = None
    data_variant: str = ""
    n_iters: int = 3
    init: str = "learned"
    normalize_plan: bool = False
    fast: bool = True
    eval_batch: int = 64
    backend: str = "auto"

    def __post_init__(self):
        for name, minimum, optional in (("resolution", 8, False), ("n_train", 1, True), ("n_test", 1, True),
                                        ("n_iters", 1, False), ("eval_batch", 1, False)):
            value = getattr(self, name)
            if optional and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.init not in SLOT_INITS:
            raise ValueError(f"init must be one of {sorted(SLOT_INITS)}, got {self.init!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("normalize_plan", "fast"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.data_dir is not None:
            self.data_dir = str(self.data_dir)


@dataclass(frozen=True)
class ImageDataset:
    """How a task reads its data and sizes its model.

    Attributes:
        title: e.g. "Multi-dSprites". native: the images' side as read. max_objects: objects per image at most
            (the model has max_objects + 1 slots).
        read: ``(split, num_images, cfg) -> SceneData``, a module-level function (runs are pickled to workers).
        sizes: split -> number of images of the generated or real split.
        spec: the model widths (:class:`ModelSpec`).
    """

    title: str
    native: int
    max_objects: int
    read: Callable[[str, int | None, Any], SceneData]
    sizes: Mapping[str, int]
    spec: ModelSpec


_LOADED: dict[str, ImageSet] = {}  # the splits this process has read, by (data set, split, options)


def load_split(ds: ImageDataset, split: str, cfg: ObjectDiscoveryConfig) -> ImageSet:
    """A checked split at the run's resolution (``n_train`` / ``n_test`` images of "train" / "test"); read once
    per process (the runner asks for the test split for every run, and for the train split in ``prepare``)."""
    key = json.dumps([ds.title, split, asdict(cfg)], sort_keys=True)
    if key not in _LOADED:
        _LOADED[key] = _read_split(ds, split, cfg)
    return _LOADED[key]


def _read_split(ds: ImageDataset, split: str, cfg: ObjectDiscoveryConfig) -> ImageSet:
    n = cfg.n_train if split == "train" else cfg.n_test
    data = ds.read(split, n, cfg)
    source = f"{ds.title} {split} split ({cfg.data_dir or 'generated'})"
    check_scenes(data, ds.native, ds.max_objects, source)
    if cfg.resolution > ds.native:
        raise ValueError(f"resolution {cfg.resolution} exceeds the data's {ds.native}x{ds.native} images")
    return ImageSet(data, cfg.resolution)


def prepare(ds: ImageDataset, cfg: ObjectDiscoveryConfig, progress: bool = True) -> None:
    """Read and check both splits (the readers cache them), so that bad input stops the runner before any run
    folder is written or a worker starts (the runner's ``Task.prepare``)."""
    for split in ("train", "test"):
        load_split(ds, split, cfg)


def _load_train(ds: ImageDataset, cfg: ObjectDiscoveryConfig, seed: int) -> ImageSet:
    return load_split(ds, "train", cfg)  # the same images for every seed


def _load_test(ds: ImageDataset, cfg: ObjectDiscoveryConfig) -> ImageSet:
    return load_split(ds, "test", cfg)


def _build(ds: ImageDataset, cfg: ObjectDiscoveryConfig, variant: str) -> SlotAutoencoder:
    backend = None if cfg.backend == "auto" else cfg.backend
    return build_model(ds.spec, variant, cfg.resolution, n_iters=cfg.n_iters, init=cfg.init, fast=cfg.fast,
                       ot=OTConfig(normalize_plan=cfg.normalize_plan, backend=backend))


def _model_config(ds: ImageDataset, cfg: ObjectDiscoveryConfig, variant: str) -> dict:
    return _build(ds, cfg, variant).config.to_dict()


def _evaluate(model, test: ImageSet, cfg: ObjectDiscoveryConfig) -> dict:
    return evaluate(model, test, cfg.eval_batch)


def _baselines(ds: ImageDataset, cfg: ObjectDiscoveryConfig, test: ImageSet) -> dict:
    k = ds.max_objects + 1
    return {f"fixed regions ({k} k-means cells)": evaluate_fixed_regions(test, k)}


def _after_train(ds: ImageDataset, model, test: ImageSet, cfg: ObjectDiscoveryConfig, run_dir: Path) -> None:
    variant = VARIANT_NAMES.get(run_dir.parent.name, run_dir.parent.name)
    save_examples(model, test, run_dir / EXAMPLES, indices=range(min(4, len(test))),
                  title=f"{ds.title}, {variant}, {run_dir.name}: input, reconstruction, attention x input | "
                        "ground truth, segmentation, alpha mask x input")


def _describe(ds: ImageDataset, cfg: ObjectDiscoveryConfig, budget: Budget, seeds: int) -> str:
    n_train = cfg.n_train or ds.sizes["train"]
    n_test = cfg.n_test or ds.sizes["test"]
    data = f"real data from {cfg.data_dir}" if cfg.data_dir else "generated data"
    extras = [f"{cfg.n_iters} iterations"] if cfg.n_iters != 3 else []
    extras += [f"init {cfg.init}"] if cfg.init != "learned" else []
    extras += ["normalized plans"] if cfg.normalize_plan else []
    extras += ["plain float32"] if not cfg.fast else []
    return (f"{ds.title} object discovery ({cfg.data_variant}, {data}): FG-ARI and FG-mIoU in % on {n_test:,} "
            f"test images, mean ± std over {seeds} seed(s); images {cfg.resolution}x{cfg.resolution}, "
            f"{n_train:,} training images, {budget.steps:,} steps of batch {budget.batch_size}"
            + (f" ({budget.note})" if budget.note else "") + (f"; {', '.join(extras)}" if extras else "") + ".")


def _validate(cfg: ObjectDiscoveryConfig, budget: Budget) -> None:
    if cfg.n_train is not None and cfg.n_train < budget.batch_size:
        raise ValueError(f"n_train ({cfg.n_train}) must be at least one batch ({budget.batch_size})")


def add_arguments(parser, steps_group, data_variants: tuple[str, ...]) -> None:
    """The command-line options of an image object-discovery task (those of :class:`ObjectDiscoveryConfig`)."""
    from .runner import int_at_least

    parser.add_argument("--data-dir", help="real data (see the task's reader); default: the generated data")
    parser.add_argument("--data-variant", choices=data_variants, help=f"data variant (default: {data_variants[0]})")
    parser.add_argument("--resolution", type=int_at_least(8), help="image side the model sees (default: the budget's)")
    parser.add_argument("--n-train", type=int_at_least(1), help="training images (default: the budget's or the split)")
    parser.add_argument("--n-test", type=int_at_least(1), help="test images (default: the budget's or the split)")
    parser.add_argument("--n-iters", type=int_at_least(1), help="slot-attention iterations (App. H ablation: 5)")
    parser.add_argument("--init", choices=("learned", "per_slot"),
                        help="slot initialization: learned Gaussian, or one learned vector per slot (App. H)")
    parser.add_argument("--normalize-plan", action="store_true",
                        help="normalize OT plans over the inputs (default: the raw plan, as the official code)")
    parser.add_argument("--plain", action="store_true",
                        help="plain float32 eager model (no bf16 autocast, channels-last or factored decoder layer)")


def options_from_args(args) -> dict:
    """The :class:`ObjectDiscoveryConfig` fields given on the command line."""
    names = {"data_dir": "data_dir", "data_variant": "data_variant", "resolution": "resolution",
             "n_train": "n_train", "n_test": "n_test", "n_iters": "n_iters", "init": "init"}
    options = {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None}
    if args.normalize_plan:
        options["normalize_plan"] = True
    if args.plain:
        options["fast"] = False
    return options


def paper_budget(n_train: int) -> Budget:
    """The paper's schedule (App. F.3 and the official configuration): 530 epochs of ``n_train`` images at batch
    64 and 64x64, Adam 4e-4, warm-up 10k steps, halved every 100k steps counted from step 0, gradient norm
    clipped at 0.1. For a GPU."""
    return Budget(steps=530 * (n_train // 64), batch_size=64, lr=4e-4, warmup_steps=10_000, decay_rate=0.5,
                  decay_steps=100_000, grad_clip=0.1, eval_every=10_000, ckpt_every=2_000,
                  overrides={"resolution": 64}, note="the paper's 530 epochs at 64x64, for a GPU")


def command(task: Task, argv=None) -> int:
    """``python -m tasks.<task>``: the runner's command line (``tasks.runner.main``) of an object-discovery
    task. Exit status: 0 on success, 2 for bad arguments, bad input data or an unusable run folder (nothing is
    written then), 130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues)."""
    return runner.main(task, argv, f"Object discovery on {task.name}: trains the variants and prints FG-ARI, "
                                   "FG-mIoU and MSE next to the paper's figures, with the fixed-regions baseline.")


def make_task(name: str, config: type, ds: ImageDataset, paper: Callable[[Any], Mapping], paper_label: str,
              budgets: Mapping[str, Budget], data_variants: tuple[str, ...]) -> Task:
    """The runner spec of an image object-discovery task (module docstring). ``config`` is the task's
    subclass of :class:`ObjectDiscoveryConfig`; ``paper`` and the functions of ``ds`` must be module-level
    (the spec is pickled to worker processes)."""
    return Task(
        name=name, config=config, variants=VARIANT_NAMES, default_variants=("sa", "sa-sh", "sa-mesh"),
        load_train=functools.partial(_load_train, ds), load_test=functools.partial(_load_test, ds),
        build=functools.partial(_build, ds), loss=reconstruction_loss, evaluate=_evaluate, metrics=METRICS,
        paper=paper, paper_label=paper_label, budgets=budgets,
        default_budget="paper" if torch.cuda.is_available() else "cpu",
        describe=functools.partial(_describe, ds), aggregate="mean", baselines=functools.partial(_baselines, ds),
        after_train=functools.partial(_after_train, ds), model_config=functools.partial(_model_config, ds),
        validate=_validate, add_arguments=functools.partial(add_arguments, data_variants=data_variants),
        options_from_args=options_from_args, plot_file="fg_ari_vs_steps.png", prepare=functools.partial(prepare, ds),
        model_kind="slot_autoencoder")


def show_runs(task: Task, ds: ImageDataset, run: str | Path, num: int = 4, out: str | Path | None = None) -> list[Path]:
    """Draw :func:`save_examples` for trained runs of ``task``: ``run`` is a run folder (with ``ckpt.pt``) or an
    experiment folder (every ``<variant>/seed<s>/ckpt.pt`` below it). Each picture shows the first ``num``
    test images and goes to ``<run folder>/examples.png``, or to ``out`` (a folder) as
    ``<variant>_seed<s>.png``. Returns the paths written.

    Raises:
        ValueError (``CheckpointError``) for a folder without checkpoints or a checkpoint of another task.
    """
    run = Path(run)
    if (run / CHECKPOINT_NAME).is_file():
        ckpts = [run / CHECKPOINT_NAME]
    else:
        ckpts = sorted(run.glob(f"*/seed*/{CHECKPOINT_NAME}"))
    if not ckpts:
        raise ValueError(f"no {CHECKPOINT_NAME} in {run} or in its <variant>/seed<s>/ folders")
    written = []
    for path in ckpts:
        trained = load_run(path.parent)
        if trained.task.name != task.name:
            raise ValueError(f"{path} is a checkpoint of task {trained.task.name!r}, not {task.name!r}")
        test = load_split(ds, "test", trained.config)
        name = VARIANT_NAMES.get(trained.variant, trained.variant)
        target = path.parent / EXAMPLES if out is None else Path(out) / f"{trained.variant}_seed{trained.seed}.png"
        torch.manual_seed(0)
        written.append(save_examples(
            trained.model, test, target, indices=range(min(num, len(test))),
            title=f"{ds.title}, {name}, seed {trained.seed}, step {trained.step}: input, reconstruction, attention x "
                  "input | ground truth, segmentation, alpha mask x input"))
    return written


def show_command(argv, name: str, load_samples: Callable[[Any], SceneData],
                 spec: Callable[[], tuple[Task, ImageDataset]],
                 add_arguments: Callable[[Any], None] | None = None) -> int:
    """``python -m tasks.<name>.show``: without ``--run``, a grid of data samples (``load_samples(args)``, see
    ``tasks.scenes.show``); with ``--run DIR``, :func:`show_runs` for the task ``spec()`` returns (imported
    only then). Returns the exit status (2 for a folder without runs of the task)."""
    parser = show_parser(name)
    parser.set_defaults(out=None)
    parser.add_argument("--run", help="draw the trained runs of this run folder or experiment folder, on the first "
                                      "--num test images, into each run folder (or into --out, a folder)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.run is not None:
        task, ds = spec()
        try:
            paths = show_runs(task, ds, args.run, num=args.num, out=args.out)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("\n".join(f"wrote {p}" for p in paths))
        return 0
    data = load_samples(args)
    out = save_grid(data.images[:args.num], data.masks[:args.num], args.out or f"{name}_samples.png",
                    ncols=args.ncols)
    print(f"wrote {out} ({min(args.num, len(data))} samples, {data.meta.get('source')})")
    return 0
