"""Benchmarks of batched Sinkhorn and MESH: ``pytest --benchmark-only``.

For each shape (B, n, m) in SHAPES, float32, in one run:
    sinkhorn fwd       P = sinkhorn(C, a, b) (5 iterations) under no_grad
    sinkhorn fwd+bwd   the same with C requiring grad, then P.backward(grad_P)
    mesh fwd           C2 = mesh(C, a, b) (4 steps x 5 iterations), no grad
    mesh fwd+bwd       SA-MESH attention: C2, u, v = mesh(C, a, b); P = sinkhorn(C2, a, b, u=u, v=v);
                       P.backward(grad_P) (the straight-through gradient reaches C)
each against the naive baseline of kernels/reference.py ("naive": autograd through the unrolled
log-domain Sinkhorn, and for MESH ``torch.autograd.grad`` of the entropy at every step, as written from
Eq. 11-12) and, for Sinkhorn, POT on the same torch tensors: "pot batch", the peer, is POT's batched solver
``ot.batch.solve_batch`` (log-domain Sinkhorn, one cost matrix per problem, torch backend, the same number of
iterations, ``tol=0``; the forward with ``grad="detach"``, forward+backward with ``grad="autodiff"``), and
"pot" is POT's log-domain ``ot.sinkhorn`` one problem at a time. The note of "pot batch" gives its time
over ours.
The role "ours" is the default CPU path (the fused C++ loops of kernels/cpp_ot.py); "torch" is the plain
PyTorch path (``backend="torch"``, kernels/torch_ot.py). In the SA-MESH group, "ours wsg" / "naive wsg" add
MESH's warm-start gradient (``warm_start_grad=True``; naive: autograd through
``kernels.reference.mesh_official_ref``): its cost is "ours wsg" over "ours". Every role's result is checked
against the naive baseline's. The table printed at the end gives the ratios to the baseline (conftest.py).

CPU runs use OT_BENCH_THREADS torch threads (default 1): on a small machine shared with other jobs,
two threads that wait on each other make timings swing by 10x, and one thread gives stable ratios.

CUDA (skipped without a GPU): the same against the Triton path, plus the fraction of the device's
peak memory bandwidth reached by ``sinkhorn``: bytes = (n_iters + 1) * B * n * m * 4 (one read of C per
iteration and the write of P, the traffic of a one-pass-per-iteration kernel) over the median time.
"""
import functools
import os
import warnings

import ot as pot
import pytest
import torch
from ot.batch import solve_batch

from kernels import mesh, sinkhorn
from kernels.reference import mesh_official_ref, mesh_ref, sinkhorn_ref

SHAPES = [(64, 105, 5), (64, 1024, 7), (64, 4096, 11), (64, 16384, 11)]
N_ITERS, N_MESH = 5, 4
CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True, scope="module")
def _pinned_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OT_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def _id(shape):
    return "x".join(map(str, shape))


@functools.lru_cache(maxsize=None)
def _problem(shape, device="cpu"):
    """float32 costs in [0, 1), uniform row marginals m/n, column marginals 1 (App. A), noise, grad_P: the
    slot-attention setting, which the random problems of tests/kernels/conftest.py do not have."""
    B, n, m = shape
    g = torch.Generator().manual_seed(0)
    C = torch.rand(B, n, m, generator=g)
    a = torch.full((B, n), m / n)
    b = torch.ones(B, m)
    noise = torch.randn(B, n, m, generator=g)
    gP = torch.randn(B, n, m, generator=g)
    return tuple(t.to(device) for t in (C, a, b, noise, gP))


def _rounds(shape, slow):
    """Few rounds for the slow baselines at the big shapes, so the whole run stays within minutes."""
    size = shape[0] * shape[1] * shape[2]
    if slow:
        return 2 if size > 2e6 else 3
    return 3 if size > 2e6 else 5


def _run(benchmark, fn, shape, slow):
    return benchmark.pedantic(fn, rounds=_rounds(shape, slow), iterations=1, warmup_rounds=1)


# ------------------------------------------------------------------------------------------------
# The functions timed
# ------------------------------------------------------------------------------------------------

def _sinkhorn_fwd(impl, C, a, b):
    with torch.no_grad():
        return impl(C, a, b, N_ITERS)[0]


def _sinkhorn_fwd_bwd(impl, C, a, b, gP):
    C = C.detach().requires_grad_(True)
    P = impl(C, a, b, N_ITERS)[0]
    P.backward(gP)
    return C.grad


def _pot_one(a, b, C):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pot.sinkhorn(a, b, C, 1.0, method="sinkhorn_log", numItermax=N_ITERS, stopThr=0.0, warn=False)


def _pot_fwd(C, a, b):
    with torch.no_grad():
        return torch.stack([_pot_one(a[k], b[k], C[k]) for k in range(C.shape[0])])


def _pot_fwd_bwd(C, a, b, gP):
    C = C.detach().requires_grad_(True)
    P = torch.stack([_pot_one(a[k], b[k], C[k]) for k in range(C.shape[0])])
    P.backward(gP)
    return C.grad


def _pot_batch(C, a, b, grad):
    return solve_batch(C, reg=1.0, a=a, b=b, max_iter=N_ITERS, tol=0.0, method="log_sinkhorn", grad=grad).plan


def _pot_batch_fwd(C, a, b):
    with torch.no_grad():
        return _pot_batch(C, a, b, "detach")


def _pot_batch_fwd_bwd(C, a, b, gP):
    C = C.detach().requires_grad_(True)
    _pot_batch(C, a, b, "autodiff").backward(gP)
    return C.grad


def _mesh_fwd(impl, C, a, b, noise):
    with torch.no_grad():
        return impl(C, a, b, N_MESH, N_ITERS, noise=noise)[0]


def _sa_mesh_fwd_bwd(mesh_impl, sinkhorn_impl, C, a, b, noise, gP):
    C = C.detach().requires_grad_(True)
    C2, u, v = mesh_impl(C, a, b, N_MESH, N_ITERS, noise=noise)
    P = sinkhorn_impl(C2, a, b, N_ITERS, u=u, v=v)[0]
    P.backward(gP)
    return C.grad


def _sinkhorn_ref(C, a, b, n_iters, u=None, v=None):
    return sinkhorn_ref(C, a, b, n_iters, 1.0, u, v)


def _official_ref(C, a, b, n_mesh_iters, n_sh_iters, noise):
    return mesh_official_ref(C, a, b, n_mesh_iters, n_sh_iters, 8.0, noise, 1e-3, 1.0)


def _compute(kind, sh, me, C, a, b, noise, gP):
    """The work of benchmark ``kind`` with Sinkhorn ``sh`` and MESH ``me``: a plan, a gradient or costs."""
    if kind == "sinkhorn fwd":
        return _sinkhorn_fwd(sh, C, a, b)
    if kind == "sinkhorn fwd+bwd":
        return _sinkhorn_fwd_bwd(sh, C, a, b, gP)
    if kind == "mesh fwd":
        return _mesh_fwd(me, C, a, b, noise)
    return _sa_mesh_fwd_bwd(me, sh, C, a, b, noise, gP)


@functools.lru_cache(maxsize=None)
def _naive(kind, shape):
    """The naive baseline's result of benchmark ``kind`` at ``shape``, computed once, to check every role."""
    return _compute(kind, _sinkhorn_ref, _official_ref if kind == "wsg" else mesh_ref, *_problem(shape))


def _check(out, kind, shape, rtol=2e-3):
    """``out`` agrees with the naive baseline (float32 rounding through many steps: relative to the largest
    entry)."""
    ref = _naive(kind, shape)
    err = float((out - ref).abs().max())
    assert err <= rtol * float(ref.abs().max()) + 1e-6, f"{kind} {shape}: max error {err:.3g}"


# ------------------------------------------------------------------------------------------------
# CPU
# ------------------------------------------------------------------------------------------------

SINKHORN_ROLES = {"ours": sinkhorn, "naive": _sinkhorn_ref, "torch": functools.partial(sinkhorn, backend="torch"),
                  "ours wsg": sinkhorn, "naive wsg": _sinkhorn_ref}
MESH_ROLES = {"ours": mesh, "naive": mesh_ref, "torch": functools.partial(mesh, backend="torch"),
              "ours wsg": functools.partial(mesh, warm_start_grad=True), "naive wsg": _official_ref}


SINKHORN_CPU_ROLES = ("ours", "naive", "torch", "pot batch", "pot")
CPU_CASES = [(kind, role) for kind in ("sinkhorn fwd", "sinkhorn fwd+bwd") for role in SINKHORN_CPU_ROLES]
CPU_CASES += [("mesh fwd", role) for role in ("ours", "naive", "torch")]
CPU_CASES += [("sa-mesh", role) for role in ("ours", "naive", "torch", "ours wsg", "naive wsg")]
GROUPS = {"sinkhorn fwd": "sinkhorn fwd", "sinkhorn fwd+bwd": "sinkhorn fwd+bwd", "mesh fwd": "mesh fwd",
          "sa-mesh": "mesh+sinkhorn fwd+bwd"}
NOTES = {"mesh fwd": f"{N_MESH} steps x {N_ITERS} iterations", "sa-mesh": "SA-MESH attention"}


@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("kind,role", CPU_CASES, ids=[f"{k}-{r}" for k, r in CPU_CASES])
def test_bench_cpu(benchmark, bench_record, kind, role, shape):
    benchmark.group = f"{GROUPS[kind]} {_id(shape)}"
    C, a, b, noise, gP = problem = _problem(shape)
    if role == "pot":
        work = (lambda: _pot_fwd(C, a, b)) if kind == "sinkhorn fwd" else (lambda: _pot_fwd_bwd(C, a, b, gP))
    elif role == "pot batch":
        work = ((lambda: _pot_batch_fwd(C, a, b)) if kind == "sinkhorn fwd" else
                (lambda: _pot_batch_fwd_bwd(C, a, b, gP)))
    else:
        work = functools.partial(_compute, kind, SINKHORN_ROLES[role], MESH_ROLES[role], *problem)
    out = _run(benchmark, work, shape, slow=role in ("naive", "naive wsg", "pot"))
    note = NOTES.get(kind, "POT: column step first" if role == "pot" else "")
    bench_record(role, note + (", warm-start gradient" if "wsg" in role else ""),
                 versus=["ours"] if role == "pot batch" else [])
    if role == "pot":  # POT iterates columns first (another unrolled function): its last step meets the rows
        assert torch.isfinite(out).all() and (kind != "sinkhorn fwd" or torch.allclose(out.sum(2), a))
    else:
        _check(out, "wsg" if "wsg" in role else kind, shape, rtol=2e-2 if kind == "sa-mesh" else 2e-3)


# ------------------------------------------------------------------------------------------------
# CUDA (Triton path)
# ------------------------------------------------------------------------------------------------

def _cuda_timed(benchmark, fn, shape, slow):
    def synced():
        out = fn()
        torch.cuda.synchronize()
        return out

    return benchmark.pedantic(synced, rounds=10 if not slow else 3, iterations=1, warmup_rounds=2)


@functools.lru_cache(maxsize=None)
def _peak_bandwidth():
    """Peak DRAM bandwidth in bytes/s: from the device properties when they carry the memory clock and
    bus width, otherwise measured as the rate of a large device-to-device copy (a lower bound)."""
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8, "spec"
    x = torch.empty(256 * 2**20, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    return 2 * x.numel() * 4 * 10 / (start.elapsed_time(end) / 1e3), "measured copy"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("role", ["ours", "naive"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("kind", ["sinkhorn fwd", "sinkhorn fwd+bwd", "mesh fwd", "sa-mesh"])
def test_bench_cuda(benchmark, bench_record, kind, shape, role):
    benchmark.group = f"cuda {kind} {_id(shape)}"
    problem = _problem(shape, "cuda")
    sh, me = (sinkhorn, mesh) if role == "ours" else (_sinkhorn_ref, mesh_ref)
    out = _cuda_timed(benchmark, lambda: _compute(kind, sh, me, *problem), shape, slow=role != "ours")
    note = ""
    if role == "ours" and kind == "sinkhorn fwd":
        B, n, m = shape
        peak, how = _peak_bandwidth()
        rate = (N_ITERS + 1) * B * n * m * 4 / benchmark.stats.stats.median
        note = f"{rate / 1e9:.0f} GB/s = {rate / peak:.0%} of peak ({peak / 1e9:.0f} GB/s, {how})"
    bench_record(role, note)
    _check(out.cpu(), kind, shape, rtol=2e-2 if kind == "sa-mesh" else 2e-3)
