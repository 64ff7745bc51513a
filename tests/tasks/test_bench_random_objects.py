"""Benchmark of one training step of the random-objects model (Table 1's setting, App. F.1), per variant:
``pytest --benchmark-only tests/tasks/test_bench_random_objects.py``.

One step = forward of slot attention (3 iterations, implicit differentiation: 2 without gradient and 1
with), the Hungarian-matched MSE, backward and an Adam update, at batch 64 with 5 objects among 100
zero vectors in 32 dimensions. SA is the baseline ("vs base" < 1 means slower than SA: the issue's
number to watch is SA-MESH's step time over SA's). The OT variants run with the default CPU backend
(the fused C++ loops, what ``python -m tasks.random_objects`` uses); SA-MESH also with the plain
PyTorch path ("sa-mesh torch") and with MESH's warm-start gradient ("sa-mesh wsg",
``OTConfig(warm_start_grad=True)``). One torch thread, and glibc told to keep freed memory, as the
training loop does on CPU (``slots.train.retain_freed_memory``). Each role must lower the training loss.
"""
import pytest
import torch

from slots import OTConfig, hungarian_mse_loss
from slots.train import retain_freed_memory
from tasks.random_objects.data import make_split
from tasks.random_objects.model import ModelConfig, RandomObjectsModel

ROLES = [("baseline", "sa", None), ("sa-sh", "sa-sh", None), ("sa-emd", "sa-emd", None),
         ("sa-mesh", "sa-mesh", None), ("sa-mesh torch", "sa-mesh", "torch"), ("sa-mesh wsg", "sa-mesh", "wsg")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    retain_freed_memory()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("role,variant,backend", ROLES, ids=[r[0] for r in ROLES])
def test_bench_train_step(benchmark, bench_record, role, variant, backend):
    benchmark.group = "random objects: train step (B=64)"
    torch.manual_seed(0)
    ot = OTConfig(warm_start_grad=True) if backend == "wsg" else OTConfig(backend=backend)
    model = RandomObjectsModel(ModelConfig(variant=variant, ot=ot))
    opt = torch.optim.AdamW(model.parameters(), 4e-4, weight_decay=0.0, fused=True)  # as slots.train
    x, target = make_split("train", 64, 0.01, 0)[torch.arange(64)]

    def step():
        loss = hungarian_mse_loss(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    first = step()
    loss = benchmark.pedantic(step, rounds=5, iterations=10, warmup_rounds=1)
    note = "warm-start gradient" if backend == "wsg" else f"backend {backend or 'default'}"
    bench_record(role, f"{variant}, {note}")
    assert loss < first  # 60 steps of training on one batch lower its loss
