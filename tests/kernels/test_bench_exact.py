"""Benchmarks of the batched exact EMD (issue 3): ``pytest --benchmark-only tests/kernels/test_bench_exact.py``.

For each shape (B, n, m) in SHAPES, in one run, float64 numpy inputs (POT's fastest path):
    naive         a Python loop over POT's ``ot.emd`` (one network simplex per problem, what the paper
                  used for SA-EMD)
    ours          ``kernels.exact.emd`` on the whole batch, all cores (``num_threads=None``)
    ours-1thread  the same with ``num_threads=1``: the per-problem speed without the thread pool
The table at the end (tests/kernels/conftest.py) gives the speed-up of each over the POT loop.
Inputs follow Slot Attention's defaults (App. A): costs in [0, 1), uniform row marginals m / n and
column marginals 1.
"""
import functools

import numpy as np
import ot
import pytest

from kernels.exact import emd

SHAPES = [(64, 105, 5), (64, 1024, 7), (64, 4096, 11)]
ROLES = ["naive", "ours", "ours-1thread"]


def _id(shape):
    return "x".join(map(str, shape))


@functools.lru_cache(maxsize=None)
def _problem(shape):
    B, n, m = shape
    rng = np.random.default_rng(0)
    C = rng.random((B, n, m))
    a = np.full((B, n), m / n)
    b = np.ones((B, m))
    return C, a, b


def _pot_loop(C, a, b):
    return np.stack([ot.emd(a[k], b[k], C[k]) for k in range(C.shape[0])])


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_emd_batch(benchmark, bench_record, shape, role):
    C, a, b = _problem(shape)
    benchmark.group = f"emd {_id(shape)}"
    if role == "naive":
        fn, note = functools.partial(_pot_loop, C, a, b), "loop over POT ot.emd"
    elif role == "ours":
        fn, note = functools.partial(emd, C, a, b), "kernels.emd, all threads"
    else:
        fn, note = functools.partial(emd, C, a, b, num_threads=1), "kernels.emd, 1 thread"
    rounds = 3 if shape[1] * shape[2] > 10_000 else 10
    P = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    bench_record(role, note)
    # the timed function must have solved the problems: optimal cost of the first one
    assert np.isclose((C[0] * P[0]).sum(), ot.emd2(a[0], b[0], C[0]), rtol=1e-6, atol=0)
