"""CLEVRER-S / CLEVRER-L two-frame data (Sec. 5.4, App. F.4): one entry point for generated and real data.

``load_clevrer(variant, split)`` returns the generated pairs of ``tasks.clevrer.generate`` (the embedded
default, cached) or, with ``data_dir``, the real CLEVRER videos and mask proposals read by
``tasks.clevrer.real.load_clevrer_real``. Either way: images uint8 (N, 2, 3, 64, 64) and masks uint8
(N, 2, 64, 64) with 0 = background and an object's index the same in both frames.
"""
from __future__ import annotations

from pathlib import Path

from ..pool import cores
from ..scenes import render as _renderer
from ..scenes.cache import cached
from ..scenes.records import SceneData
from .generate import GENERATOR_VERSION, IMAGE_SIZE, SPLITS, generate_clevrer
from .real import SPLIT_ALIASES, VARIANT_FRAMES, load_clevrer_real, official_video_ids

__all__ = ["load_clevrer", "Frames", "load_train", "load_test", "load_train_eval", "prepare"]


def load_clevrer(variant: str = "S", split: str = "train", data_dir: str | Path | None = None,
                 num_videos: int | None = None, seed: int = 0, cache_dir: str | Path | None = None,
                 workers: int = 1, progress: bool = True, **real_kwargs) -> SceneData:
    """CLEVRER-S ("S": frames 1 and 16) or CLEVRER-L ("L": frames 1 and 128) as SceneData.

    Args:
        variant: "S" or "L".
        split: "train", "validation" (or "val") or "test".
        data_dir: CLEVRER root folder for the real data; None = generated.
        num_videos: number of pairs (generated default: 10,000 / 5,000 / 5,000; real: all, or the first
            ``num_videos`` videos of the split).
        seed: generator seed (ignored for real data).
        cache_dir: cache folder (default: $SA_MESH_CACHE or ~/.cache/sa-mesh).
        workers: generator processes (the result does not depend on it).
        progress: show progress bars.
        real_kwargs: passed on to ``load_clevrer_real`` (size, crop, min_score, use_cache, video_ids).

    Returns:
        SceneData with images uint8 (N, 2, 3, 64, 64) and masks uint8 (N, 2, 64, 64).
    """
    if variant not in VARIANT_FRAMES:
        raise ValueError(f"variant must be one of {sorted(VARIANT_FRAMES)}, got {variant!r}")
    if split not in SPLIT_ALIASES:
        raise ValueError(f"split must be one of {sorted(SPLIT_ALIASES)}, got {split!r}")
    if num_videos is not None and num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    split = SPLIT_ALIASES[split]
    if data_dir is not None:
        return load_clevrer_real(data_dir, variant=variant, split=split, max_videos=num_videos,
                                 cache_dir=cache_dir, progress=progress, **real_kwargs)
    if real_kwargs:
        raise ValueError(f"options {sorted(real_kwargs)} apply to real data only (pass data_dir)")
    n = SPLITS[split][1] if num_videos is None else int(num_videos)
    params = {"variant": variant, "split": split, "num_videos": n, "seed": seed, "image_size": IMAGE_SIZE}
    arrays = cached(f"clevrer-{variant}-{split}", params, f"{GENERATOR_VERSION}+render{_renderer.RENDER_VERSION}",
                    lambda: generate_clevrer(n, variant, seed, split, workers=workers, progress=progress), cache_dir)
    return SceneData(arrays["images"], arrays["masks"], ids=[f"generated_{i:05d}" for i in range(n)],
                     meta={"source": "clevrer-generated", "variant": variant, "split": split, "seed": seed,
                           "frames": VARIANT_FRAMES[variant], "version": GENERATOR_VERSION})


# ---- the data of the experiment: ``cfg`` is a ``tasks.clevrer.experiment.ClevrerConfig`` (data, data_dir,
# n_train, n_test, data_seed) -------------------------------------------------------------------------------------


class Frames:
    """The training pairs as the training loop reads them: ``ds[idx]`` -> uint8 (b, 2, 3, H, W)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]


def _load_pairs(cfg, split: str, n: int | None, progress: bool = True):
    real = {} if cfg.data_dir is None else {"video_ids": official_video_ids(split)}
    return load_clevrer(cfg.data, split, data_dir=cfg.data_dir, num_videos=n, seed=cfg.data_seed,
                        workers=cores(), progress=progress, **real)


def load_train(cfg, seed: int) -> Frames:
    return Frames(_load_pairs(cfg, "train", cfg.n_train, progress=False).images)


def load_test(cfg):
    return _load_pairs(cfg, "test", cfg.n_test, progress=False)


def load_train_eval(cfg, seed: int):
    """The training pairs with their masks, for evaluation (the same for every seed)."""
    return _load_pairs(cfg, "train", cfg.n_train, progress=False)


def prepare(cfg, progress: bool) -> None:
    """Reads (generates or decodes, and caches) both splits, checking every file before any training."""
    for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
        data = _load_pairs(cfg, split, n, progress)
        want = (2, 3, 64, 64)
        if tuple(data.images.shape[1:]) != want:
            raise ValueError(f"CLEVRER-{cfg.data} {split} pairs are {tuple(data.images.shape[1:])}, the model "
                             f"needs (T, C, H, W) = {want}")
