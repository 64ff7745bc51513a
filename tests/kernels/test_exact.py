"""Tests of kernels/exact.py: exact batched EMD (issue 3) and SA-EMD's attention (Eq. 8).

Referees: POT's ``ot.emd2`` / ``ot.emd`` (one problem at a time) for optimal costs, scipy's
``linear_sum_assignment`` for square uniform problems, and ``kernels.reference.sinkhorn_ref`` for the
surrogate gradient of ``emd_attention``.
"""
import _thread
import os
import signal
import threading
import time

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import emd_cpp
from kernels.exact import emd, emd_attention
from kernels.ot import sinkhorn
from kernels.reference import sinkhorn_ref

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.needs_emd  # the error without LEMON: tests/emd_cpp/test_core.py


def _np(p, mass=1.0):
    """C, a, b of a conftest ``problem`` as float64 numpy arrays, the marginals rescaled to total ``mass``."""
    C, a, b = (t.double().numpy() for t in p[:3])
    return C, a / a.sum(1, keepdims=True) * mass, b / b.sum(1, keepdims=True) * mass


def _check_plans(P, C, a, b, rtol=1e-6, marg_tol=1e-6):
    """P (B, n, m) is non-negative, meets a and b to marg_tol and has POT's optimal cost to rtol."""
    P, C, a, b = (np.asarray(x, dtype=np.float64) for x in (P, C, a, b))
    assert (P >= 0).all()
    assert np.abs(P.sum(2) - a).max() < marg_tol
    assert np.abs(P.sum(1) - b).max() < marg_tol
    for k in range(C.shape[0]):
        ref = ot.emd2(a[k], b[k], C[k])
        assert abs((C[k] * P[k]).sum() - ref) <= rtol * abs(ref) + 1e-15


# Both layouts (rows or columns supply) and both pivot rules (ratio >= 100: candidate list).
@pytest.mark.parametrize("B, n, m", [(5, 105, 5), (3, 64, 64), (4, 7, 30), (2, 1, 6), (2, 6, 1), (2, 700, 6),
                                     (2, 5, 600)])
def test_rectangular_nonuniform_matches_pot(B, n, m, problem):
    C, a, b = _np(problem(B, n, m, seed=n * m, scale=1.0), mass=float(m))
    P = emd(C, a, b)
    assert isinstance(P, np.ndarray) and P.dtype == np.float64 and P.shape == (B, n, m)
    _check_plans(P, C, a, b)


def test_torch_inputs_and_float32(problem):
    C, a, b = _np(problem(4, 50, 7, seed=1, scale=1.0), mass=7.0)
    Ct, at, bt = (torch.from_numpy(x) for x in (C, a, b))
    Ct.requires_grad_(True)
    P = emd(Ct, at, bt)
    assert isinstance(P, torch.Tensor) and P.dtype == torch.float64 and not P.requires_grad
    assert np.array_equal(P.numpy(), emd(C, a, b))
    C32, a32, b32 = (x.astype(np.float32) for x in (C, a, b))
    for args in ((C32, a32, b32), tuple(torch.from_numpy(x) for x in (C32, a32, b32))):
        P32 = emd(*args)
        assert P32.dtype in (np.float32, torch.float32)
        # float32 marginals sum to the same mass only to float32 precision
        _check_plans(np.asarray(P32), C32, a32, b32, rtol=1e-6, marg_tol=2e-6)


def _tie_problems():
    rng = np.random.default_rng(7)
    n, m = 24, 6
    C_rows = np.repeat(rng.random((1, 4, m)), n // 4, axis=1)  # groups of equal rows
    C_cols = np.repeat(rng.random((1, n, 2)), m // 2, axis=2)  # equal columns
    C_const = np.full((1, n, m), 0.75)
    C_int = rng.integers(0, 3, (1, n, m)).astype(np.float64)  # few distinct values
    C = np.concatenate([C_rows, C_cols, C_const, C_int])
    a_uni, b_uni = np.full((4, n), 1.0 / n), np.full((4, m), 1.0 / m)
    a_non = rng.random((4, n)) + 0.1
    b_non = rng.random((4, m)) + 0.1
    return C, (a_uni, b_uni), (a_non / a_non.sum(1, keepdims=True), b_non / b_non.sum(1, keepdims=True))


@pytest.mark.parametrize("marginals", ["uniform", "nonuniform"])
def test_ties_match_pot(marginals):
    C, uni, non = _tie_problems()
    a, b = uni if marginals == "uniform" else non
    P = emd(C, a, b)
    _check_plans(P, C, a, b)
    assert np.isclose((C[2] * P[2]).sum(), 0.75, rtol=1e-12)  # constant costs: every plan is optimal


def test_square_uniform_is_an_assignment():
    rng = np.random.default_rng(3)
    B, n = 6, 40
    C = rng.random((B, n, n))
    ones = np.ones((B, n))
    P = emd(C, ones, ones)
    _check_plans(P, C, ones, ones)
    for k in range(B):
        rows, cols = linear_sum_assignment(C[k])
        assert np.isclose((C[k] * P[k]).sum(), C[k][rows, cols].sum(), rtol=1e-9)
        perm = np.zeros((n, n))
        perm[rows, cols] = 1.0
        assert np.abs(P[k] - perm).max() < 1e-12  # random costs: the optimum is unique


def test_square_uniform_with_ties_is_still_optimal():
    rng = np.random.default_rng(4)
    n = 30
    C = rng.integers(0, 4, (3, n, n)).astype(np.float64)  # many optimal assignments
    ones = np.ones((3, n))
    P = emd(C, ones, ones)
    _check_plans(P, C, ones, ones)
    for k in range(3):
        rows, cols = linear_sum_assignment(C[k])
        assert np.isclose((C[k] * P[k]).sum(), C[k][rows, cols].sum(), rtol=1e-12)


def test_one_thread_equals_many(problem):
    C, a, b = _np(problem(24, 200, 9, seed=11, scale=1.0), mass=9.0)
    P1 = emd(C, a, b, num_threads=1)
    for threads in (2, 4, 64):
        assert np.array_equal(emd(C, a, b, num_threads=threads), P1)
    _check_plans(P1, C, a, b)


def test_zero_mass_rows_and_columns_get_nothing(problem):
    C, a, b = _np(problem(3, 30, 8, seed=12, scale=1.0))
    a[:, [0, 5]] = 0.0
    b[:, 3] = 0.0
    a /= a.sum(1, keepdims=True)
    b /= b.sum(1, keepdims=True)
    P = emd(C, a, b)
    assert (P[:, [0, 5], :] == 0).all() and (P[:, :, 3] == 0).all()
    _check_plans(P, C, a, b)


def test_unequal_masses_within_tolerance_are_rescaled_to_their_mean(problem):
    C, a, b = _np(problem(2, 20, 5, seed=13, scale=1.0))
    b *= 1 + 5e-5
    P = emd(C, a, b)
    M = (a.sum(1) + b.sum(1)) / 2  # (B,)
    assert np.allclose(P.sum(2), a * (M / a.sum(1))[:, None], rtol=0, atol=1e-13)
    assert np.allclose(P.sum(1), b * (M / b.sum(1))[:, None], rtol=0, atol=1e-13)


def test_gil_is_released_during_a_large_batch(problem):
    """A Python thread that sleeps 0.5 ms at a time must keep waking up (each wake-up needs the GIL)
    while a batch that takes far longer is solved."""
    C, a, b = _np(problem(48, 4096, 11, seed=14, scale=1.0), mass=11.0)
    solving = threading.Event()
    done = threading.Event()
    wakeups = []

    def count():
        while not done.is_set():
            time.sleep(0.0005)
            if solving.is_set():
                wakeups.append(1)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        solving.set()
        P = emd(C, a, b, num_threads=1)
        solving.clear()
    finally:
        done.set()
        counter.join()
    assert len(wakeups) >= 20
    assert np.abs(P.sum(2) - a).max() < 1e-9


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler (raise KeyboardInterrupt) for the test. A process started in the background
    by a non-interactive shell (`cmd &`, as CI scripts and nohup jobs do) inherits SIGINT ignored, and Python
    then installs no handler: Ctrl-C could not interrupt anything there, the solver included."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread, and only it may set their handlers")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("how", ["os.kill", "interrupt_main"])
def test_ctrl_c_stops_a_large_batch(how, problem, python_sigint_handler):
    """SIGINT while a large batch runs raises KeyboardInterrupt before the batch is done (counted by
    the core's problems_solved, not by time), and the solver works normally afterwards."""
    B = 200  # about a second per thread if it were not interrupted
    C, a, b = _np(problem(B, 4096, 11, seed=15, scale=1.0), mass=11.0)
    start = emd_cpp.cache_stats()[2]

    def interrupt_once_started():
        while emd_cpp.cache_stats()[2] - start < 4:
            time.sleep(0.001)
        if how == "os.kill":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            _thread.interrupt_main()

    killer = threading.Thread(target=interrupt_once_started)
    killer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            emd(C, a, b, num_threads=2)
    finally:
        killer.join()
    solved = emd_cpp.cache_stats()[2] - start
    assert 4 <= solved < B // 2
    small = _np(problem(3, 4096, 11, seed=16, scale=1.0), mass=11.0)
    _check_plans(emd(*small, num_threads=2), *small)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_bad_input_names_the_batch_element(kind, problem):
    C, a, b = _np(problem(5, 6, 4, seed=17, scale=1.0))
    conv = (lambda x: x) if kind == "numpy" else torch.from_numpy

    def call(C=C, a=a, b=b, **kw):
        return emd(conv(C), conv(a), conv(b), **kw)

    for k, value in ((3, np.nan), (1, np.inf), (4, -np.inf)):
        bad = C.copy()
        bad[k, 2, 1] = value
        with pytest.raises(ValueError, match=f"C has NaN or Inf entries .*batch element {k}"):
            call(C=bad)
    bad = a.copy()
    bad[2, 0] = -0.1
    with pytest.raises(ValueError, match="marginal a has negative entries .*batch element 2"):
        call(a=bad)
    bad = b.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="marginal b has NaN or Inf entries .*batch element 4"):
        call(b=bad)
    bad = b.copy()
    bad[1] = 0.0
    with pytest.raises(ValueError, match="marginal b is all zero .*batch element 1"):
        call(b=bad)
    bad = b.copy()
    bad[3] *= 1.01
    with pytest.raises(ValueError, match="row and column masses differ.*batch element 3"):
        call(b=bad)
    with pytest.raises(ValueError, match="C must have shape"):
        call(C=C[0])
    with pytest.raises(ValueError, match="a must have shape"):
        call(a=a[:, :5])
    with pytest.raises(ValueError, match="b must have shape"):
        call(b=b[:4])
    with pytest.raises(ValueError, match="float32 or float64"):
        call(C=C.astype(np.float16))
    with pytest.raises(ValueError, match="float32 or float64"):
        call(a=(a * 100).astype(np.int64))
    with pytest.raises(ValueError, match="share a dtype"):
        call(b=b.astype(np.float32))
    for threads in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="num_threads"):
            call(num_threads=threads)


def test_bad_input_types(problem):
    C, a, b = _np(problem(2, 4, 3, seed=18, scale=1.0))
    with pytest.raises(ValueError, match="must all be numpy arrays or all torch tensors"):
        emd(C, torch.from_numpy(a), b)
    with pytest.raises(ValueError, match="must all be numpy arrays or all torch tensors, got list, list, list"):
        emd(C.tolist(), a.tolist(), b.tolist())


def test_overflowing_mass_is_a_value_error(problem):
    C, a, b = _np(problem(3, 4, 3, seed=19, scale=1.0))
    a[1] = 1e308
    b[1] = 4e308 / 3
    with pytest.raises(ValueError, match="batch element 1"):
        emd(C, a, b)


def test_non_native_byte_order_and_read_only_inputs(problem):
    C, a, b = _np(problem(2, 9, 4, seed=20, scale=1.0))
    ref = emd(C, a, b)
    Cb = C.astype(C.dtype.newbyteorder(">"))
    a_ro = a.copy()
    a_ro.flags.writeable = False
    assert np.array_equal(emd(Cb, a_ro, b), ref)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_tensors_round_trip(problem):
    C, a, b = _np(problem(4, 40, 6, seed=21, scale=1.0))
    Cc, ac, bc = (torch.from_numpy(x).cuda() for x in (C, a, b))
    P = emd(Cc, ac, bc)
    assert P.is_cuda and P.dtype == torch.float64
    assert np.array_equal(P.cpu().numpy(), emd(C, a, b))


# emd_attention (Eq. 8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_emd_attention_value_is_emd_plus_sinkhorn(dtype, problem):
    C, a, b = (torch.from_numpy(x).to(dtype) for x in _np(problem(3, 40, 5, seed=22, scale=1.0), mass=5.0))
    A = emd_attention(C, a, b, n_sh_iters=7, tau=0.5)
    assert A.dtype == dtype and A.shape == C.shape
    expected = emd(C, a, b) + sinkhorn(C, a, b, 7, 0.5)[0]
    assert torch.equal(A, expected)


def test_emd_attention_gradient_is_twice_sinkhorns(problem):
    """Backward of A = emd(C) + sinkhorn(C) passes 2x the Sinkhorn vector-Jacobian product to C, a and
    b (the EMD term's surrogate plus the Sinkhorn term), checked against the plain-autograd reference."""
    Cn, an, bn = _np(problem(3, 17, 4, seed=23, scale=1.0), mass=4.0)
    G = torch.from_numpy(np.random.default_rng(24).standard_normal(Cn.shape))
    leaves = [torch.from_numpy(x).requires_grad_(True) for x in (Cn, an, bn)]
    A = emd_attention(*leaves, n_sh_iters=6, tau=0.3)
    grads = torch.autograd.grad(A, leaves, G)
    sh_leaves = [torch.from_numpy(x).requires_grad_(True) for x in (Cn, an, bn)]
    sh = torch.autograd.grad(sinkhorn(*sh_leaves, 6, 0.3)[0], sh_leaves, G)
    ref_leaves = [torch.from_numpy(x).requires_grad_(True) for x in (Cn, an, bn)]
    ref = torch.autograd.grad(sinkhorn_ref(*ref_leaves, n_iters=6, tau=0.3)[0], ref_leaves, G)
    for g, s, r in zip(grads, sh, ref):
        assert r.abs().max() > 1e-3  # the reference gradient is not trivially zero
        torch.testing.assert_close(g, 2 * s, rtol=1e-13, atol=0)
        torch.testing.assert_close(g, 2 * r, rtol=1e-7, atol=1e-10)


def test_emd_attention_bad_input(problem):
    C, a, b = (torch.from_numpy(x) for x in _np(problem(2, 6, 3, seed=25, scale=1.0)))
    for iters in (0, 2.0, True):
        with pytest.raises(ValueError, match="n_sh_iters"):
            emd_attention(C, a, b, n_sh_iters=iters)
    for tau in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            emd_attention(C, a, b, tau=tau)
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        emd_attention(C.numpy(), a.numpy(), b.numpy())
    bad = C.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="batch element 1"):
        emd_attention(bad, a, b)
