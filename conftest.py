"""Root pytest configuration.

- Plain `pytest` runs the tests; `pytest --benchmark-only` runs the benchmarks (they are skipped
  otherwise, so the test suite stays fast).
- Without a GPU, Triton kernels run in the interpreter on CPU tensors. The variable must be set before
  any module that defines a `@triton.jit` function is imported.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    if not config.getoption("benchmark_only", default=False):
        config.option.benchmark_skip = True
