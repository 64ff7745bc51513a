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
plain path is today's code of those, not a copy of their older versions. Each variant's two steps run back to
back (pytest-benchmark runs roles one after the other: on a busy machine, load changes between roles show).
The printed table gives each role's speed-up over the plain SA step ("vs base"), and in the note the time of
each OT variant over SA's (both default, and both plain), and of each variant over its plain step. SA-MESH
also runs with the plain PyTorch OT path ("sa-mesh torch") and with MESH's warm-start gradient ("sa-mesh wsg").
The OT variants use the default CPU backend (the fused C++ loops). One torch thread, and glibc told to keep
freed memory, as the training loop does on CPU (``slots.train.retain_freed_memory``). Every role must lower
the training loss of its batch.
"""
import dataclasses

import numpy as np
import pytest
import torch

from slots import hungarian_mse_loss, losses, pairwise_mse
from tasks.random_objects.experiment import RandomObjectsConfig
from tasks.random_objects.model import RandomObjectsModel
from tasks.random_objects.profile import train_step

VARIANTS = ["sa", "sa-sh", "sa-emd", "sa-mesh"]
# each variant's plain and default steps one after the other, so that a busy machine's drift between them is small
ROLES = [role for v in VARIANTS for role in ((f"{v} plain" if v != "sa" else "baseline", v, "plain"), (v, v, "fast"))]
ROLES += [("sa-mesh torch", "sa-mesh", "torch"), ("sa-mesh wsg", "sa-mesh", "wsg")]


pytestmark = pytest.mark.usefixtures("bench_threads")


def _plain_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The matched MSE as computed before the batched matching: pred (B, m, D), target (B, k, D) -> ()."""
    cost = pairwise_mse(pred, target)  # (B, k, m), with gradient for every pair
    idx = losses._assign_hungarian(cost.detach().double().numpy(), np.ones(cost.shape[:2], dtype=bool))
    return cost.gather(2, torch.from_numpy(idx)[:, :, None]).mean()


def _model(variant: str, path: str) -> RandomObjectsModel:
    cfg = RandomObjectsConfig().model(variant)
    if path in ("torch", "wsg"):
        cfg.ot = dataclasses.replace(cfg.ot, **({"backend": "torch"} if path == "torch" else {"warm_start_grad": True}))
    model = RandomObjectsModel(cfg)
    model.slot_attention.fast = path != "plain"
    return model


@pytest.mark.parametrize("role,variant,path", ROLES, ids=[r[0] for r in ROLES])
def test_bench_train_step(benchmark, bench_record, role, variant, path):
    benchmark.group = "random objects: train step (B=64)"
    torch.manual_seed(0)
    step = train_step(_model(variant, path), _plain_loss if path == "plain" else hungarian_mse_loss)
    first = step()
    loss = benchmark.pedantic(step, rounds=5, iterations=10, warmup_rounds=1)
    note = {"plain": "plain eager path (before)", "fast": "default path", "torch": "OT backend torch",
            "wsg": "warm-start gradient"}[path]
    versus = []
    if variant != "sa" and path in ("plain", "fast"):
        versus.append("baseline" if path == "plain" else "sa")
    if path == "fast":
        versus.append("baseline" if variant == "sa" else f"{variant} plain")
    bench_record(role, f"{variant}, {note}", versus=versus)
    assert loss < first  # 60 steps of training on one batch lower its loss
