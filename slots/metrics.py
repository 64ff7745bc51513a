"""Evaluation metrics of the paper's five experiments.

* :func:`normalized_hungarian_rmse`: random-objects detection (Table 1): the RMSE of the
  Hungarian-matched (prediction, target) pairs divided by the objects' standard deviation sigma, so that
  always predicting zeros scores about 1.
* :func:`clevr_average_precision`: CLEVR property prediction (Table 2), average precision at distance
  thresholds as defined by DSPN (Zhang et al., 2019) and used by Locatello et al. (2020) and iDSPN.
* :func:`fg_ari`, :func:`fg_miou`: object discovery on Multi-dSprites, ClevrTex and CLEVRER (Tables 3-5):
  the adjusted Rand index over foreground pixels, and the mean IoU of ground-truth objects after a
  Hungarian matching of predicted to ground-truth masks that maximizes IoU (App. F.3).
* :func:`temporal_consistency`: CLEVRER (Table 5, App. F.3/F.4): after the same per-frame matching, the
  fraction of objects present in every frame that are captured by the same slot in every frame.

Mask conventions (all mask metrics):
    gt: integer index map (B, H, W) for images or (B, T, H, W) for videos; 0 is background and 1..K are
        objects. In videos an object keeps its index in every frame.
    pred: per-slot masks (B, n_slots, H, W) or (B, T, n_slots, H, W), soft (alpha masks, logits or
        probabilities); every pixel is assigned to its argmax slot.
    Image metrics return one value per image (B,) and, for videos, one per frame (B, T), as the official
    code evaluates CLEVRER frame by frame; frames without any object give NaN, so average with
    ``torch.nanmean``.

Known limits: the Hungarian matchings are Python loops over images (scipy on the CPU); the contingency
tables behind them are computed for the whole batch at once with ``torch.bincount``.
"""
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .losses import hungarian_mse_loss

__all__ = [
    "normalized_hungarian_rmse",
    "clevr_average_precision",
    "CLEVR_AP_THRESHOLDS",
    "fg_ari",
    "fg_miou",
    "temporal_consistency",
    "plan_entropy",
]

CLEVR_AP_THRESHOLDS = (math.inf, 1.0, 0.5, 0.25, 0.125, 0.0625)


def normalized_hungarian_rmse(pred: torch.Tensor, target: torch.Tensor, sigma: float,
                              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hungarian-matched RMSE divided by sigma (Table 1).

    The matching is the least-MSE one of :func:`slots.losses.hungarian_mse_loss`; the RMSE is the square
    root of the mean squared error over all matched pairs and all features of the batch (pass the whole
    test set at once, or average the losses of equal-size batches before taking the root).

    Args:
        pred: (B, m, D) predictions. target: (B, k, D) targets, k <= m present per element.
        sigma: the standard deviation of the target objects, > 0.
        mask: optional (B, k) bool presence mask of the targets.

    Returns:
        () tensor, no gradient.
    """
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    with torch.no_grad():
        return hungarian_mse_loss(pred, target, mask).sqrt() / sigma


def _as_numpy(name: str, x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} cannot be read as an array of {np.dtype(dtype).name}: {e}") from None


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision-recall curve with every-point interpolation (PASCAL VOC 2010+).

    Args:
        recall, precision: (N,) values after each ranked detection, recall non-decreasing.
    """
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope: best precision at any recall >= r
    steps = np.nonzero(r[1:] != r[:-1])[0] + 1
    return float(np.sum((r[steps] - r[steps - 1]) * p[steps]))


def clevr_average_precision(pred_coords, pred_attrs, pred_conf, target_coords, target_attrs, target_mask,
                            thresholds=CLEVR_AP_THRESHOLDS, coord_scale: float = 1.0) -> dict:
    """Average precision at 3-d distance thresholds for CLEVR set prediction (Table 2; DSPN's definition).

    All predictions of the data set are ranked by confidence (highest first; ties keep their order in the
    input). For each prediction, among the present targets of its own scene whose discrete attributes
    (e.g. size, material, shape, colour) all equal the prediction's, the one at the smallest Euclidean
    distance ``||coord_scale * (pred - target)||`` is its candidate. The prediction is a true positive if
    that distance is <= the threshold and no higher-ranked prediction has already claimed the candidate;
    otherwise it is a false positive (as in DSPN's evaluator, a prediction whose closest candidate is
    taken does not fall back to the next one). Recall is relative to all present targets of the data set;
    AP is the area under the precision-recall curve with every-point interpolation.

    Args:
        pred_coords: (B, m, 3) predicted coordinates. pred_attrs: (B, m, A) integer class ids of the A
            discrete attributes (argmax of their logits). pred_conf: (B, m) confidences.
        target_coords: (B, k, 3). target_attrs: (B, k, A) integer class ids. target_mask: (B, k) bool,
            True for real (not padded) objects.
        thresholds: distances; ``math.inf`` checks the attributes only.
        coord_scale: factor applied to coordinate differences, e.g. 3 for coordinates stored divided by 3
            as in DSPN's preprocessing, so that the thresholds are in CLEVR scene units.

    Returns:
        dict threshold -> AP in [0, 1].
    """
    pc = _as_numpy("pred_coords", pred_coords, np.float64)
    tc = _as_numpy("target_coords", target_coords, np.float64)
    pa = _as_numpy("pred_attrs", pred_attrs, np.int64)
    ta = _as_numpy("target_attrs", target_attrs, np.int64)
    conf = _as_numpy("pred_conf", pred_conf, np.float64)
    tm = _as_numpy("target_mask", target_mask, bool)
    if pc.ndim != 3 or tc.ndim != 3 or pc.shape[2] != tc.shape[2]:
        raise ValueError(f"pred_coords (B, m, c) and target_coords (B, k, c) must share c, "
                         f"got {pc.shape} and {tc.shape}")
    B, m = pc.shape[:2]
    k = tc.shape[1]
    if tc.shape[0] != B:
        raise ValueError(f"batch sizes differ: pred_coords {pc.shape}, target_coords {tc.shape}")
    if pa.ndim != 3 or pa.shape[:2] != (B, m):
        raise ValueError(f"pred_attrs must have shape (B, m, A) = ({B}, {m}, A), got {pa.shape}")
    if ta.shape != (B, k, pa.shape[2]):
        raise ValueError(f"target_attrs must have shape (B, k, A) = {(B, k, pa.shape[2])}, got {ta.shape}")
    if conf.shape != (B, m):
        raise ValueError(f"pred_conf must have shape (B, m) = {(B, m)}, got {conf.shape}")
    if tm.shape != (B, k):
        raise ValueError(f"target_mask must have shape (B, k) = {(B, k)}, got {tm.shape}")
    if not (np.isfinite(pc).all() and np.isfinite(tc).all() and np.isfinite(conf).all()):
        raise ValueError("coordinates and confidences must be finite")
    if not math.isfinite(coord_scale) or coord_scale <= 0:
        raise ValueError(f"coord_scale must be a finite number > 0, got {coord_scale!r}")
    thresholds = tuple(float(t) for t in thresholds)
    if any(not t > 0 for t in thresholds):
        raise ValueError(f"thresholds must be > 0, got {thresholds}")
    n_pos = int(tm.sum())
    if n_pos == 0:
        raise ValueError("target_mask has no present targets: recall, and so AP, is undefined")

    dist = np.linalg.norm(coord_scale * (pc[:, :, None, :] - tc[:, None, :, :]), axis=3)  # (B, m, k)
    same = (pa[:, :, None, :] == ta[:, None, :, :]).all(3) & tm[:, None, :]  # (B, m, k)
    dist = np.where(same, dist, np.inf)
    if k > 0:
        cand = dist.argmin(2)  # (B, m): the closest attribute-matching target
        cand_dist = np.take_along_axis(dist, cand[:, :, None], 2)[:, :, 0]
    else:
        cand = np.zeros((B, m), dtype=np.int64)
        cand_dist = np.full((B, m), np.inf)
    key = (np.arange(B)[:, None] * max(k, 1) + cand).ravel()  # (B*m,) one id per (scene, target)
    order = np.argsort(-conf.ravel(), kind="stable")
    key, cand_dist = key[order], cand_dist.ravel()[order]
    ranks = np.arange(1, key.size + 1)

    result = {}
    for thr in thresholds:
        eligible = np.isfinite(cand_dist) & (cand_dist <= thr)
        pos = np.nonzero(eligible)[0]
        _, first = np.unique(key[pos], return_index=True)  # the first claim of each target wins
        tp = np.zeros(key.size)
        tp[pos[first]] = 1.0
        acc_tp = np.cumsum(tp)
        result[thr] = _average_precision(acc_tp / n_pos, acc_tp / ranks) if key.size else 0.0
    return result


def _flatten_masks(pred: torch.Tensor, gt: torch.Tensor):
    """Validate masks and flatten them to one row per image (or frame).

    Returns:
        pred_ids (N, P) int64 argmax slot per pixel, gt (N, P) int64, n_slots, lead shape ((B,) or (B, T)).
    """
    if not isinstance(pred, torch.Tensor) or not isinstance(gt, torch.Tensor):
        raise ValueError("pred and gt must be torch tensors")
    if gt.dim() not in (3, 4):
        raise ValueError(f"gt must be an index map (B, H, W) or (B, T, H, W), got shape {tuple(gt.shape)}")
    if gt.is_floating_point() or gt.is_complex() or gt.dtype == torch.bool:
        raise ValueError(f"gt must hold integer object indices (0 = background), got {gt.dtype}")
    lead = tuple(gt.shape[:-2])
    if pred.dim() != gt.dim() + 1 or tuple(pred.shape[:len(lead)]) != lead or pred.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"pred must have shape {lead + ('n_slots',) + tuple(gt.shape[-2:])} to match gt "
                         f"{tuple(gt.shape)}, got {tuple(pred.shape)}")
    n_slots = pred.shape[len(lead)]
    if n_slots == 0:
        raise ValueError("pred has no slots")
    if gt.numel() and int(gt.min()) < 0:
        raise ValueError("gt has negative indices; use 0 for background and 1..K for objects")
    pred_ids = pred.detach().argmax(len(lead)).reshape(-1, gt.shape[-2] * gt.shape[-1])  # (N, P)
    return pred_ids.long(), gt.detach().to(pred_ids.device).reshape(pred_ids.shape).long(), n_slots, lead


def _contingency(pred_ids: torch.Tensor, gt: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Pixel counts per (object index, slot) and image.

    Args:
        pred_ids: (N, P) slot of each pixel. gt: (N, P) object index of each pixel (0 = background).

    Returns:
        (N, K + 1, n_slots) int64 counts, K = gt.max().
    """
    N = gt.shape[0]
    K1 = int(gt.max()) + 1 if gt.numel() else 1
    flat = (torch.arange(N, device=gt.device)[:, None] * K1 + gt) * n_slots + pred_ids  # (N, P)
    return torch.bincount(flat.reshape(-1), minlength=N * K1 * n_slots).reshape(N, K1, n_slots).cpu()


def fg_ari(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Adjusted Rand index of the predicted partition over foreground pixels (FG-ARI).

    Each pixel's predicted cluster is its argmax slot; pixels with gt == 0 are left out. The value equals
    ``sklearn.metrics.adjusted_rand_score(gt[fg], argmax[fg])``, including its convention of 1.0 when both
    labelings are a single cluster (or all singletons).

    Args:
        pred: (B, [T,] n_slots, H, W) per-slot masks. gt: (B, [T,] H, W) integer index map.

    Returns:
        (B,) or (B, T) float64, NaN for images (frames) without foreground pixels.
    """
    pred_ids, gt_flat, n_slots, lead = _flatten_masks(pred, gt)
    nij = _contingency(pred_ids, gt_flat, n_slots)[:, 1:, :].double()  # (N, K, n_slots), foreground only

    def pairs(x):
        return x * (x - 1) / 2

    n = nij.sum((1, 2))
    index = pairs(nij).sum((1, 2))
    rows, cols = pairs(nij.sum(2)).sum(1), pairs(nij.sum(1)).sum(1)
    total = pairs(n)
    expected = torch.where(total > 0, rows * cols / total.clamp_min(1), torch.zeros_like(total))
    best = (rows + cols) / 2
    denom = best - expected
    ari = torch.where(denom != 0, (index - expected) / torch.where(denom != 0, denom, torch.ones_like(denom)),
                      torch.ones_like(denom))
    ari = torch.where(n > 0, ari, torch.full_like(ari, math.nan))
    return ari.reshape(lead)


def _match_objects(pred_ids: torch.Tensor, gt: torch.Tensor, n_slots: int):
    """Per image, the IoU-maximizing one-to-one matching of ground-truth objects to slots.

    Returns:
        iou (N, K) float64 IoU of each object with its matched slot (0 if unmatched or absent),
        slot (N, K) int64 matched slot (-1 if unmatched or absent), present (N, K) bool; K = gt.max().
    """
    counts = _contingency(pred_ids, gt, n_slots).double()  # (N, K + 1, n_slots)
    inter = counts[:, 1:, :]  # (N, K, n_slots)
    gt_area = counts.sum(2)[:, 1:]  # (N, K)
    pred_area = counts.sum(1)  # (N, n_slots)
    union = gt_area[:, :, None] + pred_area[:, None, :] - inter
    iou = (inter / union.clamp_min(1)).numpy()
    present = (gt_area > 0).numpy()
    N, K = present.shape
    iou_out = np.zeros((N, K))
    slot_out = np.full((N, K), -1, dtype=np.int64)
    for i in range(N):
        rows = np.nonzero(present[i])[0]
        if rows.size == 0:
            continue
        r, c = linear_sum_assignment(1.0 - iou[i, rows])
        iou_out[i, rows[r]] = iou[i, rows[r], c]
        slot_out[i, rows[r]] = c
    return torch.from_numpy(iou_out), torch.from_numpy(slot_out), torch.from_numpy(present)


def fg_miou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean IoU of ground-truth objects under the IoU-maximizing matching to slots (FG-mIoU, App. F.3).

    Predicted masks are the argmax slots over the whole image (background pixels included, so a slot that
    also covers background has a lower IoU). Ground-truth objects present in the image are matched
    one-to-one to slots by the Hungarian algorithm on 1 - IoU; objects left without a slot (more objects
    than slots) count with IoU 0.

    Args:
        pred: (B, [T,] n_slots, H, W) per-slot masks. gt: (B, [T,] H, W) integer index map.

    Returns:
        (B,) or (B, T) float64, NaN for images (frames) without any object.
    """
    pred_ids, gt_flat, n_slots, lead = _flatten_masks(pred, gt)
    iou, _, present = _match_objects(pred_ids, gt_flat, n_slots)
    n_obj = present.sum(1).double()
    miou = torch.where(n_obj > 0, iou.sum(1) / n_obj.clamp_min(1), torch.full_like(n_obj, math.nan))
    return miou.reshape(lead)


def temporal_consistency(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Fraction of objects captured by the same slot in every frame (TC, App. F.3).

    In each frame, ground-truth objects are matched to slots as in :func:`fg_miou`. Among the objects
    present in every frame (the paper uses two frames), TC is the fraction whose matched slot is the same
    in all frames.

    Args:
        pred: (B, T, n_slots, H, W) per-slot masks, T >= 2. gt: (B, T, H, W) integer index map whose
            object indices are shared across frames.

    Returns:
        (B,) float64, NaN for videos without an object present in every frame.
    """
    if isinstance(gt, torch.Tensor) and gt.dim() != 4:
        raise ValueError(f"temporal_consistency needs videos: gt (B, T, H, W), got shape {tuple(gt.shape)}")
    pred_ids, gt_flat, n_slots, (B, T) = _flatten_masks(pred, gt)
    if T < 2:
        raise ValueError(f"temporal_consistency needs at least two frames, got T = {T}")
    _, slot, present = _match_objects(pred_ids, gt_flat, n_slots)
    slot, present = slot.reshape(B, T, -1), present.reshape(B, T, -1)  # (B, T, K)
    in_all = present.all(1)  # (B, K)
    same = (slot == slot[:, :1]).all(1) & (slot[:, 0] >= 0)  # (B, K)
    n = in_all.sum(1).double()
    hits = (same & in_all).sum(1).double()
    return torch.where(n > 0, hits / n.clamp_min(1), torch.full_like(n, math.nan))


def plan_entropy(plan: torch.Tensor) -> torch.Tensor:
    """The entropy of each slot's attention column, normalized to sum 1, averaged over the slots.

    log(n) (4.65 for 105 inputs) for a slot that attends to every input alike, 0 for one that attends to a
    single input; MESH lowers it for the OT variants (Sec. 4).

    Args:
        plan: (B, n, m) last-iteration attention plan, rows are inputs, columns are slots.

    Returns:
        (B,) mean over the m slots of -sum_i w_ij log w_ij, w = each column of the plan divided by its sum.
    """
    w = plan / plan.sum(1, keepdim=True).clamp_min(1e-30)  # (B, n, m): columns sum to 1
    return -(w * w.clamp_min(1e-30).log()).sum(1).mean(1)
