"""Tests of the compiled emd_cpp._core: status codes, exact-scaling edge cases, the solver cache, and the error
of a build without LEMON.

The public API (kernels.exact.emd) is tested in tests/kernels/test_exact.py; here the core is called
directly: an invalid problem must come back with its own status for its own batch element (never a
crash), and the integer scaling must stay exact at extreme cost magnitudes.
"""
import dataclasses

import numpy as np
import ot
import pytest
import torch

import emd_cpp
import kernels
from slots import SlotAttention, SlotAttentionConfig

needs_emd = pytest.mark.needs_emd
OPTIMAL = int(emd_cpp.Status.OPTIMAL)
BAD_COST = int(emd_cpp.Status.INVALID_COST)
BAD_MARGINAL = int(emd_cpp.Status.INVALID_MARGINAL)
MISMATCH = int(emd_cpp.Status.MASS_MISMATCH)


def _problem(B, n, m, seed):
    rng = np.random.default_rng(seed)
    C = rng.random((B, n, m))
    a = rng.random((B, n)) + 0.1
    b = rng.random((B, m)) + 0.1
    return C, a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)


def test_exports_and_constants():
    emd_names = ["solve_batch", "SUPPLY_TOTAL", "cost_bits", "cache_stats"]
    both = ["HAS_EMD", "Status", "EMDUnavailableError", "require_emd", "sinkhorn_fwd", "sinkhorn_bwd", "mesh_fwd",
            "mesh_bwd"]
    assert sorted(emd_cpp.__all__) == sorted(both + emd_names * emd_cpp.HAS_EMD)
    assert [hasattr(emd_cpp._core, name) for name in emd_names] == [emd_cpp.HAS_EMD] * 4
    if emd_cpp.HAS_EMD:
        assert emd_cpp.SUPPLY_TOTAL == 2**52
    S = emd_cpp.Status
    codes = [S.OPTIMAL, S.INFEASIBLE, S.UNBOUNDED, S.INVALID_COST, S.INVALID_MARGINAL, S.MASS_MISMATCH, S.NOT_SOLVED,
             S.INVALID_WARM_START, S.INVALID_NOISE, S.COST_OVERFLOW, S.LOG_DOMAIN]
    assert [int(c) for c in codes] == list(range(11))


def test_without_lemon_require_emd_says_how_to_install_it(without_emd):
    with pytest.raises(emd_cpp.EMDUnavailableError) as e:
        emd_cpp.require_emd()
    message = str(e.value)
    assert message == emd_cpp.MISSING_LEMON and isinstance(e.value, RuntimeError)
    for how in ("apt-get install liblemon-dev", "conda install -c conda-forge lemon", "LEMON_DIR", "pip install ."):
        assert how in message


@needs_emd
def test_require_emd_passes_where_lemon_was_built():
    emd_cpp.require_emd()


def test_without_lemon_every_emd_entry_point_raises_that_error(without_emd):
    """kernels.emd, kernels.emd_attention and an sa-emd model fail with the one message; Sinkhorn, MESH and the
    other variants still run."""
    g = torch.Generator().manual_seed(0)
    C = torch.rand(2, 5, 3, generator=g, dtype=torch.float64)
    a, b = torch.full((2, 5), 0.6, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    config = SlotAttentionConfig(n_slots=3, dim=8, input_dim=6, variant="sa-emd")
    for call in (lambda: kernels.emd(C, a, b), lambda: kernels.emd(C.numpy(), a.numpy(), b.numpy()),
                 lambda: kernels.emd_attention(C, a, b), lambda: SlotAttention(config)):
        with pytest.raises(emd_cpp.EMDUnavailableError) as e:
            call()
        assert str(e.value) == emd_cpp.MISSING_LEMON
    P, _, _ = kernels.sinkhorn(C, a, b, n_iters=50)
    assert torch.allclose(P.sum(1), b, atol=1e-6)
    slots, _ = SlotAttention(dataclasses.replace(config, variant="sa-mesh"))(torch.randn(2, 5, 6))
    assert slots.shape == (2, 3, 8) and torch.isfinite(slots).all()


@needs_emd
@pytest.mark.parametrize("nodes", [2, 3, 16, 17, 116, 1031, 4107, 2**20, 2**31 - 1])
def test_cost_grid_keeps_lemon_inside_int64(nodes):
    """K = min(52, 60 - ceil(log2 N)): LEMON's artificial cost 2**62 plus (2N - 1) * 2**K must fit in
    int64 (transport.hpp), and the grid is as fine as that allows."""
    K = emd_cpp.cost_bits(nodes)
    assert 2**62 + (2 * nodes - 1) * 2**K < 2**63
    assert K == min(52, 60 - (nodes - 1).bit_length())


@needs_emd
def test_status_per_batch_element():
    C, a, b = _problem(9, 9, 4, seed=0)
    C[1, 2, 3] = np.nan
    a[2, 0] = -0.5
    b[3] = 0.0
    C[4, 0, 0] = np.inf
    a[5, 1] = np.inf
    b[6] *= 1.001  # masses differ by 1e-3
    a[7] = 1e308  # total overflows
    P, status = emd_cpp.solve_batch(C, a, b, 2)
    assert status.dtype == np.int8
    assert status.tolist() == [OPTIMAL, BAD_COST, BAD_MARGINAL, BAD_MARGINAL, BAD_COST, BAD_MARGINAL, MISMATCH,
                               BAD_MARGINAL, OPTIMAL]
    assert np.all(P[1:8] == 0)  # untouched, zero-filled
    for k in (0, 8):
        assert np.isclose((C[k] * P[k]).sum(), ot.emd2(a[k], b[k], C[k]), rtol=1e-9, atol=0)
    _, status = emd_cpp.solve_batch(C[6:7], a[6:7], b[6:7], 1, mass_rtol=2e-3)
    assert status.tolist() == [OPTIMAL]


@needs_emd
def test_shape_errors_and_threads():
    C, a, b = _problem(2, 5, 3, seed=1)
    with pytest.raises(ValueError, match="C must have shape"):
        emd_cpp.solve_batch(C[0], a, b, 1)
    with pytest.raises(ValueError, match="a must have shape"):
        emd_cpp.solve_batch(C, a[:, :4], b, 1)
    with pytest.raises(ValueError, match="b must have shape"):
        emd_cpp.solve_batch(C, a, b[:1], 1)
    with pytest.raises(ValueError, match="n and m must be >= 1"):
        emd_cpp.solve_batch(np.zeros((2, 0, 3)), np.zeros((2, 0)), b, 1)
    with pytest.raises(ValueError, match="num_threads"):
        emd_cpp.solve_batch(C, a, b, 0)
    with pytest.raises(ValueError, match="mass_rtol"):
        emd_cpp.solve_batch(C, a, b, 1, mass_rtol=float("nan"))
    P, status = emd_cpp.solve_batch(np.zeros((0, 5, 3)), np.zeros((0, 5)), np.zeros((0, 3)), 4)
    assert P.shape == (0, 5, 3) and status.shape == (0,)


@needs_emd
def test_float32_and_strided_inputs_are_converted():
    C, a, b = _problem(3, 7, 5, seed=2)
    P64, _ = emd_cpp.solve_batch(C, a, b, 1)
    Ct = np.ascontiguousarray(C.transpose(0, 2, 1)).transpose(0, 2, 1)  # same values, not C-contiguous
    P_strided, status = emd_cpp.solve_batch(Ct, a, b, 1)
    assert (status == OPTIMAL).all() and np.array_equal(P_strided, P64)
    C32, a32, b32 = C.astype(np.float32), a.astype(np.float32), b.astype(np.float32)
    P32, status = emd_cpp.solve_batch(C32, a32, b32, 1)
    assert P32.dtype == np.float64 and (status == OPTIMAL).all()
    ref = [ot.emd2(a32[k].astype(np.float64), b32[k].astype(np.float64), C32[k].astype(np.float64))
           for k in range(3)]
    # a32 and b32 sum to 1 only to float32 precision, and the two solvers rescale them differently
    assert np.allclose((C32 * P32).sum((1, 2)), ref, rtol=1e-6, atol=0)


@needs_emd
@pytest.mark.parametrize("scale, shift", [(1e300, 0.0), (1e-300, 0.0), (1e-310, 0.0), (1.0, 1e6), (-3.0, 7.0)])
def test_affine_cost_changes_keep_the_plan(scale, shift):
    """Optimal plans are invariant to C -> s C + t (s > 0) and flip to the max-cost plan for s < 0;
    the quantization works on (C - min C) / (max C - min C), so extreme magnitudes (up to overflow of
    max C - min C, down to subnormal ranges) give the same plan as the unit-range problem."""
    C, a, b = _problem(4, 12, 6, seed=3)
    P, status = emd_cpp.solve_batch(C, a, b, 2)
    Q, status2 = emd_cpp.solve_batch(C * scale + shift, a, b, 2)
    assert (status == OPTIMAL).all() and (status2 == OPTIMAL).all()
    if scale > 0:
        assert np.allclose(Q, P, rtol=0, atol=1e-12)
    else:
        R, _ = emd_cpp.solve_batch(-C, a, b, 1)
        assert np.allclose(Q, R, rtol=0, atol=1e-12)


@needs_emd
def test_huge_opposite_costs_do_not_overflow():
    C, a, b = _problem(2, 6, 4, seed=4)
    C = np.where(C > 0.5, 1.5e308, -1.5e308)  # max C - min C overflows float64
    P, status = emd_cpp.solve_batch(C, a, b, 1)
    assert (status == OPTIMAL).all()
    for k in range(2):
        ref = ot.emd(a[k], b[k], (C[k] > 0).astype(np.float64))
        assert np.isclose((P[k] * (C[k] > 0)).sum(), (ref * (C[k] > 0)).sum(), rtol=0, atol=1e-12)


@needs_emd
@pytest.mark.parametrize("mass", [1e-305, 1e-290, 1e300])
def test_extreme_masses_scale_the_plan(mass):
    """The supplies are scaled by w / sum(w), so tiny or huge total masses give the unit-mass plan
    times the mass (no overflow of S / sum(w), no overflow of the mean mass)."""
    C, a, b = _problem(3, 10, 4, seed=7)
    P, status = emd_cpp.solve_batch(C, a, b, 1)
    Q, status2 = emd_cpp.solve_batch(C, a * mass, b * mass, 1)
    assert (status == OPTIMAL).all() and (status2 == OPTIMAL).all()
    assert np.allclose(Q / mass, P, rtol=1e-12, atol=1e-15)


@needs_emd
def test_marginals_scaled_to_exact_integer_total():
    """Rows sum to a_i M / sum(a) and columns to b_j M / sum(b), M the mean mass, even when the masses
    differ and entries are tiny or zero."""
    rng = np.random.default_rng(5)
    n, m = 40, 9
    C = rng.random((1, n, m))
    a = rng.random((1, n)) * 3.0
    a[0, :5] = [0.0, 1e-300, 1e-17, 0.0, 1e-9]
    b = rng.random((1, m))
    b[0, 2] = 0.0
    b *= a.sum() * (1 + 3e-5) / b.sum()
    P, status = emd_cpp.solve_batch(C, a, b, 1)
    assert status[0] == OPTIMAL and (P >= 0).all()
    M = (a.sum() + b.sum()) / 2
    tol = (n + m + 4) * 2.0**-52 * M * 4
    assert np.abs(P[0].sum(1) - a[0] * M / a.sum()).max() < tol
    assert np.abs(P[0].sum(0) - b[0] * M / b.sum()).max() < tol
    assert (P[0, 0] == 0).all() and (P[0, 3] == 0).all() and (P[0, :, 2] == 0).all()


@needs_emd
def test_cache_reuses_graph_and_solvers():
    """One graph per shape; at most one solver per thread ever running, however many calls."""
    C, a, b = _problem(8, 13, 11, seed=6)  # a shape no other test uses
    g0, s0, p0 = emd_cpp.cache_stats()
    P1, _ = emd_cpp.solve_batch(C, a, b, 2)
    g1, s1, p1 = emd_cpp.cache_stats()
    assert g1 - g0 == 1 and 1 <= s1 - s0 <= 2 and p1 - p0 == 8
    for _ in range(3):
        P2, _ = emd_cpp.solve_batch(C[::-1].copy(), a[::-1].copy(), b[::-1].copy(), 2)
        assert np.array_equal(P2[::-1], P1)  # reused solvers start from scratch: same plans
    P3, _ = emd_cpp.solve_batch(C, a, b, 1)
    assert np.array_equal(P3, P1)
    g2, s2, p2 = emd_cpp.cache_stats()
    assert g2 == g1 and s2 - s0 <= 2 and p2 - p1 == 32
