"""Tests of slots.attention: shapes and gradients of every variant and cost, marginals, equality with a
hand-written Locatello step, (lack of) set-equivariance, implicit differentiation and input checks."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from slots import ATTENTION_VARIANTS, COSTS, OTConfig, SlotAttention, SlotAttentionConfig
from slots.attention import _SetScalarMLP

VARIANTS = sorted(ATTENTION_VARIANTS)
OT_VARIANTS = [v for v in VARIANTS if v != "sa"]


def cases(*lists):
    """The parametrize cases of the product of ``lists`` (the first holds variants); those of a variant that
    needs exact EMD are marked ``needs_emd`` (skipped in a build without LEMON)."""
    return [pytest.param(*case, marks=[pytest.mark.needs_emd] * ATTENTION_VARIANTS[case[0]].needs_emd)
            for case in itertools.product(*lists)]


def make(variant="sa-mesh", cost="l2", n_slots=4, dim=8, input_dim=6, seed=0, **kw):
    torch.manual_seed(seed)
    ot = kw.pop("ot", OTConfig())
    return SlotAttention(SlotAttentionConfig(n_slots=n_slots, dim=dim, input_dim=input_dim, variant=variant,
                                             cost=cost, mlp_hidden=16, ot=ot, **kw))


@pytest.mark.parametrize("variant,cost", cases(VARIANTS, sorted(COSTS)))
def test_forward_backward_every_variant_and_cost(variant, cost):
    sa = make(variant, cost, implicit_grad=(cost != "dot"))
    x = torch.randn(3, 10, 6, requires_grad=True)
    slots, attn = sa(x)
    assert slots.shape == (3, 4, 8)
    assert attn.shape == (3, 10, 4)
    assert torch.isfinite(slots).all() and torch.isfinite(attn).all()
    assert (attn >= 0).all()
    if variant == "sa":
        torch.testing.assert_close(attn.sum(2), torch.ones(3, 10))  # softmax over slots
    else:
        mass = 2 * 4 if variant == "sa-emd" else 4  # Eq. 8 adds two plans of mass n_slots each
        torch.testing.assert_close(attn.sum((1, 2)), torch.full((3,), float(mass)), rtol=1e-4, atol=1e-4)
    (slots.square().sum() + attn.square().sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in sa.named_parameters():
        if name.startswith("slots_") and sa.config.implicit_grad:
            continue  # the initialization gets no gradient under implicit differentiation
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name in ("to_q.weight", "to_k.weight", "to_v.weight", "gru.weight_hh"):
        assert dict(sa.named_parameters())[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", cases(OT_VARIANTS))
def test_ot_plan_meets_marginals(variant):
    sa = make(variant, n_iters=1, ot=OTConfig(n_sh_iters=300))
    x, s0 = torch.randn(2, 12, 6), torch.randn(2, 4, 8)
    _, attn = sa(x, slots=s0)
    a, b = sa.marginals(x, s0)
    factor = 2 if variant == "sa-emd" else 1
    torch.testing.assert_close(attn.sum(1), factor * b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attn.sum(2), factor * a, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("learned", [True, False])
def test_marginals_sum_to_n_slots(learned):
    sa = make("sa-sh", n_slots=5, ot=OTConfig(learned_marginals=learned))
    x, s = torch.randn(3, 17, 6) * 3, torch.randn(3, 5, 8)
    a, b = sa.marginals(x, s)
    assert a.shape == (3, 17) and b.shape == (3, 5)
    torch.testing.assert_close(a.sum(1), torch.full((3,), 5.0))
    torch.testing.assert_close(b.sum(1), torch.full((3,), 5.0))
    assert (a > 0).all() and (b > 0).all()
    if learned:
        assert a.std() > 0 and b.std() > 0  # not uniform: the MLPs see the elements
    else:
        torch.testing.assert_close(a, torch.full_like(a, 5 / 17))
        torch.testing.assert_close(b, torch.ones_like(b))
    assert hasattr(sa, "input_marginal") == learned
    with pytest.raises(ValueError, match="no OT marginals"):
        make("sa").marginals(x, s)


@pytest.mark.parametrize("variant", cases(VARIANTS))
def test_is_ot_says_which_variants_have_marginals(variant):
    sa = make(variant)
    x, s = torch.randn(2, 5, sa.config.input_dim), torch.randn(2, sa.config.n_slots, sa.config.dim)
    assert sa.is_ot == (variant in OT_VARIANTS)
    if sa.is_ot:
        a, b = sa.marginals(x, s)
        assert a.shape == (2, 5) and b.shape == (2, sa.config.n_slots)
    else:
        with pytest.raises(ValueError, match="no OT marginals"):
            sa.marginals(x, s)


def _locatello_step(sa, x, slots):
    """One iteration of Locatello et al. (2020), written out with the module's weights."""
    d = slots.shape[2]
    xn = F.layer_norm(x, x.shape[2:], sa.norm_inputs.weight, sa.norm_inputs.bias)
    k, v = xn @ sa.to_k.weight.T, xn @ sa.to_v.weight.T  # (B, n, d)
    q = F.layer_norm(slots, (d,), sa.norm_slots.weight, sa.norm_slots.bias) @ sa.to_q.weight.T  # (B, m, d)
    logits = q @ k.transpose(1, 2) / math.sqrt(d)  # (B, m, n)
    attn = logits.softmax(dim=1)  # over slots
    w = (attn + 1e-8) / (attn + 1e-8).sum(2, keepdim=True)  # weighted mean over inputs
    u = w @ v  # (B, m, d)
    g = sa.gru
    W_ir, W_iz, W_in = g.weight_ih.chunk(3)
    W_hr, W_hz, W_hn = g.weight_hh.chunk(3)
    b_ir, b_iz, b_in = g.bias_ih.chunk(3)
    b_hr, b_hz, b_hn = g.bias_hh.chunk(3)
    r = torch.sigmoid(u @ W_ir.T + b_ir + slots @ W_hr.T + b_hr)
    z = torch.sigmoid(u @ W_iz.T + b_iz + slots @ W_hz.T + b_hz)
    nn_ = torch.tanh(u @ W_in.T + b_in + r * (slots @ W_hn.T + b_hn))
    h = (1 - z) * nn_ + z * slots
    lin1, lin2 = sa.mlp[0], sa.mlp[2]
    hn = F.layer_norm(h, (d,), sa.norm_mlp.weight, sa.norm_mlp.bias)
    h = h + torch.relu(hn @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
    return h, attn.transpose(1, 2)


def test_sa_dot_equals_handwritten_locatello():
    sa = make("sa", "dot", n_iters=2).double()
    x, s0 = torch.randn(2, 9, 6, dtype=torch.float64), torch.randn(2, 4, 8, dtype=torch.float64)
    slots, attn = sa(x, slots=s0)
    ref, _ = _locatello_step(sa, x, s0)
    ref, ref_attn = _locatello_step(sa, x, ref)
    torch.testing.assert_close(slots, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attn, ref_attn, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["sa", "sa-sh"])
def test_set_equivariance_of_sa_and_sa_sh(variant):
    sa = make(variant).double()
    x, s0 = torch.randn(2, 11, 6, dtype=torch.float64), torch.randn(2, 4, 8, dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    slots, attn = sa(x, slots=s0)
    slots_p, attn_p = sa(x, slots=s0[:, perm])
    torch.testing.assert_close(slots_p, slots[:, perm], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(attn_p, attn[:, :, perm], rtol=1e-9, atol=1e-9)


def _pairwise_gap_range(slots):
    """Smallest and largest distance between two slots of each batch element."""
    d = torch.cdist(slots, slots)  # (B, m, m)
    off = ~torch.eye(slots.shape[1], dtype=torch.bool)
    return d[:, off].min(), d[:, off].max()


def test_mesh_breaks_ties_that_sa_and_sa_sh_cannot():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 6)
    s0 = torch.randn(2, 4, 8)
    s0[:, 1] = s0[:, 0]  # two identical initial slots
    for variant in ("sa", "sa-sh"):
        slots, attn = make(variant, seed=1)(x, slots=s0)
        torch.testing.assert_close(slots[:, 0], slots[:, 1])  # set-equivariant: the tie stays
        torch.testing.assert_close(attn[:, :, 0], attn[:, :, 1])
    slots, attn = make("sa-mesh", seed=1)(x, slots=s0)
    assert (slots[:, 0] - slots[:, 1]).norm(dim=1).min() > 1e-2
    assert (attn[:, :, 0] - attn[:, :, 1]).abs().sum(1).min() > 1e-1


def test_equal_init_collapses_sa_but_not_mesh():
    x = torch.randn(2, 12, 6)
    sa = make("sa", init="equal")
    slots, _ = sa(x)
    assert _pairwise_gap_range(slots)[1] < 1e-5  # all slots stay identical
    slots, _ = make("sa-mesh", init="equal")(x)
    assert _pairwise_gap_range(slots)[0] > 1e-2  # every pair of slots separated


def test_slot_inits():
    learned, fixed, equal = make(init="learned"), make(init="fixed"), make(init="equal")
    names = {k: {n for n, _ in m.named_parameters() if n.startswith("slots_")} for k, m in
             (("learned", learned), ("fixed", fixed), ("equal", equal))}
    assert names == {"learned": {"slots_mu", "slots_log_sigma"}, "fixed": set(), "equal": {"slots_mu"}}
    x = torch.randn(3, 7, 6)
    for m in (learned, fixed):
        torch.manual_seed(0)
        a, _ = m(x)
        b, _ = m(x)
        assert not torch.allclose(a, b)  # random initial slots per call
    torch.manual_seed(0)
    init = equal._init(equal, 3, x.device, x.dtype)
    assert init.shape == (3, 4, 8) and (init == equal.slots_mu).all()


def test_implicit_grad_only_through_last_iteration():
    x = torch.randn(2, 10, 6)
    s0 = torch.randn(2, 4, 8)
    full = make("sa-sh", n_iters=3, implicit_grad=True).double()
    plain = make("sa-sh", n_iters=3, implicit_grad=False).double()
    plain.load_state_dict(full.state_dict())
    last = make("sa-sh", n_iters=1, implicit_grad=False).double()
    first = make("sa-sh", n_iters=2, implicit_grad=False).double()
    for m in (last, first):
        m.load_state_dict(full.state_dict())
    x, s0 = x.double(), s0.double()

    def grads(module, start):
        module.zero_grad()
        slots, attn = module(x, slots=start)
        (slots.sin().sum() + attn.square().sum()).backward()
        return slots, {n: p.grad for n, p in module.named_parameters() if not n.startswith("slots_")}

    s_full, g_full = grads(full, s0)
    with torch.no_grad():
        s_mid, _ = first(x, slots=s0)
    s_last, g_last = grads(last, s_mid)
    _, g_plain = grads(plain, s0)
    torch.testing.assert_close(s_full, s_last)
    for n in g_full:
        torch.testing.assert_close(g_full[n], g_last[n], rtol=1e-9, atol=1e-12)
    # the full (unrolled) gradient is different: implicit_grad really cuts the earlier iterations
    assert (g_plain["to_q.weight"] - g_full["to_q.weight"]).abs().max() > 1e-4

    s_req = s0.clone().requires_grad_(True)
    slots, _ = full(x, slots=s_req)
    slots.sum().backward()
    assert s_req.grad is None  # passed-in slots get no gradient
    learned = make("sa-mesh", init="learned", implicit_grad=True)
    learned(torch.randn(2, 10, 6))[0].sum().backward()
    assert learned.slots_mu.grad is None and learned.slots_log_sigma.grad is None
    learned = make("sa-mesh", init="learned", implicit_grad=False)
    learned(torch.randn(2, 10, 6))[0].sum().backward()
    assert learned.slots_mu.grad.abs().sum() > 0


@pytest.mark.parametrize("variant,cost", [("sa", "dot"), ("sa-sh", "l2"), ("sa-sh", "cosine")])
def test_gradcheck_float64(variant, cost):
    sa = make(variant, cost, n_slots=2, dim=3, input_dim=3, n_iters=2).double()
    s0 = torch.randn(1, 2, 3, dtype=torch.float64)
    x = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sa(x, slots=s0)[0], (x,), eps=1e-6, atol=1e-5)


FAST_CASES = [(v, c, norm) for v, c in itertools.product(VARIANTS, sorted(COSTS)) for norm in (True, False)
              if v != "sa" or norm]


@pytest.mark.parametrize("input_dim", [6, 11], ids=["slot-side", "input-side"])
@pytest.mark.parametrize("variant,cost,normalize", FAST_CASES)
def test_fast_path_equals_plain_path(variant, cost, normalize, input_dim):
    """SlotAttention's fast iteration (transposed layout; with input_dim <= dim, the projections of the
    inputs applied on the slot side) gives the plain path's slots, plan and gradients (inputs, every
    parameter) up to float64 rounding, with a cost scale and temperature that the fast path folds into the
    queries, the plan normalized over the inputs or not, and gradient through every iteration."""
    ot = OTConfig(cost_scale=1.5, tau=0.7, normalize_plan=normalize,
                  marginal_input="raw" if normalize else "normalized")
    sa = make(variant, cost, input_dim=input_dim, n_iters=2, ot=ot).double()
    with torch.no_grad():
        sa.norm_inputs.weight.uniform_(0.5, 1.5)
        sa.norm_inputs.bias.uniform_(-0.5, 0.5)
    _assert_fast_equals_plain(sa, torch.randn(3, 10, input_dim, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("options", [dict(learn_mesh_lr=True), dict(warm_start_grad=True),
                                     dict(straight_through=False, similarity_alpha=0.5),
                                     dict(straight_through=False, mesh_objective="learned")],
                         ids=["learned-lr", "warm-start-grad", "similarity", "learned-objective"])
def test_fast_path_equals_plain_path_for_mesh_variants(options):
    """The same for SA-MESH's appendix variants (their own autograd MESH steps) and the warm-start gradient."""
    sa = make("sa-mesh", "l2", n_iters=2, ot=OTConfig(**options)).double()
    _assert_fast_equals_plain(sa, torch.randn(3, 10, 6, dtype=torch.float64, requires_grad=True))


def _assert_fast_equals_plain(sa, x):
    """sa(x) from the same initial slots with ``sa.fast`` True and False: slots, plan and the gradients of a loss
    of both (x and every parameter) agree up to float64 rounding."""
    s0 = torch.randn(x.shape[0], sa.config.n_slots, sa.config.dim, dtype=torch.float64)
    params = [x] + list(sa.parameters())
    results = []
    for fast in (True, False):
        sa.fast = fast
        torch.manual_seed(1)  # the same MESH noise
        slots, attn = sa(x, slots=s0)
        loss = slots.sin().sum() + (attn * torch.linspace(0, 1, attn.numel()).view_as(attn)).square().sum()
        results.append((slots, attn, torch.autograd.grad(loss, params, allow_unused=True)))
    (slots, attn, grads), (slots_ref, attn_ref, grads_ref) = results
    torch.testing.assert_close(slots, slots_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attn, attn_ref, rtol=1e-10, atol=1e-10)
    for (name, _), g, g_ref in zip([("x", x)] + list(sa.named_parameters()), grads, grads_ref):
        assert (g is None) == (g_ref is None), name
        if g is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10, msg=name)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("learned", [True, False])
def test_marginal_scale_sets_the_mass_of_both_marginals(learned):
    x, s = torch.randn(3, 17, 6), torch.randn(3, 5, 8)
    plain = make("sa-sh", n_slots=5, ot=OTConfig(learned_marginals=learned))
    scaled = make("sa-sh", n_slots=5, ot=OTConfig(learned_marginals=learned, marginal_scale=18.0))
    (a0, b0), (a, b) = plain.marginals(x, s), scaled.marginals(x, s)
    torch.testing.assert_close(a.sum(1), torch.full((3,), 18.0))
    torch.testing.assert_close(b.sum(1), torch.full((3,), 18.0))
    # the same networks (same seed), only the mass changes
    torch.testing.assert_close(a, a0 * 18 / 5)
    torch.testing.assert_close(b, b0 * 18 / 5)
    if not learned:
        torch.testing.assert_close(b, torch.full_like(b, 18 / 5))
    # the plan carries the scaled mass
    one_iter = make("sa-sh", n_slots=5, n_iters=1,
                    ot=OTConfig(learned_marginals=learned, marginal_scale=18.0, n_sh_iters=300))
    _, attn = one_iter(x, slots=s)
    torch.testing.assert_close(attn.sum(1), one_iter.marginals(x, s)[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant,cost", [("sa", "cosine"), ("sa", "dot"), ("sa-sh", "cosine"), ("sa-sh", "l2")])
def test_cost_scale_equals_dividing_the_temperature(variant, cost):
    # exp(-(s C) / tau) == exp(-C / (tau / s)): scaling the cost by s is the temperature tau / s
    x, s0 = torch.randn(2, 12, 6), torch.randn(2, 4, 8)
    scaled = make(variant, cost, ot=OTConfig(cost_scale=6.0, tau=1.0))
    cooled = make(variant, cost, ot=OTConfig(cost_scale=1.0, tau=1 / 6))
    plain = make(variant, cost)
    out = [m(x, slots=s0) for m in (scaled, cooled, plain)]
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-5, atol=1e-5)
    assert (out[0][1] - out[2][1]).abs().max() > 1e-3


def test_cost_and_marginal_scale_in_sa_mesh_and_gradcheck():
    ot = OTConfig(cost_scale=6.0, marginal_scale=18.0)
    sa = make("sa-mesh", "cosine", n_iters=1, ot=ot)
    x, s0 = torch.randn(2, 12, 6), torch.randn(2, 4, 8)
    torch.manual_seed(1)
    _, attn = sa(x, slots=s0)
    torch.manual_seed(1)
    _, attn_plain = make("sa-mesh", "cosine", n_iters=1)(x, slots=s0)
    torch.testing.assert_close(attn.sum((1, 2)), torch.full((2,), 18.0), rtol=1e-4, atol=1e-4)
    assert (attn - attn_plain * 18 / 4).abs().max() > 1e-3  # the scaled cost gives another plan
    sa64 = make("sa-sh", "cosine", n_iters=2, ot=ot).double()
    x = torch.randn(2, 7, 6, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: sa64(x, slots=s)[0], (x, s))


def test_normalize_plan_option():
    x, s0 = torch.randn(2, 10, 6), torch.randn(2, 4, 8)
    # uniform marginals: every column already sums to 1, so normalizing changes nothing
    uni = [make("sa-sh", ot=OTConfig(learned_marginals=False, normalize_plan=f)) for f in (True, False)]
    out = [m(x, slots=s0)[0] for m in uni]
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)
    # learned marginals: the raw plan scales each slot's update by b_j
    lrn = [make("sa-sh", ot=OTConfig(normalize_plan=f)) for f in (True, False)]
    out = [m(x, slots=s0)[0] for m in lrn]
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_config_checks_and_round_trip():
    cfg = SlotAttentionConfig(n_slots=5, dim=32, input_dim=32, variant="sa-mesh", cost="l2", n_iters=3,
                              mlp_hidden=128, init="learned", implicit_grad=True, ot=OTConfig(mesh_lr=4.0))
    again = SlotAttentionConfig(**cfg.to_dict())
    assert again == cfg and isinstance(again.ot, OTConfig) and again.ot.mesh_lr == 4.0
    bad = [dict(variant="mesh"), dict(cost="euclid"), dict(init="random"), dict(n_slots=0), dict(dim=2.5),
           dict(n_iters=0), dict(implicit_grad="yes"), dict(ot=3)]
    for kw in bad:
        args = dict(n_slots=3, dim=4, input_dim=4) | kw
        with pytest.raises(ValueError, match=next(iter(kw))):
            SlotAttentionConfig(**args)
    for kw in (dict(tau=0.0), dict(n_sh_iters=0), dict(mesh_iters=-1), dict(mesh_lr=math.nan),
               dict(noise_scale=-1.0), dict(reuse_uv=1), dict(cost_scale=0.0), dict(marginal_scale=-1.0),
               dict(marginal_scale=math.inf)):
        with pytest.raises(ValueError, match=f"OTConfig.{next(iter(kw))}"):
            OTConfig(**kw)
    with pytest.raises(ValueError, match="SlotAttentionConfig"):
        SlotAttention({"n_slots": 3})


def test_bad_inputs_raise_value_error():
    sa = make("sa-mesh")
    cases = [
        (torch.randn(10, 6), None, "shape"),  # no batch dimension
        (torch.randn(2, 10, 5), None, "input_dim"),  # wrong feature size
        (torch.randn(2, 0, 6), None, "at least one"),  # empty set
        (torch.randint(0, 3, (2, 10, 6)), None, "float32"),  # integer inputs
        (torch.randn(2, 10, 6), torch.randn(2, 3, 8), "slots"),  # wrong number of slots
        (torch.randn(2, 10, 6), torch.randn(1, 4, 8), "slots"),  # wrong batch
        (torch.randn(2, 10, 6), torch.randn(2, 4, 8, dtype=torch.float64), "match"),
        ([[1.0]], None, "Tensor"),
    ]
    for x, s, msg in cases:
        with pytest.raises(ValueError, match=msg):
            sa(x, slots=s)


def test_l2_cost_matches_cdist_with_finite_gradients():
    k = torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True)
    q = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(COSTS["l2"](k, q), torch.cdist(k, q), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(COSTS["l2"], (k, q))
    k2 = k.detach().clone()
    k2[0, 0] = q[0, 0].detach()  # a key on a query: the distance is floored, its gradient is zero
    k2.requires_grad_(True)
    COSTS["l2"](k2, q).sum().backward()
    assert torch.isfinite(k2.grad).all() and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("learned", [True, False])
@pytest.mark.parametrize("x_grad", [False, True])
def test_folded_input_projections_equal_the_modules(learned, x_grad, monkeypatch):
    """k, v and the marginal network's outputs come from xhat with the LayerNorm folded into the weights
    (the marginal network in row blocks, here of 7 rows): values and gradients (parameters and, when it
    needs one, x) as applying LayerNorm, to_k, to_v and h_a one by one."""
    monkeypatch.setattr(_SetScalarMLP, "ROWS", 7)
    sa = make("sa-sh", "l2", ot=OTConfig(learned_marginals=learned)).double()
    with torch.no_grad():
        sa.norm_inputs.weight.uniform_(0.5, 1.5)
        sa.norm_inputs.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 10, 6, dtype=torch.float64, requires_grad=x_grad)
    params = [p for p in sa.parameters()] + ([x] if x_grad else [])

    def grads(k, v, logits):
        loss = (k * torch.arange(k.shape[2], dtype=k.dtype)).sum() + v.pow(2).sum()
        if logits is not None:
            loss = loss + sa._input_marginal(x, logits).pow(2).sum()
        return torch.autograd.grad(loss, params, allow_unused=True)

    k, v, logits = sa._input_projections(x)
    xn = sa.norm_inputs(x)
    k_ref, v_ref = sa.to_k(xn), sa.to_v(xn)
    h_ref = sa.input_marginal(xn).squeeze(2) if learned else None
    assert (logits is None) == (not learned)
    torch.testing.assert_close(k, k_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v, v_ref, rtol=1e-12, atol=1e-12)
    if learned:
        torch.testing.assert_close(logits, h_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads(k, v, logits), grads(k_ref, v_ref, h_ref)):
        assert (g is None) == (g_ref is None)
        if g is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("keep", [0, 2**20], ids=["recompute", "keep"])
@pytest.mark.parametrize("rows", [3, 2048])
def test_set_scalar_mlp_gradcheck_float64(rows, keep, monkeypatch):
    """The hand-written backward, in row blocks, with the hidden layer recomputed or kept from the forward."""
    monkeypatch.setattr(_SetScalarMLP, "ROWS", rows)
    monkeypatch.setattr(_SetScalarMLP, "KEEP", keep)
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SetScalarMLP.apply, (x, w1, b1, w2))
    ref = torch.relu(x @ w1.T + b1) @ w2  # the plain reference
    torch.testing.assert_close(_SetScalarMLP.apply(x, w1, b1, w2), ref, rtol=1e-12, atol=1e-12)


def test_per_slot_init_is_one_learned_vector_per_slot():
    sa = make("sa", cost="dot", init="per_slot")
    assert {n for n, _ in sa.named_parameters() if n.startswith("slots_")} == {"slots_init"}
    init = sa._init(sa, 3, torch.device("cpu"), torch.float32)
    assert init.shape == (3, 4, 8) and (init == sa.slots_init).all()
    dist = torch.cdist(sa.slots_init[0], sa.slots_init[0])
    assert dist[~torch.eye(4, dtype=torch.bool)].min() > 0  # distinct slots
    x = torch.randn(3, 7, 6)
    a, _ = sa(x)
    b, _ = sa(x)
    torch.testing.assert_close(a, b)  # nothing sampled: "sa" is deterministic
    a.sum().backward()
    assert sa.slots_init.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["sa", "sa-mesh"])
def test_runs_in_float32_under_bf16_autocast(variant):
    sa = make(variant, cost="dot" if variant == "sa" else "l2")
    x = torch.randn(2, 9, 6)
    torch.manual_seed(0)
    ref, ref_attn = sa(x)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slots, attn = sa(x)
    assert slots.dtype == attn.dtype == torch.float32
    torch.testing.assert_close(slots, ref)
    torch.testing.assert_close(attn, ref_attn)
