"""Where the time of one random-objects training step goes: ``python -m tasks.random_objects.profile``.

For each variant, the main job's model (``RandomObjectsConfig().model(variant)``) and training step (the data
batch, forward, Hungarian-matched MSE, backward, gradient clipping, fused AdamW), one torch thread, under the
torch profiler: the step time without the profiler, and the operations with the largest share of the
profiled self CPU time ("other" is the step time the profiler does not attribute to an operation: Python,
the matching, EMD's solver threads). ``--plain`` profiles ``SlotAttention(fast=False)`` instead of the
default path; ``--compiled`` the model's forward compiled by inductor (``slots.compile_model``; the compilation
happens in the warm-up steps, outside the timings).
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from slots import compile_model, hungarian_mse_loss
from slots.train import retain_freed_memory

from .data import make_split
from .experiment import BUDGETS, VARIANTS, RandomObjectsConfig
from .model import RandomObjectsModel

__all__ = ["train_step", "profile_variant", "main"]


def train_step(model: RandomObjectsModel, loss_fn=hungarian_mse_loss):
    """A closure running one training step of ``model`` on a fixed batch of 64 at sigma 0.01 (the main job's
    data, loss, clipping and optimizer settings, ``BUDGETS["paper"]``), returning the loss before the update."""
    budget = BUDGETS["paper"]
    opt = torch.optim.AdamW(model.parameters(), budget.lr, weight_decay=0.0, fused=True)  # as slots.train
    data, idx = make_split("train", 64, 0.01, 0), torch.arange(64)

    def step() -> torch.Tensor:
        x, target = data[idx]  # (64, 105, 32), (64, 5, 32)
        loss = loss_fn(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), budget.grad_clip)
        opt.step()
        return loss.detach()

    return step


def _model(variant: str, fast: bool, compiled: bool = False) -> RandomObjectsModel:
    torch.manual_seed(0)
    model = RandomObjectsModel(RandomObjectsConfig().model(variant))
    model.slot_attention.fast = fast
    return compile_model(model) if compiled else model


def profile_variant(variant: str, fast: bool = True, steps: int = 30, top: int = 6,
                    compiled: bool = False) -> tuple[float, list]:
    """Step time (ms, median of 5 timings of ``steps`` steps) and [(operation, share of the step, ms per step)]
    for the ``top`` operations by self CPU time, then "other"; ``compiled`` compiles the model's forward first."""
    step = train_step(_model(variant, fast, compiled))
    for _ in range(5):
        step()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps * 1e3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps * 1e3
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    rows = [(e.key, e.self_cpu_time_total / 1e3 / steps) for e in events[:top]]
    attributed = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    rows.append(("other", max(wall - attributed, 0.0)))
    return sorted(times)[2], [(name, ms / wall, ms) for name, ms in rows]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, action="append", help="default: all four")
    parser.add_argument("--plain", action="store_true", help="profile SlotAttention(fast=False)")
    parser.add_argument("--compiled", action="store_true", help="compile the model's forward (slots.compile_model)")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    retain_freed_memory()
    torch.set_num_threads(1)
    print("| variant | step (ms) | where the time goes (share of the profiled step, ms per step) |")
    print("|---|---|---|")
    for variant in args.variant or VARIANTS:
        ms, rows = profile_variant(variant, fast=not args.plain, steps=args.steps, compiled=args.compiled)
        where = ", ".join(f"{name} {share:.0%} ({t:.2f})" for name, share, t in rows)
        label = variant + " (plain)" * args.plain + " (compiled)" * args.compiled
        print(f"| {label} | {ms:.2f} | {where} |", flush=True)


if __name__ == "__main__":
    main()
