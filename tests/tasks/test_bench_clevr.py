"""Benchmarks of one CLEVR set-prediction training step (Sec. 5.2, App. F.2) at the paper's shape:
``pytest --benchmark-only tests/tasks/test_bench_clevr.py``.

One step = the model's forward on a batch of 64 images of 128 x 128 (slot attention over 32 x 32 = 1,024
inputs, 10 slots, 3 iterations with implicit differentiation), the Hungarian-matched Huber loss, backward and a
fused AdamW update, as ``slots.train`` does. Groups, each run side by side in one session:

* "clevr: train step, ours vs plain float32": SA-MESH's step as ``python -m tasks.clevr`` runs it ("ours":
  convolutions under bfloat16 autocast in channels-last memory) against the plain float32 eager version of the
  same model ("baseline": float32 convolutions on NCHW tensors). The issue's target: ours >= 1.5x faster.
* "clevr: train step per variant": SA (the baseline), SA-SH, SA-EMD and SA-MESH, all as ``python -m tasks.clevr``
  runs them. The issue's targets: SA-MESH's step at most 1.15x SA's, SA-EMD's at most 2x ("vs base" >= 0.87
  and >= 0.5).
* "clevr: slot attention alone, fwd+bwd": the slot-attention module of each variant on the encoder's output
  shape (64, 1,024, 64), forward and backward: where the variants differ, without the shared encoder.

Threads: OT_BENCH_THREADS torch threads (default 1, what each of the two runs of ``python -m tasks.clevr`` gets
on a 2-core machine, one job per core by default); the exact EMD of SA-EMD uses its own pool, every core of this
process (``kernels.exact.emd``'s default, printed in the note). glibc keeps freed memory, as in training.
"""

import pytest
import torch

from slots import hungarian_huber_loss
from tasks.clevr import ClevrModelConfig, ClevrSet, ClevrSetModel, set_prediction_targets
from tasks.pool import cores as emd_threads  # kernels.exact.emd's default: every core of this process

B, IMAGE = 64, 128
VARIANTS = [("baseline", "sa"), ("sa-sh", "sa-sh"), ("sa-emd", "sa-emd"), ("sa-mesh", "sa-mesh")]


pytestmark = pytest.mark.usefixtures("bench_threads")


def _batch(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """64 random images as the training set serves them (float in [-1, 1]) and CLEVR-like targets."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (B, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=g)
    presence = torch.arange(10)[None, :] < torch.randint(3, 11, (B, 1), generator=g)
    targets = set_prediction_targets(torch.rand(B, 10, 18, generator=g), presence)
    batch = ClevrSet(images, targets)[torch.arange(B)]
    image = batch["image"] if channels_last else batch["image"].contiguous()
    return image, batch["target"]


def _train_step(model: torch.nn.Module, image: torch.Tensor, target: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), 4e-4, weight_decay=0.0, fused=True)  # as slots.train

    def step():
        loss = hungarian_huber_loss(model(image), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


@pytest.mark.parametrize("role", ["baseline", "ours"])
def test_bench_train_step_vs_plain_float32(benchmark, bench_record, role):
    benchmark.group = f"clevr: train step, ours vs plain float32 (B={B}, {IMAGE}x{IMAGE})"
    ours = role == "ours"
    torch.manual_seed(0)
    model = ClevrSetModel(ClevrModelConfig.of("sa-mesh", image_size=IMAGE, bf16=ours, channels_last=ours))
    loss = benchmark.pedantic(_train_step(model, *_batch(ours)), rounds=3, iterations=1, warmup_rounds=1)
    bench_record(role, "bf16 autocast convolutions, channels-last" if ours else "float32, NCHW, eager")
    assert torch.isfinite(loss)


@pytest.mark.parametrize("role,variant", VARIANTS, ids=[v for _, v in VARIANTS])
def test_bench_train_step_per_variant(benchmark, bench_record, role, variant):
    benchmark.group = f"clevr: train step per variant (B={B}, 1024 inputs, 10 slots)"
    torch.manual_seed(0)
    model = ClevrSetModel(ClevrModelConfig.of(variant, image_size=IMAGE, bf16=True))
    loss = benchmark.pedantic(_train_step(model, *_batch(True)), rounds=5, iterations=1, warmup_rounds=1)
    bench_record(role, variant + (f", EMD on {emd_threads()} thread(s)" if variant == "sa-emd" else ""))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("role,variant", VARIANTS, ids=[v for _, v in VARIANTS])
def test_bench_slot_attention_alone(benchmark, bench_record, role, variant):
    benchmark.group = f"clevr: slot attention alone, fwd+bwd (B={B}, n=1024, m=10)"
    torch.manual_seed(0)
    sa = ClevrSetModel(ClevrModelConfig.of(variant, image_size=IMAGE)).slot_attention
    x = torch.randn(B, (IMAGE // 4) ** 2, 64, requires_grad=True)  # the encoder's output: (B, n, 64)

    def step():
        slots, _ = sa(x)
        slots.square().mean().backward()
        return slots.detach()

    slots = benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    bench_record(role, variant + (f", EMD on {emd_threads()} thread(s)" if variant == "sa-emd" else ""))
    assert torch.isfinite(slots).all()
