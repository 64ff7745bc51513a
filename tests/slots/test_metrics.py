"""Tests of slots.metrics: against scikit-learn (ARI), plain loop / brute-force referees (AP, mIoU) and
hand-worked cases."""
import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from slots import (
    CLEVR_AP_THRESHOLDS,
    clevr_average_precision,
    fg_ari,
    fg_miou,
    normalized_hungarian_rmse,
    temporal_consistency,
)

# ---------------------------------------------------------------------------------------------------
# normalized Hungarian RMSE


def test_rmse_zero_prediction_is_about_one_and_exact_cases():
    torch.manual_seed(0)
    for sigma in (1.0, 0.01):
        target = sigma * torch.randn(2000, 5, 32)
        r = normalized_hungarian_rmse(torch.zeros_like(target), target, sigma)
        assert abs(float(r) - 1.0) < 0.01
    target = torch.randn(8, 5, 4)
    pred = target[:, torch.randperm(5)]
    assert float(normalized_hungarian_rmse(pred, target, 0.5)) == 0.0
    r = normalized_hungarian_rmse(pred + 0.3, target, 0.5)
    assert abs(float(r) - 0.6) < 1e-5
    with pytest.raises(ValueError, match="sigma"):
        normalized_hungarian_rmse(pred, target, 0.0)


# ---------------------------------------------------------------------------------------------------
# CLEVR average precision


def ap_loop(pc, pa, conf, tc, ta, tm, thr, scale=1.0):
    """DSPN's evaluation written as plain loops."""
    B, m = conf.shape
    dets = sorted(((b, j) for b in range(B) for j in range(m)), key=lambda bj: -conf[bj])  # stable
    claimed, tps = set(), []
    for b, j in dets:
        best, best_d = None, math.inf
        for t in range(tc.shape[1]):
            if tm[b, t] and all(pa[b, j] == ta[b, t]):
                d = float(np.linalg.norm(scale * (pc[b, j] - tc[b, t])))
                if d < best_d:
                    best, best_d = t, d
        hit = best is not None and best_d <= thr and (b, best) not in claimed
        if hit:
            claimed.add((b, best))
        tps.append(1.0 if hit else 0.0)
    n_pos = tm.sum()
    tp_run, rec, prec = 0.0, [], []
    for i, t in enumerate(tps):
        tp_run += t
        rec.append(tp_run / n_pos)
        prec.append(tp_run / (i + 1))
    rec, prec = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(prec) - 2, -1, -1):
        prec[i] = max(prec[i], prec[i + 1])
    return sum((rec[i] - rec[i - 1]) * prec[i] for i in range(1, len(rec)) if rec[i] != rec[i - 1])


def clevr_case(B=40, m=6, k=5, seed=0):
    rng = np.random.default_rng(seed)
    tc = rng.uniform(-3, 3, (B, k, 3))
    ta = rng.integers(0, 2, (B, k, 4))
    tm = rng.random((B, k)) < 0.8
    pc = np.concatenate([tc, rng.uniform(-3, 3, (B, m - k, 3))], 1) + rng.normal(0, 0.08, (B, m, 3))
    pa = np.concatenate([ta, rng.integers(0, 2, (B, m - k, 4))], 1)
    flip = rng.random((B, m, 4)) < 0.1
    pa = np.where(flip, 1 - pa, pa)
    conf = np.round(rng.random((B, m)), 1)  # ties in confidence on purpose
    return pc, pa, conf, tc, ta, tm


def test_ap_matches_plain_loop_reference():
    pc, pa, conf, tc, ta, tm = clevr_case()
    got = clevr_average_precision(pc, pa, conf, tc, ta, tm)
    assert set(got) == set(CLEVR_AP_THRESHOLDS)
    for thr in CLEVR_AP_THRESHOLDS:
        assert got[thr] == pytest.approx(ap_loop(pc, pa, conf, tc, ta, tm, thr), abs=1e-12)
    values = [got[t] for t in CLEVR_AP_THRESHOLDS]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]  # stricter -> lower
    got3 = clevr_average_precision(pc / 3, pa, conf, tc / 3, ta, tm, thresholds=(0.25,), coord_scale=3.0)
    assert got3[0.25] == pytest.approx(got[0.25], abs=1e-12)


def test_ap_hand_worked_cases():
    rng = np.random.default_rng(1)
    tc = rng.uniform(-3, 3, (3, 4, 3))
    ta = rng.integers(0, 3, (3, 4, 4))
    tm = np.ones((3, 4), bool)
    conf = rng.random((3, 4))
    perfect = clevr_average_precision(tc, ta, conf, tc, ta, tm)
    assert all(v == 1.0 for v in perfect.values())
    shift = np.array([0.3, 0.0, 0.0])  # every prediction 0.3 away from its object
    shifted = clevr_average_precision(tc + shift, ta, conf, tc, ta, tm)
    assert shifted[math.inf] == shifted[1.0] == shifted[0.5] == 1.0
    assert shifted[0.25] == shifted[0.125] == shifted[0.0625] == 0.0
    wrong = clevr_average_precision(tc, (ta + 1) % 3, conf, tc, ta, tm)
    assert all(v == 0.0 for v in wrong.values())  # attributes must match, even at threshold inf
    # one scene, two objects, three predictions ranked FP, TP, TP: precision 0, 1/2, 2/3 at recall
    # 0, 1/2, 1; the envelope makes both recall steps count 2/3, AP = 2/3
    tc1 = np.array([[[0.0, 0, 0], [2, 0, 0]]])
    ta1 = np.zeros((1, 2, 4), int)
    pc1 = np.array([[[5.0, 5, 5], [0, 0, 0], [2, 0, 0]]])
    ap = clevr_average_precision(pc1, np.zeros((1, 3, 4), int), np.array([[0.9, 0.8, 0.7]]), tc1, ta1,
                                 np.ones((1, 2), bool), thresholds=(1.0,))
    assert ap[1.0] == pytest.approx(2 / 3)
    # a duplicate of a claimed object is a false positive; padded targets are not counted
    pc2 = np.array([[[0.0, 0, 0], [0.1, 0, 0], [9, 9, 9]]])
    tc2 = np.array([[[0.0, 0, 0], [9, 9, 9]]])
    ap = clevr_average_precision(pc2, np.zeros((1, 3, 4), int), np.array([[0.9, 0.8, 0.1]]), tc2,
                                 np.zeros((1, 2, 4), int), np.array([[True, False]]), thresholds=(1.0,))
    assert ap[1.0] == 1.0  # the only real object is found first; later false positives do not lower AP


def test_ap_bad_input():
    pc, pa, conf, tc, ta, tm = clevr_case(B=2)
    with pytest.raises(ValueError, match="no present targets"):
        clevr_average_precision(pc, pa, conf, tc, ta, np.zeros_like(tm))
    with pytest.raises(ValueError, match="pred_conf"):
        clevr_average_precision(pc, pa, conf[:, :2], tc, ta, tm)
    with pytest.raises(ValueError, match="target_attrs"):
        clevr_average_precision(pc, pa, conf, tc, ta[:, :, :2], tm)
    with pytest.raises(ValueError, match="thresholds"):
        clevr_average_precision(pc, pa, conf, tc, ta, tm, thresholds=(0.0,))


# ---------------------------------------------------------------------------------------------------
# Mask metrics


def random_masks(B=6, n_slots=5, H=12, W=10, K=4, seed=0, T=None):
    g = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    gt = torch.randint(0, K + 1, lead + (H, W), generator=g)
    pred = torch.randn(lead + (n_slots, H, W), generator=g)
    return pred, gt


def test_fg_ari_matches_sklearn_per_image():
    pred, gt = random_masks()
    # edge cases: image 0 all one object predicted as one slot; image 1 without foreground;
    # image 2 with a single foreground pixel; image 3 where prediction equals the ground truth partition
    gt[0] = 1
    pred[0] = 0
    pred[0, 2] = 1
    gt[1] = 0
    gt[2] = 0
    gt[2, 3, 4] = 2
    pred[3] = torch.nn.functional.one_hot(gt[3], 5).permute(2, 0, 1).float()[[3, 1, 4, 0, 2]]
    ari = fg_ari(pred, gt)
    assert ari.shape == (6,)
    ids = pred.argmax(1)
    for i in range(6):
        fg = gt[i] > 0
        if not fg.any():
            assert math.isnan(ari[i])
            continue
        ref = adjusted_rand_score(gt[i][fg].numpy(), ids[i][fg].numpy())
        assert float(ari[i]) == pytest.approx(ref, abs=1e-12)
    assert ari[0] == 1.0 and ari[3] == 1.0


def test_fg_ari_video_is_per_frame():
    pred, gt = random_masks(B=3, T=2, seed=1)
    ari = fg_ari(pred, gt)
    assert ari.shape == (3, 2)
    flat = fg_ari(pred.flatten(0, 1), gt.flatten(0, 1))
    torch.testing.assert_close(ari.flatten(), flat)


def brute_miou(pred_ids, gt, n_slots):
    objs = [o for o in range(1, int(gt.max()) + 1) if (gt == o).any()]
    if not objs:
        return math.nan
    iou = [[float(((gt == o) & (pred_ids == s)).sum()) / float(((gt == o) | (pred_ids == s)).sum())
            for s in range(n_slots)] for o in objs]
    best = max(sum(iou[i][s] for i, s in enumerate(p)) for p in itertools.permutations(range(n_slots), len(objs)))
    return best / len(objs)


def test_fg_miou_matches_brute_force():
    pred, gt = random_masks(B=5, n_slots=5, K=3, seed=2)
    gt[4] = 0
    miou = fg_miou(pred, gt)
    ids = pred.argmax(1)
    for i in range(5):
        ref = brute_miou(ids[i], gt[i], 5)
        if math.isnan(ref):
            assert math.isnan(miou[i])
        else:
            assert float(miou[i]) == pytest.approx(ref, abs=1e-12)


def test_fg_miou_hand_worked():
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    gt[0, :, :2] = 1  # object 1: left half, 8 pixels
    gt[0, :2, 2:] = 2  # object 2: top right quarter, 4 pixels
    ids = torch.full((4, 4), 2)
    ids[:, :2] = 0
    ids[3, 2:] = 0  # slot 0: object 1 plus 2 background pixels -> IoU 8/10
    ids[:2, 2:] = 1  # slot 1: exactly object 2 -> IoU 1
    pred = torch.nn.functional.one_hot(ids, 3).permute(2, 0, 1)[None].float()
    assert float(fg_miou(pred, gt)[0]) == pytest.approx(0.9)
    # more objects than slots: the unmatched object counts 0
    one_slot = torch.ones(1, 1, 4, 4)
    assert float(fg_miou(one_slot, gt)[0]) == pytest.approx(8 / 16 / 2)


def _one_hot_pred(ids, n_slots):
    """(B, T, H, W) slot ids -> (B, T, n_slots, H, W) masks."""
    return torch.nn.functional.one_hot(ids, n_slots).permute(0, 1, 4, 2, 3).float()


def test_temporal_consistency_hand_worked():
    gt = torch.zeros(3, 2, 4, 4, dtype=torch.long)
    gt[:, :, :, :2] = 1  # object 1 in both frames
    gt[:, :, :, 2] = 2  # object 2 in both frames
    gt[:, 1, 0, 3] = 3  # object 3 appears in frame 1 only: ignored
    ids = torch.zeros(3, 2, 4, 4, dtype=torch.long)
    ids[:, :, :, 2] = 1
    ids[:, :, :, 3] = 2
    ids[:, 1, 0, 3] = 3
    ids[1, 1] = torch.where(ids[1, 1] == 1, 2, torch.where(ids[1, 1] == 2, 1, ids[1, 1]))  # obj 2 swaps
    gt[2, 1] = 0  # video 2: nothing in frame 1
    tc = temporal_consistency(_one_hot_pred(ids, 4), gt)
    assert tc.shape == (3,)
    assert float(tc[0]) == 1.0 and float(tc[1]) == 0.5 and math.isnan(tc[2])


def test_temporal_consistency_of_known_slot_maps():
    # every object is predicted exactly, by slot maps[b, t, object index]; background by a slot of its own
    g = torch.Generator().manual_seed(3)
    B, K, n_slots = 6, 4, 6
    gt = torch.randint(0, K + 1, (B, 2, 9, 9), generator=g)
    # maps[b, t, label] for labels 0..K plus one spare slot; frame 1 reshuffles objects 3, 4 and the spare
    first = torch.stack([torch.randperm(n_slots, generator=g) for _ in range(B)])
    second = first.clone()
    for b in range(1, B):  # video 0: every object keeps its slot
        second[b, 3:] = first[b, 3:][torch.randperm(3, generator=g)]
    maps = torch.stack([first, second], 1)  # (B, 2, n_slots)
    ids = maps.gather(2, gt.flatten(2)).reshape(gt.shape)  # (B, 2, H, W)
    pred = _one_hot_pred(ids, n_slots) + 0.1 * torch.rand(B, 2, n_slots, 9, 9, generator=g)
    expected = (maps[:, 0, 1:K + 1] == maps[:, 1, 1:K + 1]).double().mean(1)
    tc = temporal_consistency(pred, gt)
    torch.testing.assert_close(tc, expected)
    assert 0 < float(tc.min()) < 1 and float(tc.max()) == 1.0  # the case is not trivial
    torch.testing.assert_close(fg_miou(pred, gt), torch.ones(B, 2, dtype=torch.float64))
    perm = torch.randperm(n_slots, generator=g)
    torch.testing.assert_close(temporal_consistency(pred[:, :, perm], gt), tc)  # slot labels do not matter


def test_mask_metrics_bad_input():
    pred, gt = random_masks(B=2)
    with pytest.raises(ValueError, match="integer"):
        fg_ari(pred, gt.float())
    with pytest.raises(ValueError, match="pred must have shape"):
        fg_miou(pred[:, :, :5], gt)
    with pytest.raises(ValueError, match="negative"):
        fg_ari(pred, gt - 1)
    with pytest.raises(ValueError, match="videos"):
        temporal_consistency(pred, gt)
    with pytest.raises(ValueError, match="two frames"):
        temporal_consistency(pred[:, None], gt[:, None])
