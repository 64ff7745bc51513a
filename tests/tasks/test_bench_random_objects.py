"""Benchmark of one training step of the random-objects model (Table 1's setting, App. F.1), per variant,
before and after the speed work on slot attention and the matching, side by side in one run:
``pytest --benchmark-only tests/tasks/test_bench_random_objects.py``.

One step = the data batch (``RandomObjects[idx]``), slot attention (3 iterations, implicit differentiation:
2 without gradient and 1 with), the Hungarian-matched MSE, backward, gradient-norm clipping and an AdamW
update, at batch 64 with 5 objects among 100 zero vectors in 32 dimensions: the model of the main job
(``RandomObjectsConfig().model(variant)``: the slots are the predictions) and the training loop's optimizer
settings (``experiment.BUDGETS["paper"]``): ``tasks.random_objects.profile.train_step``.

Roles, per variant (SA, SA-SH, SA-EMD, SA-MESH):
    "<variant> plain"  the plain eager path, as before: ``SlotAttention(fast=False)`` (the formulas as
                       written, rows are inputs) and the matching loss through the whole (B, k, m) cost
                       matrix with one ``scipy.optimize.linear_sum_assignment`` per batch element. SA's is
                       the group's baseline ("baseline").
    "<variant>"        the default path: ``SlotAttention``'s fast iteration and the batched exact matching.
Both paths share the OT kernels and the input-marginal network's autograd function (``_SetScalarMLP``), so the
plain path is today's code of those, not a copy of their older versions. Each variant's steps run back to back
(pytest-benchmark runs roles one after the other: on a busy machine, load changes between roles show).
The printed table gives each role's speed-up over the plain SA step ("vs base"), and in the note the time of
each OT variant over SA's (both default, and both plain), and of each variant over its plain step. SA-MESH
also runs with the plain PyTorch OT path ("sa-mesh torch") and with MESH's warm-start gradient ("sa-mesh wsg").
The OT variants use the default CPU backend (the fused C++ loops). One torch thread, and glibc told to keep
freed memory, as the training loop does on CPU (``slots.train.retain_freed_memory``). Every role must lower
the training loss of its batch.

    "<variant> compiled"  the default path with the model's forward compiled by inductor
                       (``slots.compile_model``; the OT plans run eagerly between compiled graphs), right after
                       the variant's default step. Its first call compiles (torch.compile's caches cleared
                       before; inductor's on-disk cache of generated code kept, unless
                       ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` for a cold compile): the note gives that call's
                       time, and the number of steps after which compiling has paid for itself (the first call's
                       excess over a compiled step, over the time a step saves against the default path;
                       "never" where the compiled step is not faster).
    "official sa-sh" / "official sa-mesh"  the official MESH code's ``SlotAttentionVariant`` (davzha/MESH at
                       c7e8320, attention "sinkhorn" / "mesh"), imported from the folder named by the
                       environment variable ``MESH_OFFICIAL_DIR`` (its ``slot_attention.py`` and ``mesh.py``;
                       they need einops) and built with the main job's options: 3 iterations with the slots
                       detached before each, the l2 cost, marginals of mass 5, 5 Sinkhorn iterations, MESH with 4
                       steps warm-starting Sinkhorn, the main job's MESH step size, and initial slots drawn from
                       the learned Gaussian and scaled by the main job's initial-slot scale. Same step, loss and
                       optimizer; the note gives its time over ours. Skipped, with the reason, when the variable
                       is unset or the folder or einops is missing.
"""
import dataclasses
import importlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slots import compile_model, hungarian_mse_loss, losses, pairwise_mse
from tasks.random_objects.experiment import RandomObjectsConfig
from tasks.random_objects.model import RandomObjectsModel
from tasks.random_objects.profile import train_step

VARIANTS = ["sa", "sa-sh", "sa-emd", "sa-mesh"]
# each variant's plain, default and compiled steps in a row, so that a busy machine's drift between them is small
ROLES = [role for v in VARIANTS for role in ((f"{v} plain" if v != "sa" else "baseline", v, "plain"), (v, v, "fast"),
                                             (f"{v} compiled", v, "compiled"))]
ROLES += [("sa-mesh torch", "sa-mesh", "torch"), ("sa-mesh wsg", "sa-mesh", "wsg")]
ROLES += [("official sa-sh", "sa-sh", "official"), ("official sa-mesh", "sa-mesh", "official")]
OFFICIAL_DIR = "MESH_OFFICIAL_DIR"
OFFICIAL_KINDS = {"sa-sh": "sinkhorn", "sa-mesh": "mesh"}  # the official code's attention_type
_DEFAULT_MS = {}  # variant -> median of its default step (ms), for the compiled role's break-even


pytestmark = pytest.mark.usefixtures("bench_threads")


def _plain_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The matched MSE as computed before the batched matching: pred (B, m, D), target (B, k, D) -> ()."""
    cost = pairwise_mse(pred, target)  # (B, k, m), with gradient for every pair
    idx = losses._assign_hungarian(cost.detach().double().numpy(), np.ones(cost.shape[:2], dtype=bool))
    return cost.gather(2, torch.from_numpy(idx)[:, :, None]).mean()


def _official_class():
    """The official ``SlotAttentionVariant`` from the folder ``$MESH_OFFICIAL_DIR``, or a skip that says why not."""
    folder = os.environ.get(OFFICIAL_DIR)
    if not folder:
        pytest.skip(f"set {OFFICIAL_DIR} to the folder of the official MESH code (davzha/MESH at c7e8320: "
                    "slot_attention.py, mesh.py) to run the official roles")
    if not (Path(folder) / "slot_attention.py").is_file() or not (Path(folder) / "mesh.py").is_file():
        pytest.skip(f"{OFFICIAL_DIR}={folder} holds no slot_attention.py and mesh.py of the official MESH code")
    pytest.importorskip("einops", reason="the official MESH code needs einops")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # slot_attention.py imports its neighbour as the top-level module "mesh"
    return importlib.import_module("slot_attention").SlotAttentionVariant


class _Args(dict):
    """The official code reads its ``mesh_args`` as attributes (a Hydra config there)."""

    __getattr__ = dict.__getitem__


class _Official(nn.Module):
    """The official SA-SH / SA-MESH module in the main job's setting: x (B, 105, 32) -> slots (B, 5, 32), from
    initial slots drawn from its learned Gaussian and scaled by ``init_scale``."""

    def __init__(self, variant: str):
        super().__init__()
        mcfg = RandomObjectsConfig().model(variant)
        self.init_scale = mcfg.init_scale
        mesh_args = _Args(n_sh_iters=mcfg.ot.n_sh_iters, reuse_u_v=mcfg.ot.reuse_uv, n_mesh_iters=mcfg.ot.mesh_iters)
        self.sa = _official_class()(
            d_in=mcfg.dim, d_slot=mcfg.dim, n_slots=mcfg.n_slots, d_mlp=mcfg.mlp_hidden,
            attention_type=OFFICIAL_KINDS[variant], n_sa_iters=mcfg.n_iters, pairwise_distance=mcfg.cost,
            temperature=mcfg.ot.tau, scale_marginals=mcfg.ot.marginal_scale or mcfg.n_slots,
            scale_cost=mcfg.ot.cost_scale, n_sh_iters=mcfg.ot.n_sh_iters, learn_mesh_lr=False,
            mesh_lr=mcfg.ot.mesh_lr, init_slot_method="learned_random", detach_slots=True, mesh_args=mesh_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape[0], self.sa.n_slots, self.sa.d_slot, dtype=x.dtype)  # (B, 5, 32)
        return self.sa(x, initial_slots=self.init_scale * (self.sa.slots_mu + self.sa.slots_log_sigma.exp() * noise))


def _model(variant: str, path: str) -> nn.Module:
    if path == "official":
        return _Official(variant)
    cfg = RandomObjectsConfig().model(variant)
    if path in ("torch", "wsg"):
        cfg.ot = dataclasses.replace(cfg.ot, **({"backend": "torch"} if path == "torch" else {"warm_start_grad": True}))
    model = RandomObjectsModel(cfg)
    model.slot_attention.fast = path != "plain"
    return compile_model(model) if path == "compiled" else model


@pytest.mark.parametrize("role,variant,path", ROLES, ids=[r[0] for r in ROLES])
def test_bench_train_step(benchmark, bench_record, role, variant, path):
    benchmark.group = "random objects: train step (B=64)"
    torch.manual_seed(0)
    torch._dynamo.reset()  # a compiled role compiles from scratch, and no earlier role's graphs stay cached
    step = train_step(_model(variant, path), _plain_loss if path == "plain" else hungarian_mse_loss)
    start = time.perf_counter()
    first = step()  # the compiled role compiles here
    first_s = time.perf_counter() - start
    loss = benchmark.pedantic(step, rounds=5, iterations=10, warmup_rounds=1)
    note = {"plain": "plain eager path (before)", "fast": "default path", "compiled": "default path compiled",
            "torch": "OT backend torch", "wsg": "warm-start gradient", "official": "the official module"}[path]
    versus = []
    if variant != "sa" and path in ("plain", "fast"):
        versus.append("baseline" if path == "plain" else "sa")
    if path == "fast":
        versus.append("baseline" if variant == "sa" else f"{variant} plain")
    if path in ("compiled", "official"):
        versus.append(variant)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and path == "fast":
        _DEFAULT_MS[variant] = stats.stats.median * 1e3
    if stats is not None and path == "compiled":
        step_ms = stats.stats.median * 1e3
        saved_ms = _DEFAULT_MS.get(variant, float("nan")) - step_ms
        pays = (f"pays for itself after {(first_s * 1e3 - step_ms) / saved_ms:.0f} steps" if saved_ms > 0
                else "never pays for itself")
        note += f", first call {first_s:.1f} s, compiling {pays}"
        print(f"\n{role}: first call (compiles) {first_s:.1f} s, step {step_ms:.2f} ms, default step "
              f"{_DEFAULT_MS.get(variant, float('nan')):.2f} ms: compiling {pays}")
    bench_record(role, f"{variant}, {note}", versus=versus)
    assert loss < first  # 60 steps of training on one batch lower its loss
