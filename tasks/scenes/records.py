"""The typed record every scene loader returns, for the image and video experiments (Sec. 5.2-5.4, App. F).

``SceneData`` holds a whole split in memory: images as uint8 tensors, per-object index masks with 0 the
background and 1..K the objects (for video, an object keeps its index in every frame, which the temporal
consistency metric of App. F.4 relies on), and for CLEVR the per-object property targets with a presence
mask (App. F.2, DSPN-style). Generators and real-format readers both produce it, so training code does not
care where the data came from.

Also here: ``MissingDataError`` / ``DataFormatError`` and the ``require_dir`` / ``require_file`` helpers, so
that every reader's error names the file at fault.

Known limits: everything is held in memory (the largest set, 10k CLEVR images at 128x128, is ~0.5 GB).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

__all__ = ["SceneData", "MissingDataError", "DataFormatError", "require_dir", "require_file", "resize_images"]

_MASK_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


class MissingDataError(FileNotFoundError, ValueError):
    """A folder or file a reader needs does not exist; the message names it."""


class DataFormatError(ValueError):
    """A data file exists but its contents are not what the format promises; the message names the file."""


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is an existing folder, else MissingDataError naming ``what`` and the path."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise MissingDataError(f"{what}: folder {p} does not exist")
    return p


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is an existing file, else MissingDataError naming ``what`` and the path."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingDataError(f"{what}: file {p} does not exist")
    return p


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"SceneData.{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


@dataclass
class SceneData:
    """A split of a scene data set, all samples in memory.

    Fields (numpy arrays are accepted and converted to tensors without copying):
        images: uint8 (N, 3, H, W) for still images or (N, T, 3, H, W) for T video frames.
        masks: uint8/int16/int32/int64 (N, H, W) or (N, T, H, W) index maps; 0 = background, k >= 1 = the
            k-th object, the same k for the same object in every frame.
        targets: optional float (N, K, D) per-object property vectors (CLEVR; rows for absent objects are
            arbitrary, usually 0).
        presence: optional bool (N, K), True where ``targets[n, k]`` is a real object; required with
            ``targets`` (a 0/1 float or integer tensor is accepted and converted to bool).
        ids: optional per-sample identifiers (file names, video ids), length N; sliced with the data.
        meta: data-set-level information (source, split, generator version...), not sliced.

    Raises ValueError (naming the field) for wrong dtypes, ranks or inconsistent sizes.
    """

    images: torch.Tensor
    masks: torch.Tensor
    targets: torch.Tensor | None = None
    presence: torch.Tensor | None = None
    ids: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = _as_tensor(self.images, "images")
        self.masks = _as_tensor(self.masks, "masks")
        img, msk = self.images, self.masks
        if img.dtype != torch.uint8:
            raise ValueError(f"SceneData.images must be uint8, got {img.dtype}")
        if img.dim() not in (4, 5) or img.shape[-3] != 3:
            raise ValueError("SceneData.images must have shape (N, 3, H, W) or (N, T, 3, H, W), "
                             f"got {tuple(img.shape)}")
        if msk.dtype not in _MASK_DTYPES:
            raise ValueError(f"SceneData.masks must be an integer index map (uint8/int16/int32/int64), got {msk.dtype}")
        want = img.shape[:-3] + img.shape[-2:]
        if tuple(msk.shape) != tuple(want):
            raise ValueError(f"SceneData.masks shape {tuple(msk.shape)} does not match images {tuple(img.shape)}; "
                             f"expected {tuple(want)}")
        if msk.numel() and msk.dtype != torch.uint8 and int(msk.min()) < 0:
            raise ValueError("SceneData.masks has negative indices; 0 is the background and objects are 1..K")
        if (self.targets is None) != (self.presence is None):
            raise ValueError("SceneData.targets and SceneData.presence must be given together")
        if self.targets is not None:
            self.targets = _as_tensor(self.targets, "targets")
            self.presence = _as_tensor(self.presence, "presence")
            t, p = self.targets, self.presence
            if not t.is_floating_point():
                raise ValueError(f"SceneData.targets must be a float tensor, got {t.dtype}")
            if t.dim() != 3 or t.shape[0] != img.shape[0]:
                raise ValueError(f"SceneData.targets must have shape (N={img.shape[0]}, K, D), got {tuple(t.shape)}")
            if tuple(p.shape) != tuple(t.shape[:2]):
                raise ValueError(f"SceneData.presence must have shape {tuple(t.shape[:2])} (N, K), "
                                 f"got {tuple(p.shape)}")
            if p.dtype != torch.bool:
                if p.numel() and not bool(((p == 0) | (p == 1)).all()):
                    raise ValueError("SceneData.presence must hold only 0/1 (or be a bool tensor)")
                self.presence = p != 0
        if self.ids is not None:
            self.ids = [str(i) for i in self.ids]
            if len(self.ids) != img.shape[0]:
                raise ValueError(f"SceneData.ids has {len(self.ids)} entries for {img.shape[0]} samples")
        if not isinstance(self.meta, dict):
            raise ValueError(f"SceneData.meta must be a dict, got {type(self.meta).__name__}")

    # ---- shape information -------------------------------------------------------------------------------
    @property
    def is_video(self) -> bool:
        """True for (N, T, 3, H, W) images."""
        return self.images.dim() == 5

    @property
    def num_frames(self) -> int:
        """T for video, 1 for still images."""
        return self.images.shape[1] if self.is_video else 1

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return tuple(self.images.shape[-2:])

    def max_objects(self) -> int:
        """The largest object index present in ``masks`` (0 if there are no objects)."""
        return int(self.masks.max()) if self.masks.numel() else 0

    def num_objects(self) -> torch.Tensor:
        """int64 (N,) or (N, T): number of distinct non-zero indices in each image / frame."""
        flat = self.masks.reshape(*self.masks.shape[:-2], -1).long()  # (N, [T,] H*W)
        k = self.max_objects()
        present = torch.zeros(*flat.shape[:-1], k + 1, dtype=torch.bool)
        present.scatter_(-1, flat, True)  # (N, [T,] K+1): which indices occur
        return present[..., 1:].sum(-1)

    # ---- access -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray | torch.Tensor):
        """An int gives one sample as a dict of unbatched tensors (``image`` (3, H, W) or (T, 3, H, W),
        ``mask`` (H, W) or (T, H, W), and ``target`` (K, D) / ``presence`` (K,) when present), so a
        SceneData can serve as a ``torch.utils.data.Dataset``. A slice, an index sequence or a bool/int
        tensor gives a SceneData of those samples."""
        if isinstance(index, (int, np.integer)):
            n = len(self)
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"sample index {i} out of range for {n} samples")
            item = {"image": self.images[i], "mask": self.masks[i]}
            if self.targets is not None:
                item["target"] = self.targets[i]
                item["presence"] = self.presence[i]
            return item
        if isinstance(index, slice):
            sel = index
            ids = self.ids[index] if self.ids is not None else None
        else:
            if not isinstance(index, torch.Tensor):
                index = np.asarray(index)
                if index.size == 0:
                    index = index.astype(np.int64)
            sel = torch.as_tensor(index)
            if sel.dtype == torch.bool:
                if sel.shape != (len(self),):
                    raise ValueError(f"bool index must have shape ({len(self)},), got {tuple(sel.shape)}")
                sel = sel.nonzero().flatten()
            if sel.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or sel.dim() != 1:
                raise ValueError(f"index must be an int, a slice or a 1-d integer/bool sequence, got {index!r}")
            sel = sel.long()
            ids = [self.ids[i] for i in sel.tolist()] if self.ids is not None else None
        return SceneData(
            images=self.images[sel], masks=self.masks[sel],
            targets=self.targets[sel] if self.targets is not None else None,
            presence=self.presence[sel] if self.presence is not None else None,
            ids=ids, meta=dict(self.meta))

    def batches(self, batch_size: int, shuffle: bool = False, seed: int | None = None,
                drop_last: bool = False) -> Iterator["SceneData"]:
        """Yield consecutive SceneData batches of ``batch_size`` samples (the last may be smaller unless
        ``drop_last``); with ``shuffle``, in a random order drawn from ``torch.Generator`` seeded by ``seed``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        if shuffle:
            g = torch.Generator()
            g.manual_seed(0 if seed is None else seed)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self[order[start:start + batch_size]]

    # ---- conversions ------------------------------------------------------------------------------------
    def to_onehot_masks(self, max_objects: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """One-hot masks (N, [T,] K+1, H, W) with K = ``max_objects``; channel 0 is the background.

        Raises ValueError if some mask index exceeds ``max_objects``.
        """
        if max_objects < 0:
            raise ValueError(f"max_objects must be >= 0, got {max_objects}")
        k = self.max_objects()
        if k > max_objects:
            raise ValueError(f"masks contain object index {k}, more than max_objects={max_objects}")
        idx = self.masks.long().unsqueeze(-3)  # (N, [T,] 1, H, W)
        out = torch.zeros(*self.masks.shape[:-2], max_objects + 1, *self.masks.shape[-2:], dtype=dtype)
        return out.scatter_(-3, idx, 1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fields as numpy arrays (``images``, ``masks``, and ``targets``/``presence``/``ids`` when set),
        the form ``tasks.scenes.cache.cached`` stores; ``ids`` becomes a unicode array."""
        out = {"images": self.images.numpy(), "masks": self.masks.numpy()}
        if self.targets is not None:
            out["targets"] = self.targets.numpy()
            out["presence"] = self.presence.numpy()
        if self.ids is not None:
            out["ids"] = np.asarray(self.ids, dtype=str)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict | None = None) -> "SceneData":
        """Inverse of ``to_arrays``."""
        missing = {"images", "masks"} - set(arrays)
        if missing:
            raise ValueError(f"SceneData.from_arrays: missing arrays {sorted(missing)}")
        ids = arrays.get("ids")
        return cls(images=arrays["images"], masks=arrays["masks"], targets=arrays.get("targets"),
                   presence=arrays.get("presence"), ids=None if ids is None else ids.tolist(),
                   meta=dict(meta or {}))

    @classmethod
    def concat(cls, parts: Sequence["SceneData"]) -> "SceneData":
        """Concatenate along N. All parts must agree on shapes except N, and on having targets/ids;
        ``meta`` is taken from the first part."""
        if not parts:
            raise ValueError("SceneData.concat needs at least one part")
        has_t = {p.targets is not None for p in parts}
        has_i = {p.ids is not None for p in parts}
        if len(has_t) > 1 or len(has_i) > 1:
            raise ValueError("SceneData.concat: parts disagree on having targets or ids")
        try:
            return cls(
                images=torch.cat([p.images for p in parts]),
                masks=torch.cat([p.masks for p in parts]),
                targets=torch.cat([p.targets for p in parts]) if parts[0].targets is not None else None,
                presence=torch.cat([p.presence for p in parts]) if parts[0].presence is not None else None,
                ids=[i for p in parts for i in p.ids] if parts[0].ids is not None else None,
                meta=dict(parts[0].meta))
        except RuntimeError as e:
            raise ValueError(f"SceneData.concat: parts have incompatible shapes or dtypes ({e})") from e


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (antialiased, as PIL's) of uint8 images (N, 3, H, W) to uint8 (N, 3, size, size),
    rounded; the images themselves when they already have that size. Works in chunks of 1,024 images."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"need uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if tuple(images.shape[2:]) == (size, size):
        return images
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, len(images), 1024):
        chunk = images[start:start + 1024].float()
        small = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False)
        out[start:start + 1024] = small.round_().clamp_(0, 255).to(torch.uint8)
    return out
