"""The image object-discovery task (Sec. 5.3, App. F.3, App. J) on its two data sets, Multi-dSprites (Table 3)
and ClevrTex (Table 4): the data wrapper, the model of a variant, the loss, the FG-ARI / FG-mIoU evaluation,
the fixed-regions baseline, the pictures, and :func:`make_task`, which turns a data set (:class:`ImageDataset`,
``tasks.object_discovery.datasets``) into a spec of the shared runner (``tasks.runner``). The task of each data
set keeps its own name, ``python -m tasks.multi_dsprites`` and ``python -m tasks.clevrtex``.

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

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from kernels import check_int
from slots import OTConfig, SlotAutoencoder, fg_ari, fg_miou, image_autoencoder_config, native_bf16, to_model_range
from slots.train import CHECKPOINT_NAME
from tasks.scenes.records import DataFormatError, SceneData, resize_images
from tasks.scenes.show import colorize_masks, show_parser, write_samples

from .. import runner
from ..options import OTOptions, option
from ..random_objects.model import DEFAULT_COSTS
from ..runner import Budget, Data, Metric, Report, Task
from ..runs import load_run

__all__ = ["ModelSpec", "ImageSet", "check_scenes", "build_model", "reconstruction_loss", "evaluate",
           "fixed_region_masks", "grid_regions", "evaluate_fixed_regions", "save_examples", "VARIANT_COSTS",
           "VARIANT_NAMES",
           "ObjectDiscoveryConfig", "ImageDataset", "make_task", "prepare", "load_split", "METRICS", "EXAMPLES",
           "show_runs", "show_command", "paper_budget", "command"]

# Cost of each variant, as the official MESH configuration (original_slot_attention: dot_prod; others: l2).
VARIANT_COSTS = DEFAULT_COSTS
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
            images = resize_images(images, resolution)
            masks = F.interpolate(masks[:, None], size=(resolution, resolution), mode="nearest-exact")[:, 0]
        self.images, self.masks = images.contiguous(), masks.contiguous()  # (N, 3, R, R), (N, R, R)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """idx (b,) int64 -> a training batch {"images": float (b, 3, R, R) in [-1, 1]}; the masks (``.masks``)
        are only read by the evaluation."""
        return {"images": to_model_range(self.images[idx])}


def build_model(spec: ModelSpec, variant: str, resolution: int, n_iters: int = 3, init: str = "learned",
                fast: bool = True, ot: OTConfig | None = None, cost: str | None = None) -> SlotAutoencoder:
    """The autoencoder of a variant ("sa", "sa-sh", "sa-emd", "sa-mesh") at ``resolution`` (module docstring).

    ``n_iters`` and ``init`` ("learned" or "per_slot") are App. H's ablations; ``fast=False`` is the plain
    float32 eager model (no bf16 autocast, channels-last or factored broadcast; with ``fast`` the bf16
    autocast is on only where bfloat16 is native, ``slots.native_bf16``); ``ot`` overrides the OT options
    (default: the official code's, with the raw plan); ``cost`` replaces the OT variants' cost.
    """
    if variant not in VARIANT_COSTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANT_COSTS)}")
    cfg = image_autoencoder_config(
        spec.n_slots, variant, VARIANT_COSTS[variant] if cost is None or variant == "sa" else cost,
        resolution=resolution, channels=spec.channels,
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
    check_int(n_regions, "n_regions", 1)
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


def grid_regions(n_regions: int, height: int, width: int) -> torch.Tensor:
    """A fixed partition of the image into a grid of ``n_regions`` blocks (rows <= columns, as square as
    ``n_regions`` allows): one-hot float (n_regions, height, width)."""
    rows = max(r for r in range(1, int(math.isqrt(n_regions)) + 1) if n_regions % r == 0)
    cols = n_regions // rows
    ys = torch.arange(height) * rows // height  # (H,) block row of each pixel row
    xs = torch.arange(width) * cols // width
    ids = ys[:, None] * cols + xs[None, :]  # (H, W)
    return F.one_hot(ids, n_regions).permute(2, 0, 1).float()


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
class ObjectDiscoveryConfig(OTOptions):
    """Data and model options of an image object-discovery task (each field's help says what it is); a data
    set's subclass (``tasks.object_discovery.datasets``) sets ``dataset`` (a key of ``datasets.DATASETS``) and
    declares ``data_variant`` with its default and choices."""

    dataset: ClassVar[str] = ""
    resolution: int = option(64, "image side the model sees (the data's native side or less: resized in memory)",
                             minimum=8)
    n_train: int | None = option(None, "training images; none: the whole split", minimum=1)
    n_test: int | None = option(None, "test images (the first of the test split); none: the whole split",
                                minimum=1)
    data_dir: str | None = option(None, "real data (see the data set's reader); none: the generated data")
    data_variant: str = option("", "the data set's variant")
    init: str = option("learned", "slot initialization: learned Gaussian, or one learned vector per slot "
                                  "(App. H)", choices=("learned", "per_slot"))
    normalize_plan: bool = False
    fast: bool = option(True, "the speed options (bf16 convolutions where native, channels-last, the factored "
                              "first decoder layer); --plain: the plain float32 eager model", flag="--plain")
    eval_batch: int = option(64, "images per forward pass in evaluation", minimum=1)

    def __post_init__(self):
        super().__post_init__()
        if self.dataset:
            self.data_set().check_variant(self.data_variant, self.data_dir)

    def data_set(self) -> ImageDataset:
        """The data set of these options (``datasets.DATASETS[dataset]``)."""
        from .datasets import DATASETS

        return DATASETS[self.dataset]

    def model_config(self, variant: str) -> dict:
        return _build(self, variant).config.to_dict()

    def train_size(self) -> int | None:
        return self.n_train or (self.data_set().sizes["train"] if self.dataset else None)


@dataclass(frozen=True)
class ImageDataset:
    """An image object-discovery data set: how it is read, the model's widths, the paper's figures and the
    training budgets.

    Attributes:
        name: the task's name (run folders, checkpoints, ``python -m tasks.<name>``).
        title: e.g. "Multi-dSprites". native: the images' side as read. max_objects: objects per image at most
            (the model has max_objects + 1 slots).
        read: ``(split, num_images, cfg) -> SceneData``, a module-level function (runs are pickled to workers).
        sizes: split -> number of images of the generated or real split.
        spec: the model widths (:class:`ModelSpec`).
        generated_variants, real_variants: the ``data_variant`` values of the generated and the real data; the
            paper's figures are those of the first real one.
        paper: the paper's figures of that variant. paper_label: where they come from.
        budgets: name -> :class:`tasks.runner.Budget`.
        config: the data set's :class:`ObjectDiscoveryConfig` subclass.
        samples: ``(args of python -m tasks.<name>.show) -> SceneData``, the samples drawn without ``--run``.
    """

    name: str
    title: str
    native: int
    max_objects: int
    read: Callable[[str, int | None, Any], SceneData]
    sizes: Mapping[str, int]
    spec: ModelSpec
    generated_variants: tuple[str, ...]
    real_variants: tuple[str, ...]
    paper: Mapping[str, Mapping]
    paper_label: str
    budgets: Mapping[str, Budget]
    config: type
    samples: Callable[[Any], SceneData]

    def check_variant(self, variant: str, data_dir: str | None) -> None:
        """ValueError unless ``variant`` is a variant of the generated (``data_dir`` None) or the real data."""
        allowed = self.generated_variants if data_dir is None else self.real_variants
        if variant not in allowed:
            data = "generated" if data_dir is None else "real"
            hint = "; it needs --data-dir (the real data)" if data_dir is None and variant in self.real_variants else ""
            raise ValueError(f"data_variant must be one of {', '.join(allowed)} for the {data} {self.title} data, "
                             f"got {variant!r}{hint}")


_LOADED: dict[str, ImageSet] = {}  # the splits this process has read, by (data set, split, options)


def load_split(split: str, cfg: ObjectDiscoveryConfig) -> ImageSet:
    """A checked split at the run's resolution (``n_train`` / ``n_test`` images of "train" / "test"); read once
    per process (the runner asks for the test split for every run, and for the train split in ``prepare``)."""
    key = json.dumps([cfg.dataset, split, asdict(cfg)], sort_keys=True)
    if key not in _LOADED:
        _LOADED[key] = _read_split(cfg.data_set(), split, cfg)
    return _LOADED[key]


def _read_split(ds: ImageDataset, split: str, cfg: ObjectDiscoveryConfig) -> ImageSet:
    n = cfg.n_train if split == "train" else cfg.n_test
    data = ds.read(split, n, cfg)
    source = f"{ds.title} {split} split ({cfg.data_dir or 'generated'})"
    check_scenes(data, ds.native, ds.max_objects, source)
    if cfg.resolution > ds.native:
        raise ValueError(f"resolution {cfg.resolution} exceeds the data's {ds.native}x{ds.native} images")
    return ImageSet(data, cfg.resolution)


def prepare(cfg: ObjectDiscoveryConfig, progress: bool = True) -> None:
    """Read and check both splits (the readers cache them), so that bad input stops the runner before any run
    folder is written or a worker starts (the runner's ``Data.prepare``)."""
    for split in ("train", "test"):
        load_split(split, cfg)


def _load_train(cfg: ObjectDiscoveryConfig, seed: int) -> ImageSet:
    return load_split("train", cfg)  # the same images for every seed


def _load_test(cfg: ObjectDiscoveryConfig) -> ImageSet:
    return load_split("test", cfg)


def _build(cfg: ObjectDiscoveryConfig, variant: str) -> SlotAutoencoder:
    return build_model(cfg.data_set().spec, variant, cfg.resolution, n_iters=cfg.n_iters, init=cfg.init,
                       fast=cfg.fast, ot=cfg.ot_config(variant), cost=cfg.cost)


def _evaluate(model, test: ImageSet, cfg: ObjectDiscoveryConfig) -> dict:
    return evaluate(model, test, cfg.eval_batch)


def _baselines(cfg: ObjectDiscoveryConfig, test: ImageSet) -> dict:
    k = cfg.data_set().max_objects + 1
    return {f"fixed regions ({k} k-means cells)": evaluate_fixed_regions(test, k)}


def _title(cfg: ObjectDiscoveryConfig, variant: str, what: str) -> str:
    return (f"{cfg.data_set().title}, {VARIANT_NAMES.get(variant, variant)}, {what}: input, reconstruction, "
            "attention x input | ground truth, segmentation, alpha mask x input")


def _after_train(model, test: ImageSet, cfg: ObjectDiscoveryConfig, variant: str, run_dir: Path) -> None:
    save_examples(model, test, run_dir / EXAMPLES, indices=range(min(4, len(test))),
                  title=_title(cfg, variant, run_dir.name))


def _paper(cfg: ObjectDiscoveryConfig) -> dict:
    ds = cfg.data_set()
    return dict(ds.paper) if cfg.data_variant == ds.real_variants[0] else {}


def _paper_label(cfg: ObjectDiscoveryConfig) -> str:
    return cfg.data_set().paper_label


def _describe(cfg: ObjectDiscoveryConfig, budget: Budget, seeds: int) -> str:
    ds = cfg.data_set()
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


def paper_budget(n_train: int) -> Budget:
    """The paper's schedule (App. F.3 and the official configuration): 530 epochs of ``n_train`` images at batch
    64 and 64x64, Adam 4e-4, warm-up 10k steps, halved every 100k steps counted from step 0, gradient norm
    clipped at 0.1. For a GPU."""
    return Budget(steps=530 * (n_train // 64), batch_size=64, lr=4e-4, warmup_steps=10_000, decay_rate=0.5,
                  decay_steps=100_000, grad_clip=0.1, eval_every=10_000, ckpt_every=2_000,
                  overrides={"resolution": 64}, note="the paper's 530 epochs at 64x64, for a GPU")


def command(name: str, argv=None) -> int:
    """``python -m tasks.<name>``: the runner's command line (``tasks.runner.main``) of the object-discovery task
    of data set ``name``. Exit status: 0 on success, 2 for bad arguments, bad input data or an unusable run
    folder (nothing is written then), 130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues)."""
    from .datasets import TASKS

    return runner.main(TASKS[name], argv, f"Object discovery on {name}: trains the variants and prints FG-ARI, "
                                          "FG-mIoU and MSE next to the paper's figures, with the fixed-regions "
                                          "baseline.")


REPORT = Report(metrics=METRICS, paper=_paper, paper_label=_paper_label, describe=_describe, aggregate="mean",
                baselines=_baselines, after_train=_after_train, plot_file="fg_ari_vs_steps.png")


def make_task(ds: ImageDataset) -> Task:
    """The runner spec of the object-discovery task on data set ``ds`` (module docstring)."""
    return Task(
        name=ds.name, config=ds.config, variants=VARIANT_NAMES, default_variants=("sa", "sa-sh", "sa-mesh"),
        data=Data(load_train=_load_train, load_test=_load_test, prepare=prepare), build=_build,
        loss=reconstruction_loss, evaluate=_evaluate, report=REPORT, budgets=ds.budgets,
        default_budget="paper" if torch.cuda.is_available() else "cpu", model_kind="slot_autoencoder")


def show_runs(name: str, run: str | Path, num: int = 4, out: str | Path | None = None) -> list[Path]:
    """Draw :func:`save_examples` for trained runs of the task ``name``: ``run`` is a run folder (with ``ckpt.pt``)
    or an experiment folder (every ``<variant>/seed<s>/ckpt.pt`` below it). Each picture shows the first ``num``
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
        if trained.task.name != name:
            raise ValueError(f"{path} is a checkpoint of task {trained.task.name!r}, not {name!r}")
        test = load_split("test", trained.config)
        target = path.parent / EXAMPLES if out is None else Path(out) / f"{trained.variant}_seed{trained.seed}.png"
        torch.manual_seed(0)
        written.append(save_examples(trained.model, test, target, indices=range(min(num, len(test))),
                                     title=_title(trained.config, trained.variant,
                                                  f"seed {trained.seed}, step {trained.step}")))
    return written


def show_command(name: str, argv=None) -> int:
    """``python -m tasks.<name>.show``: without ``--run``, a grid of data samples of the data set ``name`` (the
    generator unless ``--data-dir`` points at the real data; ``tasks.scenes.show``); with ``--run DIR``,
    :func:`show_runs`. Returns the exit status (2 for a folder without runs of the task)."""
    from .datasets import DATASETS

    ds = DATASETS[name]
    parser = show_parser(name)
    parser.set_defaults(out=None)
    parser.add_argument("--run", help="draw the trained runs of this run folder or experiment folder, on the first "
                                      "--num test images, into each run folder (or into --out, a folder)")
    parser.add_argument("--variant", default=ds.real_variants[0], help="data variant of the samples")
    args = parser.parse_args(argv)
    if args.run is not None:
        try:
            paths = show_runs(name, args.run, num=args.num, out=args.out)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("\n".join(f"wrote {p}" for p in paths))
        return 0
    args.out = args.out or f"{name}_samples.png"
    return write_samples(ds.samples(args), args)
