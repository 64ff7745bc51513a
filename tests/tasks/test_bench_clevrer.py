"""Benchmark of one training step of the CLEVRER video model (Table 5's setting, App. F.4), per variant:
``pytest --benchmark-only tests/tasks/test_bench_clevrer.py``.

One step = both frames through the encoder, slot attention on frame 1 and on frame 2 from frame 1's slots
(3 iterations each, 8 slots of 64, cosine cost scaled by 6, marginals of mass 18), both frames decoded at
64 x 64, the MSE, backward and an Adam update, at the CPU budget's batch of 8 pairs of generated
CLEVRER-L frames. SA is the baseline ("vs base" < 1 means slower than SA: the issue's number to watch is
SA-MESH's step time over SA's, target <= 1.1x). Every variant runs with the speed options of the
experiment (bf16 autocast of the convolutions where bfloat16 is native, ``slots.native_bf16``; channels-last;
the factored first decoder layer; slot attention in float32); "sa plain fp32" is SA without them, to show
what they buy. One torch thread, and glibc told to keep freed memory, as a training run of ``--jobs 2`` does
on two cores.

The clock is this process's CPU time (``time.process_time``), not wall time: with one torch thread (the C++
OT loops follow torch's thread count) the two are equal on an idle machine, and on a machine shared with
other jobs the CPU time still compares the variants fairly, where wall time measures the load of the moment
(steps of seconds, five rounds per variant, run one variant after the other).
"""
import dataclasses
import time

import pytest
import torch

from slots import native_bf16
from tasks.clevrer.data import load_clevrer
from tasks.clevrer.experiment import TASK, ClevrerConfig
from tasks.clevrer.model import VideoSlotAutoencoder

BATCH = 8
ROLES = [("baseline", "sa", True), ("sa plain fp32", "sa", False), ("sa-sh", "sa-sh", True),
         ("sa-mesh", "sa-mesh", True)]
SPEED_OPTIONS = ("bf16 + " if native_bf16("cpu") else "") + "channels-last + factored broadcast"


pytestmark = pytest.mark.usefixtures("bench_threads")


@pytest.fixture(scope="module")
def frames():
    return load_clevrer("L", "train", num_videos=BATCH, progress=False).images  # (8, 2, 3, 64, 64) uint8


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("role,variant,fast", ROLES, ids=[r[0] for r in ROLES])
def test_bench_video_train_step(benchmark, bench_record, frames, role, variant, fast):
    benchmark.group = f"CLEVRER video: train step (B={BATCH})"
    torch.manual_seed(0)
    cfg = ClevrerConfig(data="L", bf16=fast and native_bf16("cpu"), channels_last=fast)
    model_cfg = cfg.model(variant)
    model_cfg.autoencoder = dataclasses.replace(model_cfg.autoencoder, factored_broadcast=fast)
    model = VideoSlotAutoencoder(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), 4e-4, weight_decay=0.0, fused=True)  # as slots.train

    def step():
        loss = TASK.loss(model, frames)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        return loss.detach()

    loss = benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    bench_record(role, f"{variant}, {'plain float32' if not fast else SPEED_OPTIONS}")
    assert torch.isfinite(loss)
