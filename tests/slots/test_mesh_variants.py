"""Tests of slots.mesh_variants and of the OTConfig options that use it: the autograd MESH against the
library's reference, gradients (gradcheck in float64, the first-order step-size gradient), the learned
objective and pair network, and SlotAttention with each option (the paper's App. B example is in
tests/tasks/test_analysis.py)."""
import pytest
import torch

import kernels
from slots import (LearnedObjective, OTConfig, PairSimilarity, SlotAttention, SlotAttentionConfig,
                   entropy_objective, mesh_autograd)

F64 = torch.float64


def _problem(B=3, n=7, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(B, n, m, generator=g, dtype=F64)
    a = torch.full((B, n), m / n, dtype=F64)
    b = torch.ones(B, m, dtype=F64)
    noise = torch.randn(B, n, m, generator=g, dtype=F64)
    return C, a, b, noise


@pytest.mark.parametrize("second_order", [True, False])
@pytest.mark.parametrize("reuse_uv", [True, False])
def test_entropy_mesh_matches_library_reference(second_order, reuse_uv):
    C, a, b, noise = _problem()
    C = C.requires_grad_(True)
    C2, u, v = mesh_autograd(C, a, b, noise=noise, reuse_uv=reuse_uv, second_order=second_order)
    R2, ur, vr = kernels.mesh_ref(C, a, b, noise=noise, reuse_uv=reuse_uv, straight_through=not second_order)
    torch.testing.assert_close(C2, R2, rtol=1e-10, atol=1e-10)
    if reuse_uv:
        torch.testing.assert_close(u, ur, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(v, vr, rtol=1e-10, atol=1e-10)
    else:
        assert u is None and v is None
    w = torch.randn_like(C)
    (g,) = torch.autograd.grad((w * C2).sum(), C)
    (gr,) = torch.autograd.grad((w * R2).sum(), C)
    torch.testing.assert_close(g, gr, rtol=1e-8, atol=1e-10)
    if not second_order:
        torch.testing.assert_close(g, w)  # straight through
    else:
        assert (g - w).abs().max() > 1e-3  # the steps are differentiated


def test_first_order_step_size_gradient_is_minus_the_sum_of_normalized_steps():
    C, a, b, noise = _problem()
    lr = torch.tensor(3.0, dtype=F64, requires_grad=True)
    C = C.requires_grad_(True)
    C2, _, _ = mesh_autograd(C, a, b, noise=noise, lr=lr, second_order=False)
    w = torch.randn_like(C)
    g_C, g_lr = torch.autograd.grad((w * C2).sum(), (C, lr))
    torch.testing.assert_close(g_C, w)
    # C2 = C + noise_scale * noise - lr * sum_t g_t / ||g_t||, the steps held constant
    steps = (C2 - (C + 1e-3 * noise)).detach() / lr.detach()
    torch.testing.assert_close(g_lr, (w * steps).sum())
    fused, _, _ = kernels.mesh(C.detach(), a, b, noise=noise, lr=3.0)
    torch.testing.assert_close(C2.detach(), fused, rtol=1e-9, atol=1e-9)


def test_gradcheck_second_order_in_cost_step_size_and_similarity():
    C, a, b, noise = _problem(B=2, n=4, m=3)
    torch.manual_seed(0)
    objective = LearnedObjective(hidden=5).double()
    S = torch.softmax(torch.randn(2, 3, 3, dtype=F64), dim=1)

    def f(C, lr, S):
        C2, _, v = mesh_autograd(C, a, b, objective=objective, n_mesh_iters=2, n_sh_iters=3, lr=lr, noise=noise,
                                 noise_scale=0.1, similarity=S, alpha=0.5, second_order=True)
        return C2, v

    inputs = (C.requires_grad_(True), torch.tensor(0.7, dtype=F64, requires_grad=True), S.requires_grad_(True))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_learned_objective_gets_gradient_only_through_second_order():
    C, a, b, noise = _problem()
    torch.manual_seed(0)
    objective = LearnedObjective().double()
    for second_order in (True, False):
        objective.zero_grad()
        C2, _, _ = mesh_autograd(C, a, b, objective=objective, noise=noise, second_order=second_order)
        loss = (C2 * torch.randn_like(C2)).sum()
        if second_order:
            loss.backward()
            assert objective.net[0].weight.grad.abs().sum() > 0 and objective.net[2].weight.grad.abs().sum() > 0
        else:
            assert not loss.requires_grad  # nothing of the objective is on the graph


def test_learned_objective_and_its_derivative():
    torch.manual_seed(0)
    f = LearnedObjective().double()
    assert f.net[0].out_features == 32 and f.net[2].in_features == 32  # App. I: 32 hidden units
    P = torch.rand(2, 5, 3, dtype=F64)
    torch.testing.assert_close(f(P, P.log()), f.elementwise(P).sum((1, 2)))
    p = torch.linspace(0.013, 0.987, 50, dtype=F64)
    h = 1e-6
    fd = (f.elementwise(p + h) - f.elementwise(p - h)) / (2 * h)
    torch.testing.assert_close(f.derivative(p), fd, rtol=1e-5, atol=1e-5)  # piecewise linear: exact off kinks
    assert f.derivative(p).shape == p.shape


def test_entropy_objective_values():
    P = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]], dtype=F64)
    expected = -(P * P.log()).sum()
    torch.testing.assert_close(entropy_objective(P, P.log()), expected.reshape(1))
    P0 = torch.tensor([[[1.0, 0.0]]], dtype=F64)
    log_P0 = torch.tensor([[[0.0, -800.0]]], dtype=F64)  # an entry that underflows: no NaN
    assert entropy_objective(P0, log_P0).item() == 0


def test_pair_similarity_is_symmetric_and_column_normalized():
    torch.manual_seed(0)
    g = PairSimilarity(dim=6, hidden=16).double()
    z = torch.randn(2, 4, 6, dtype=F64)
    z[:, 1] = z[:, 0]  # twins
    S = g(z)
    assert S.shape == (2, 4, 4)
    torch.testing.assert_close(S.sum(1), torch.ones(2, 4, dtype=F64))
    zi, zj = z[:, :, None], z[:, None]
    s_tilde = g.net(torch.cat([zi * zj, (zi - zj).abs()], 3)).squeeze(3)  # (B, m, m) g(z_i, z_j)
    torch.testing.assert_close(s_tilde, s_tilde.transpose(1, 2))  # g is symmetric
    torch.testing.assert_close(S, torch.softmax(s_tilde, dim=1))  # Eq. 19: softmax over each column
    torch.testing.assert_close(S[:, :, 0], S[:, :, 1])  # twins: equal columns
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(g(z[:, perm]), S[:, perm][:, :, perm])  # permutation-equivariant


def make(ot, variant="sa-mesh", seed=0):
    torch.manual_seed(seed)
    return SlotAttention(SlotAttentionConfig(n_slots=4, dim=8, input_dim=6, variant=variant, mlp_hidden=16,
                                             ot=ot)).double()


def test_defaults_leave_slot_attention_unchanged():
    assert not OTConfig().mesh_variant()
    sa = make(OTConfig())
    assert sa.mesh_variant is None
    assert not any("mesh_variant" in k for k in sa.state_dict())


@pytest.mark.parametrize("ot,params", [
    (OTConfig(learn_mesh_lr=True), {"log_mesh_lr"}),
    (OTConfig(learn_mesh_lr=True, straight_through=False), {"log_mesh_lr"}),
    (OTConfig(mesh_objective="learned", straight_through=False), {"objective.net.0.weight", "objective.net.2.weight"}),
    (OTConfig(similarity_alpha=1.0, straight_through=False), {"similarity.net.0.weight", "similarity.net.2.weight"}),
])
def test_each_option_trains_its_parameters(ot, params):
    sa = make(ot)
    x = torch.randn(2, 10, 6, dtype=F64)
    slots, attn = sa(x)
    torch.testing.assert_close(attn.sum((1, 2)), torch.full((2,), 4.0, dtype=F64), rtol=1e-4, atol=1e-4)
    slots.square().sum().backward()
    grads = {k: p.grad for k, p in sa.mesh_variant.named_parameters()}
    for name in params:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert sa.to_q.weight.grad.abs().sum() > 0


def test_learned_step_size_starts_at_mesh_lr_and_gives_the_fused_plan():
    base, learned = make(OTConfig(mesh_lr=5.0)), make(OTConfig(mesh_lr=5.0, learn_mesh_lr=True))
    torch.testing.assert_close(learned.mesh_variant.step_size(), torch.tensor(5.0, dtype=F64))
    learned.load_state_dict(base.state_dict(), strict=False)
    x, s0 = torch.randn(2, 10, 6, dtype=F64), torch.randn(2, 4, 8, dtype=F64)
    torch.manual_seed(1)
    out_base = base(x, slots=s0)
    torch.manual_seed(1)
    out_learned = learned(x, slots=s0)
    for got, want in zip(out_learned, out_base):  # exp(log(5)) differs from 5 in the last bit
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


def test_config_checks_and_round_trip():
    with pytest.raises(ValueError, match="straight_through=False"):
        OTConfig(mesh_objective="learned")
    with pytest.raises(ValueError, match="straight_through=False"):
        OTConfig(similarity_alpha=0.5)
    with pytest.raises(ValueError, match="mesh_objective"):
        OTConfig(mesh_objective="gini", straight_through=False)
    with pytest.raises(ValueError, match="similarity_alpha"):
        OTConfig(similarity_alpha=-1.0, straight_through=False)
    with pytest.raises(ValueError, match="learn_mesh_lr needs mesh_lr > 0"):
        OTConfig(learn_mesh_lr=True, mesh_lr=0.0)
    with pytest.raises(ValueError, match="learn_mesh_lr"):
        OTConfig(learn_mesh_lr=1)
    with pytest.raises(ValueError, match="options of 'sa-mesh', not of 'sa-sh'"):
        make(OTConfig(learn_mesh_lr=True), variant="sa-sh")
    with pytest.raises(ValueError, match="needs the similarity matrix"):
        mesh_autograd(*_problem()[:3], alpha=1.0)
    cfg = SlotAttentionConfig(n_slots=3, dim=4, input_dim=4, ot=OTConfig(mesh_objective="learned",
                                                                        straight_through=False))
    assert SlotAttentionConfig(**cfg.to_dict()) == cfg


def test_learned_objective_kinks_start_where_plan_entries_are():
    torch.manual_seed(0)
    f = LearnedObjective()
    kinks = -f.net[0].bias / f.net[0].weight[:, 0]
    torch.testing.assert_close(kinks, torch.logspace(-4, 0, 32))
    p = torch.logspace(-4, 0, 400)
    assert len(torch.unique(f.derivative(p))) > 16  # f' is not constant over the range of plan entries
