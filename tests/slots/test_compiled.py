"""Tests of slots.compiled: the inductor-compiled forward of slot attention gives the eager values and gradients
for every variant (the OT plans and hand-written autograd functions running eagerly between compiled graphs),
draws the eager random numbers, and leaves the module's parameters and state_dict keys as they were."""
import itertools

import pytest
import torch

from slots import ATTENTION_VARIANTS, OTConfig, SlotAttention, SlotAttentionConfig, compile_model


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test starts and ends with torch.compile's caches and counters cleared."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def make(variant, seed=0, **ot):
    torch.manual_seed(seed)
    cost = "dot" if variant == "sa" else "l2"
    return SlotAttention(SlotAttentionConfig(n_slots=3, dim=8, input_dim=6, variant=variant, cost=cost, n_iters=3,
                                             mlp_hidden=16, implicit_grad=True, ot=OTConfig(**ot))).double()


def _run(sa, x):
    """slots (B, m, dim), plan (B, n, m) and the gradients of a loss of both (x and every parameter), from the
    module's own random initial slots and MESH noise, drawn after seeding."""
    torch.manual_seed(1)
    slots, attn = sa(x)
    loss = slots.sin().sum() + (attn * torch.linspace(0, 1, attn.numel(), dtype=x.dtype).view_as(attn)).square().sum()
    return slots, attn, torch.autograd.grad(loss, [x] + list(sa.parameters()), allow_unused=True)


CASES = [pytest.param(v, {}, marks=[pytest.mark.slow] + [pytest.mark.needs_emd] * ATTENTION_VARIANTS[v].needs_emd)
         for v in sorted(ATTENTION_VARIANTS)]
CASES += [pytest.param("sa-mesh", dict(learn_mesh_lr=True), marks=pytest.mark.slow, id="sa-mesh-learned-lr")]


@pytest.mark.parametrize("variant,ot", CASES)
def test_compiled_equals_eager(variant, ot):
    """Slots, plan and the gradients of x and every parameter of the compiled module equal the eager module's up
    to float64 rounding, the random initial slots and MESH noise included; the compiled module did run graphs."""
    eager, compiled = make(variant, **ot), compile_model(make(variant, **ot))
    x = torch.randn(2, 7, 6, dtype=torch.float64, requires_grad=True)
    slots_ref, attn_ref, grads_ref = _run(eager, x)
    for _ in range(2):  # the first call compiles, the second runs the compiled graphs
        slots, attn, grads = _run(compiled, x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    torch.testing.assert_close(slots, slots_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attn, attn_ref, rtol=1e-10, atol=1e-10)
    scale = max(g.abs().max() for g in grads_ref if g is not None)  # entries that are zero up to rounding
    for (name, _), g, g_ref in zip(itertools.chain([("x", x)], eager.named_parameters()), grads, grads_ref):
        assert (g is None) == (g_ref is None), name
        if g is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12 * scale, msg=name)
    assert grads[0].abs().sum() > 0


def test_compile_model_keeps_the_module():
    """compile_model compiles in place: the same module, parameters and state_dict keys (a checkpoint of the
    compiled model loads into an eager one), and nothing compiles before the first call."""
    sa = make("sa")
    params, keys = list(sa.parameters()), list(sa.state_dict())
    assert compile_model(sa) is sa
    assert all(p is q for p, q in zip(sa.parameters(), params)) and list(sa.state_dict()) == keys
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    make("sa", seed=1).load_state_dict(sa.state_dict())
