"""Hungarian-matched set losses for set prediction (paper App. F.1 and F.2).

The prediction and the target are unordered sets, so the loss first finds the least-cost one-to-one
matching between predicted and target elements (the Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``) and then averages the error over the matched pairs: the squared
error (``hungarian_mse_loss``, random objects) or the Huber loss (``hungarian_huber_loss``, CLEVR, as
Locatello et al. (2020) train set prediction); the matching minimizes the same error.
The pairwise costs are computed for the whole batch at once in torch; only the assignment itself runs on
the CPU. Gradients flow through the matched costs; the matching itself is piecewise constant and carries
none.

Padded targets (CLEVR has up to ten objects per scene) are excluded with a presence mask: they take no
part in the matching and add nothing to the loss. Predictions left unmatched (more slots than present
targets) add nothing either. To train a "this slot is empty" output as Locatello et al. (2020) and DSPN
do, pad the targets with an explicit absent-object vector instead and pass no mask, so that every slot is
matched.

The assignment of small sets (at most ``EXHAUSTIVE_MAX`` one-to-one maps, e.g. the 5 x 5 problems of the
random-objects task) tries every map for the whole batch at once in numpy; larger ones (CLEVR's 10 x 10)
call scipy per batch element. The loss's gradient is formed for the matched pairs only.

Known limits: the scipy path is a Python loop over the batch (fine for the tens of elements per set of
the paper's tasks; it is not meant for sets of thousands of elements).
"""
import functools
import itertools
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["pairwise_mse", "pairwise_huber", "hungarian_match", "hungarian_mse_loss", "hungarian_huber_loss"]


def _check_sets(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Validate (pred, target, mask) and return the mask as a bool tensor (B, k)."""
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape (B, set size, D), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if pred.shape[0] != target.shape[0]:
        raise ValueError(f"pred and target batch sizes differ: {pred.shape[0]} vs {target.shape[0]}")
    if pred.shape[2] != target.shape[2]:
        raise ValueError(f"pred and target element sizes differ: {pred.shape[2]} vs {target.shape[2]}")
    if pred.shape[2] == 0:
        raise ValueError("elements must have at least one feature (D >= 1)")
    B, k = target.shape[:2]
    if mask is None:
        mask = torch.ones(B, k, dtype=torch.bool, device=target.device)
    else:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, k):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a tensor of shape (B, k) = {(B, k)}, got {shape}")
        mask = mask.to(device=target.device, dtype=torch.bool)
    n_present = mask.sum(1)
    too_many = n_present > pred.shape[1]
    if too_many.any():
        i = int(too_many.nonzero()[0, 0])
        raise ValueError(
            f"batch element {i} has {int(n_present[i])} present targets but only {pred.shape[1]} predictions; "
            "every present target needs its own prediction"
        )
    return mask


def pairwise_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of every (target, prediction) pair.

    Args:
        pred: (B, m, D) predicted elements.
        target: (B, k, D) target elements.

    Returns:
        (B, k, m) costs; entry [b, i, j] is ``((target[b, i] - pred[b, j]) ** 2).mean()``.
    """
    return _pairwise_diff(pred, target).pow(2).mean(3)


def _pairwise_diff(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (B, m, D), target (B, k, D) -> (B, k, m, D) differences target - pred of every pair."""
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape (B, set size, D), got {shape}")
    if pred.shape[0] != target.shape[0] or pred.shape[2] != target.shape[2]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must share B and D")
    return target[:, :, None, :] - pred[:, None, :, :]


def pairwise_huber(pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Mean Huber loss of every (target, prediction) pair.

    Huber(d) = d^2 / 2 for |d| <= delta, delta (|d| - delta / 2) beyond (``torch.nn.functional.huber_loss``).

    Args:
        pred: (B, m, D) predicted elements. target: (B, k, D) target elements. delta: > 0.

    Returns:
        (B, k, m) costs; entry [b, i, j] is the mean over the D features of Huber(target[b, i] - pred[b, j]).
    """
    if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not delta > 0 or delta == float("inf"):
        raise ValueError(f"delta must be a finite number > 0, got {delta!r}")
    diff = _pairwise_diff(pred, target).abs()  # (B, k, m, D)
    quadratic = diff.clamp(max=delta)
    return (quadratic * (diff - quadratic / 2)).mean(3)  # d^2/2 inside, delta (|d| - delta/2) outside


# Exhaustive search is used where it visits at most this many assignments (m! / (m - k)!: 120 for Table 1's
# 5 x 5 problems, 720 for 6 x 6); beyond, scipy's Hungarian algorithm per batch element.
EXHAUSTIVE_MAX = 720


@functools.lru_cache(maxsize=None)
def _injections(k: int, m: int) -> np.ndarray:
    """Every one-to-one map of k targets to m >= k predictions: (m! / (m - k)!, k) int64, row p maps target i
    to prediction [p, i]."""
    maps = np.array(list(itertools.permutations(range(m), k)), dtype=np.int64).reshape(-1, k)
    maps.setflags(write=False)  # shared by every call (cached)
    return maps


def _assign_exhaustive(cost: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-cost assignment of every batch element at once by trying every one-to-one map (small k, m).

    Absent targets get cost 0 on every prediction, so they do not change which map is best for the present
    ones. Among maps of equal total cost the first in ``_injections``' order is returned (scipy may return
    another one of the same cost).

    Args:
        cost: (B, k, m) float64, rows are targets. mask: (B, k) bool, True for present targets.

    Returns:
        (B, k) int64: the prediction matched to each target, -1 for absent targets.
    """
    k = cost.shape[1]
    maps = _injections(k, cost.shape[2])  # (P, k)
    cost = np.where(mask[:, :, None], cost, 0.0)
    totals = cost[:, np.arange(k), maps].sum(2)  # (B, P): the total cost of every map
    out = maps[totals.argmin(1)]  # (B, k)
    out[~mask] = -1
    return out


def _assign_hungarian(cost: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """As :func:`_assign_exhaustive`, one ``scipy.optimize.linear_sum_assignment`` per batch element."""
    out = np.full(mask.shape, -1, dtype=np.int64)
    for b in range(cost.shape[0]):
        rows = np.nonzero(mask[b])[0]
        if rows.size == 0:
            continue
        r, c = linear_sum_assignment(cost[b, rows])
        out[b, rows[r]] = c
    return out


def _assign(cost: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Least-cost assignment of present targets to predictions: exhaustive search over every one-to-one map
    for the whole batch at once where there are at most ``EXHAUSTIVE_MAX`` of them, else scipy's Hungarian
    algorithm per batch element. Both are exact; they may pick different matchings of equal cost (ties).

    Args:
        cost: (B, k, m) costs, rows are targets, columns are predictions.
        mask: (B, k) bool, True for present targets.

    Returns:
        (B, k) int64 on ``cost.device``: the prediction matched to each target, -1 for absent targets.
    """
    cost_np = cost.detach().to("cpu", torch.float64).numpy()
    mask_np = mask.cpu().numpy()
    if not np.isfinite(cost_np).all():
        b = int(np.nonzero(~np.isfinite(cost_np).reshape(len(cost_np), -1).all(1))[0][0])
        raise ValueError(f"matching costs contain NaN or Inf (batch element {b}); check pred and target")
    k, m = cost_np.shape[1:]
    small = k <= m and math.perm(m, k) <= EXHAUSTIVE_MAX
    out = (_assign_exhaustive if small else _assign_hungarian)(cost_np, mask_np)
    return torch.from_numpy(out).to(cost.device)


def hungarian_match(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Least-MSE one-to-one matching of targets to predictions (no gradient).

    Args:
        pred: (B, m, D) predicted elements.
        target: (B, k, D) target elements; at most m of them present per batch element.
        mask: optional (B, k) bool, True where the target is present (padding is False).

    Returns:
        (B, k) int64: index into the m predictions matched to each target, -1 for absent targets.

    Raises:
        ValueError for mismatched shapes, a mask of the wrong shape, more present targets than
        predictions, or non-finite costs.
    """
    mask = _check_sets(pred, target, mask)
    with torch.no_grad():
        cost = pairwise_mse(pred, target)  # (B, k, m)
    return _assign(cost, mask)


def hungarian_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                       reduction: str = "mean") -> torch.Tensor:
    """Hungarian-matched mean squared error between two sets (App. F.1).

    Every (target, prediction) pair gets its MSE over the D features; the least-cost matching is found
    for every batch element (exactly: see :func:`_assign`); the loss is the mean of the matched
    pairs' MSEs. Gradients reach ``pred`` (and ``target``) through the matched pairs.

    Args:
        pred: (B, m, D) predicted elements.
        target: (B, k, D) target elements, k <= m present per batch element.
        mask: optional (B, k) bool, True where the target is present. Absent targets are not matched
            and add nothing.
        reduction: "mean": one scalar, the mean over all matched pairs of the batch (every matched pair
            weighs the same, so batch elements with more objects weigh more). "none": (B,) per batch
            element, the mean over its own matched pairs (0 where it has no present target).

    Returns:
        () or (B,) tensor, see ``reduction``.
    """
    return _matched_mean(pairwise_mse, pred, target, mask, reduction)


def hungarian_huber_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                         reduction: str = "mean", delta: float = 1.0) -> torch.Tensor:
    """Hungarian-matched Huber loss between two sets (App. F.2, Locatello et al.'s set-prediction loss).

    As :func:`hungarian_mse_loss` with :func:`pairwise_huber` (mean over the D features) as the cost of a
    pair, for the matching and for the loss. Locatello et al. sum the matched pairs of an example and
    average over the batch; with every slot matched (no mask, k = m) that is m times the "mean" here.

    Args:
        pred: (B, m, D). target: (B, k, D), k <= m present per batch element. mask: optional (B, k) bool.
        reduction: "mean" or "none", as :func:`hungarian_mse_loss`. delta: Huber's threshold, > 0.

    Returns:
        () or (B,) tensor, see ``reduction``.
    """
    return _matched_mean(lambda p, t: pairwise_huber(p, t, delta), pred, target, mask, reduction)


def _matched_mean(pairwise, pred, target, mask, reduction: str) -> torch.Tensor:
    """The mean of ``pairwise(pred, target)`` (B, k, m) over the least-cost matched pairs (see
    :func:`hungarian_mse_loss` for ``mask`` and ``reduction``)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    mask = _check_sets(pred, target, mask)
    with torch.no_grad():
        idx = _assign(pairwise(pred, target), mask)  # (B, k); costs (B, k, m): rows are targets
    B, k, D = target.shape
    # the cost of each matched pair alone, with gradient: pairwise on B k sets of one element each
    paired = pred.gather(1, idx.clamp_min(0)[:, :, None].expand(B, k, D))  # (B, k, D)
    matched = pairwise(paired.reshape(B * k, 1, D), target.reshape(B * k, 1, D)).view(B, k)
    matched = torch.where(mask, matched, torch.zeros_like(matched))
    counts = mask.sum(1)  # (B,)
    if reduction == "none":
        return matched.sum(1) / counts.clamp_min(1).to(matched.dtype)
    total = counts.sum()
    if int(total) == 0:
        raise ValueError("no present targets in the batch: the mean over matched pairs is undefined")
    return matched.sum() / total.to(matched.dtype)
