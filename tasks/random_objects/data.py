"""Random-objects detection data (paper Sec. 5.1, App. F.1).

Each example is a multiset of k = 5 objects, 32-d vectors drawn from N(0, sigma^2 I), hidden among
h = 100 zero vectors at random positions; the target is the set of the k objects. The task is to copy
the objects into the slots. Smaller sigma is harder: objects become more alike, and more like the zero
background.

Storage is compact: only the objects (N, k, dim) and their positions (N, k) are kept, and the
(b, k + h, dim) inputs are assembled per batch, so the paper's 64,000 training examples take 41 MB
rather than the 860 MB of the full inputs.

Every split is a deterministic function of (split, seed): the generator is seeded with
``SeedSequence([seed, split id])``, so the training sets of different seeds, and the training and test
sets of one seed, never share a stream. The objects are drawn at unit scale and multiplied by sigma, so
two sigmas with the same seed give the same data up to scale.
"""
import math

import numpy as np
import torch

from kernels import check_int

__all__ = ["RandomObjects", "make_split", "SPLITS"]

SPLITS = {"train": 1, "test": 2}


class RandomObjects:
    """A random-objects data set (indexable by a batch of indices).

    Attributes:
        objects: (N, k, dim) float32, the objects (the targets).
        positions: (N, k) int64, where object j of example i sits among the k + h inputs.
        n_inputs: k + h, the number of input elements.
        sigma: the objects' standard deviation.
    """

    def __init__(self, objects: torch.Tensor, positions: torch.Tensor, n_inputs: int, sigma: float):
        if objects.dim() != 3 or positions.shape != objects.shape[:2]:
            raise ValueError(f"objects (N, k, dim) and positions (N, k) disagree: {tuple(objects.shape)}, "
                             f"{tuple(positions.shape)}")
        self.objects, self.positions, self.n_inputs, self.sigma = objects, positions, n_inputs, sigma

    def __len__(self) -> int:
        return self.objects.shape[0]

    def __getitem__(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """Assemble a batch.

        Args:
            idx: (b,) int64 tensor (or anything torch indexing accepts along the first dimension).

        Returns:
            x (b, k + h, dim) inputs (zeros except the k objects) and target (b, k, dim) objects.
        """
        obj = self.objects[idx]  # (b, k, dim)
        pos = self.positions[idx]  # (b, k)
        x = obj.new_zeros(obj.shape[0], self.n_inputs, obj.shape[2])
        x.scatter_(1, pos[:, :, None].expand(-1, -1, obj.shape[2]), obj)  # (b, k + h, dim)
        return x, obj


def make_split(split: str, n: int, sigma: float, seed: int = 0, n_objects: int = 5, n_background: int = 100,
               dim: int = 32) -> RandomObjects:
    """Generate a split of the random-objects data set.

    Args:
        split: "train" or "test" (the split is part of the generator's seed).
        n: number of examples N.
        sigma: standard deviation of the objects, > 0.
        seed: data seed, >= 0.
        n_objects: k, objects per example. n_background: h, zero vectors per example. dim: object size.

    Returns:
        :class:`RandomObjects` with N examples of k + h inputs.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    check_int(n, "n", 1)
    check_int(seed, "seed", 0)
    check_int(n_objects, "n_objects", 1)
    check_int(n_background, "n_background", 0)
    check_int(dim, "dim", 1)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    state = np.random.SeedSequence([seed, SPLITS[split]]).generate_state(2)
    gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    objects = torch.randn(n, n_objects, dim, generator=gen) * sigma
    n_inputs = n_objects + n_background
    # The first k entries of a uniformly random permutation of the k + h input slots.
    positions = torch.rand(n, n_inputs, generator=gen).argsort(dim=1)[:, :n_objects].contiguous()
    return RandomObjects(objects, positions, n_inputs, float(sigma))
