"""Fixtures of the kernel tests: the OT problem factory, the closeness rule, and the backend parameter.

The closeness rule (STYLE.md): the kernel's error against the float64 reference may be at most twice the error
of the reference itself run at the kernel's precision, plus a small atol relative to the values' scale.
"""
import math
from typing import NamedTuple

import pytest
import torch

from kernels import BACKENDS

F32, F64 = torch.float32, torch.float64


class Problem(NamedTuple):
    """A batch of OT problems: C (B, n, m), a (B, n), b (B, m) (both summing to m), a warm start v0 (B, m)
    (-inf at a zero column) and standard-normal noise (B, n, m)."""

    C: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    v0: torch.Tensor
    noise: torch.Tensor

    @property
    def log_a(self):
        return self.a.log()

    @property
    def log_b(self):
        return self.b.log()


def make_problem(B, n, m, seed=0, dtype=F64, scale=2.0, zero_row=False, zero_col=False) -> Problem:
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(B, n, m, generator=g, dtype=F64) * scale
    a = torch.rand(B, n, generator=g, dtype=F64) + 0.2
    b = torch.rand(B, m, generator=g, dtype=F64) + 0.2
    if zero_row:
        a[:, 1] = 0
    if zero_col:
        b[:, 0] = 0
    a = a / a.sum(1, keepdim=True) * m
    b = b / b.sum(1, keepdim=True) * m
    v0 = 0.3 * torch.randn(B, m, generator=g, dtype=F64)
    if zero_col:
        v0[:, 0] = -math.inf
    noise = torch.randn(B, n, m, generator=g, dtype=F64)
    return Problem(*(t.to(dtype) for t in (C, a, b, v0, noise)))


@pytest.fixture
def problem():
    """The factory ``problem(B, n, m, seed=0, dtype=float64, scale=2.0, zero_row=False, zero_col=False)``."""
    return make_problem


def assert_close_to_reference(out, ref64, ref_lo, atol):
    """|out - ref64| <= 2 |ref_lo - ref64| + atol * max(1, |ref64|) (max over entries); equal infinities."""
    out, ref64, ref_lo = out.double(), ref64.double(), ref_lo.double()
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref64)), "infinite entries differ from the reference"
    inf = ~torch.isfinite(ref64)
    assert torch.equal(out[inf], ref64[inf])
    fin = ~inf
    if not fin.any():
        return
    err = (out[fin] - ref64[fin]).abs().max().item()
    ref_err = (ref_lo[fin] - ref64[fin]).abs().max().item()
    scale = max(1.0, ref64[fin].abs().max().item())
    assert err <= 2 * ref_err + atol * scale, f"error {err:.3g} vs the reference's own {ref_err:.3g}"


@pytest.fixture
def close():
    """The closeness rule ``close(out, ref64, ref_lo, atol)`` of the module docstring."""
    return assert_close_to_reference


def pytest_generate_tests(metafunc):
    """``backend``: every name of ``kernels.BACKENDS`` (Triton in its interpreter on CPU tensors without a GPU:
    the root conftest sets TRITON_INTERPRET), except Triton for tests marked ``large_shapes``, whose shapes
    the interpreter would take minutes over (tests/kernels/test_triton_ot.py checks those properties of the
    Triton kernels at small shapes)."""
    if "backend" in metafunc.fixturenames and not any(m.name == "parametrize" and "backend" in m.args[0]
                                                      for m in metafunc.definition.iter_markers()):
        large = metafunc.definition.get_closest_marker("large_shapes") is not None
        metafunc.parametrize("backend", [b for b in BACKENDS if not (large and b == "triton")])


def pytest_configure(config):
    config.addinivalue_line("markers", "large_shapes: a kernel test too large for the Triton interpreter")
