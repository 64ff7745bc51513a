"""Tests of slots.losses against brute-force matching over all permutations."""
import itertools

import numpy as np
import pytest
import torch

import torch.nn.functional as F

from slots import hungarian_huber_loss, hungarian_match, hungarian_mse_loss, losses, pairwise_huber, pairwise_mse


def _mse(t, p):
    return ((t - p) ** 2).mean()


def brute_force(pred, target, mask, pair_loss=_mse):
    """Per batch element: the least total ``pair_loss`` over every injective map of present targets to
    predictions, and that map."""
    losses, maps = [], []
    for p, t, mk in zip(pred, target, mask):
        rows = [i for i in range(len(t)) if mk[i]]
        best, best_map = None, None
        for cols in itertools.permutations(range(len(p)), len(rows)):
            total = sum(float(pair_loss(t[i], p[j])) for i, j in zip(rows, cols))
            if best is None or total < best:
                best, best_map = total, dict(zip(rows, cols))
        losses.append((best, len(rows)))
        maps.append(best_map)
    return losses, maps


def test_pairwise_mse_entries():
    pred, target = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    C = pairwise_mse(pred, target)
    assert C.shape == (2, 5, 4)
    torch.testing.assert_close(C[1, 3, 2], ((target[1, 3] - pred[1, 2]) ** 2).mean())
    with pytest.raises(ValueError, match="share B and D"):
        pairwise_mse(pred, torch.randn(2, 5, 4))


@pytest.mark.parametrize("exhaustive", [True, False], ids=["exhaustive", "scipy"])
@pytest.mark.parametrize("m,k", [(5, 5), (6, 4)])
def test_matches_brute_force(m, k, exhaustive, monkeypatch):
    if not exhaustive:
        monkeypatch.setattr(losses, "EXHAUSTIVE_MAX", 0)  # every shape takes scipy's path
    torch.manual_seed(0)
    pred, target = torch.randn(6, m, 3, dtype=torch.float64), torch.randn(6, k, 3, dtype=torch.float64)
    mask = torch.rand(6, k) > 0.3
    mask[0] = True
    ref, maps = brute_force(pred, target, mask)
    loss = hungarian_mse_loss(pred, target, mask)
    per = hungarian_mse_loss(pred, target, mask, reduction="none")
    total, count = sum(r[0] for r in ref), sum(r[1] for r in ref)
    torch.testing.assert_close(loss, torch.tensor(total / count, dtype=torch.float64))
    torch.testing.assert_close(per, torch.tensor([r[0] / max(r[1], 1) for r in ref], dtype=torch.float64))
    idx = hungarian_match(pred, target, mask)
    for b, mp in enumerate(maps):
        for i in range(k):
            assert int(idx[b, i]) == (mp[i] if mask[b, i] else -1)


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("k,m", [(5, 5), (4, 6), (6, 6), (1, 3)])
def test_exhaustive_assignment_equals_scipy(k, m, ties):
    """The batched exhaustive search and scipy's per-element Hungarian algorithm find matchings of equal total
    cost, on random costs (the same matching: no ties) and on costs from {0, 1, 2} with absent targets
    (many ties: any optimal matching will do)."""
    rng = np.random.default_rng(k * 10 + m)
    B = 300
    cost = rng.integers(0, 3, (B, k, m)).astype(np.float64) if ties else rng.random((B, k, m))
    mask = rng.random((B, k)) > 0.3 if ties else np.ones((B, k), dtype=bool)
    mask[0] = False  # an element without present targets
    ours, ref = losses._assign_exhaustive(cost, mask), losses._assign_hungarian(cost, mask)
    assert (ours[~mask] == -1).all() and (ref[~mask] == -1).all()
    for out in (ours, ref):  # one-to-one on the present targets
        assert all(len(set(row[row >= 0])) == (row >= 0).sum() for row in out)

    def total(idx):
        return np.where(mask, np.take_along_axis(cost, np.maximum(idx, 0)[:, :, None], 2)[:, :, 0], 0).sum(1)

    np.testing.assert_allclose(total(ours), total(ref), rtol=0, atol=1e-12)
    if not ties:
        np.testing.assert_array_equal(ours, ref)


def test_assign_picks_scipy_beyond_the_exhaustive_limit(monkeypatch):
    """Sets with more one-to-one maps than EXHAUSTIVE_MAX (CLEVR's 10 x 10), or more targets than predictions,
    go to scipy; smaller ones to the exhaustive search."""
    calls = []
    for name in ("_assign_exhaustive", "_assign_hungarian"):
        real = getattr(losses, name)
        monkeypatch.setattr(losses, name, lambda c, mk, real=real, name=name: calls.append(name) or real(c, mk))
    for k, m in [(5, 5), (10, 10), (7, 5)]:
        mask = torch.zeros(2, k, dtype=torch.bool)
        mask[:, :min(k, m)] = True
        losses._assign(torch.rand(2, k, m), mask)
    assert calls == ["_assign_exhaustive", "_assign_hungarian", "_assign_hungarian"]


def test_permuted_target_gives_zero_and_gradient_is_exact():
    torch.manual_seed(1)
    target = torch.randn(4, 5, 7)
    perm = torch.stack([torch.randperm(5) for _ in range(4)])
    pred = target.gather(1, perm[:, :, None].expand(-1, -1, 7)).clone().requires_grad_(True)
    loss = hungarian_mse_loss(pred, target)
    assert float(loss.detach()) == 0.0
    # shift every prediction; gradient of the mean over 20 pairs of per-pair means over 7 features
    shifted = (pred.detach() + 0.1).requires_grad_(True)
    loss = hungarian_mse_loss(shifted, target)
    torch.testing.assert_close(loss, torch.tensor(0.01))
    loss.backward()
    torch.testing.assert_close(shifted.grad, torch.full_like(shifted, 2 * 0.1 / (20 * 7)))


def test_padded_targets_are_ignored_and_unmatched_predictions_get_no_gradient():
    torch.manual_seed(2)
    pred = torch.randn(2, 6, 3, requires_grad=True)
    target = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    garbage = target.clone()
    garbage[~mask] = 1e3  # padding values must not matter
    loss = hungarian_mse_loss(pred, target, mask)
    torch.testing.assert_close(hungarian_mse_loss(pred, garbage, mask), loss)
    loss.backward()
    idx = hungarian_match(pred, target, mask)
    for b in range(2):
        used = set(idx[b][idx[b] >= 0].tolist())
        for j in range(6):
            assert (pred.grad[b, j].abs().sum() > 0) == (j in used)


def test_reduction_none_with_empty_element_and_errors():
    pred, target = torch.randn(2, 3, 2), torch.randn(2, 3, 2)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    per = hungarian_mse_loss(pred, target, mask, reduction="none")
    assert per[1] == 0 and per[0] > 0
    torch.testing.assert_close(hungarian_mse_loss(pred, target, mask), per[0])
    with pytest.raises(ValueError, match="no present targets"):
        hungarian_mse_loss(pred, target, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 2 predictions"):
        hungarian_mse_loss(torch.randn(2, 2, 2), target)
    with pytest.raises(ValueError, match="mask"):
        hungarian_mse_loss(pred, target, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        hungarian_mse_loss(pred, target, reduction="sum")
    with pytest.raises(ValueError, match="shape"):
        hungarian_mse_loss(torch.randn(3, 2), target)
    with pytest.raises(ValueError, match="NaN"):
        hungarian_mse_loss(torch.full((2, 3, 2), float("nan")), target)
    with pytest.raises(ValueError, match="floating"):
        hungarian_mse_loss(torch.ones(2, 3, 2, dtype=torch.long), target)


# ---- Huber (CLEVR set prediction) -------------------------------------------------------------------------------
def test_pairwise_huber_is_torch_huber_of_each_pair():
    torch.manual_seed(2)
    pred, target = 2 * torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 6, 5, dtype=torch.float64)
    for delta in (1.0, 0.3):
        C = pairwise_huber(pred, target, delta)
        assert C.shape == (3, 6, 4)
        ref = torch.stack([torch.stack([torch.stack([F.huber_loss(pred[b, j], target[b, i], delta=delta)
                                                     for j in range(4)]) for i in range(6)]) for b in range(3)])
        torch.testing.assert_close(C, ref)
    for delta in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="delta must be a finite number > 0"):
            pairwise_huber(pred, target, delta)


def test_pairwise_huber_gradient():
    torch.manual_seed(3)
    pred = (2 * torch.randn(2, 3, 4, dtype=torch.float64)).requires_grad_(True)
    target = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, t: pairwise_huber(p, t, 0.7), (pred, target))


@pytest.mark.parametrize("m,k", [(5, 5), (6, 4)])
def test_huber_matches_brute_force(m, k):
    torch.manual_seed(4)
    pred, target = 2 * torch.randn(6, m, 3, dtype=torch.float64), torch.randn(6, k, 3, dtype=torch.float64)
    mask = torch.rand(6, k) > 0.3
    mask[0] = True
    ref, _ = brute_force(pred, target, mask, lambda t, p: F.huber_loss(p, t, delta=0.5))
    loss = hungarian_huber_loss(pred, target, mask, delta=0.5)
    per = hungarian_huber_loss(pred, target, mask, reduction="none", delta=0.5)
    total, count = sum(r[0] for r in ref), sum(r[1] for r in ref)
    torch.testing.assert_close(loss, torch.tensor(total / count, dtype=torch.float64))
    torch.testing.assert_close(per, torch.tensor([r[0] / max(r[1], 1) for r in ref], dtype=torch.float64))


def test_huber_within_delta_is_half_the_squared_error():
    """In [0, 1] (sigmoid outputs and CLEVR targets) every |difference| is <= 1, so Huber with delta 1 is
    half the squared error: the same matching and half the MSE loss."""
    torch.manual_seed(5)
    pred, target = torch.rand(8, 10, 19, dtype=torch.float64), torch.rand(8, 10, 19, dtype=torch.float64)
    torch.testing.assert_close(hungarian_huber_loss(pred, target), hungarian_mse_loss(pred, target) / 2)
