"""Root pytest configuration.

- Plain `pytest` runs the tests; `pytest --benchmark-only` runs the benchmarks (they are skipped
  otherwise, so the test suite stays fast).
- Benchmarks record (group, role, median) through the ``bench_record`` fixture; the run ends with a
  table of each group's medians and their speed-up over the group's baseline (role "naive", the
  paper-literal implementation, or "baseline"): ratio > 1 means faster than the baseline.
- Tests marked ``needs_emd`` (exact EMD, compiled only where LEMON was found) are skipped, with the message
  that says how to install LEMON, when ``emd_cpp.HAS_EMD`` is False.
- Without a GPU, Triton kernels run in the interpreter on CPU tensors. The variable must be set before
  any module that defines a `@triton.jit` function is imported.
"""
import os

import pytest
import torch

import emd_cpp

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    if not config.getoption("benchmark_only", default=False):
        config.option.benchmark_skip = True


def pytest_collection_modifyitems(config, items):
    if emd_cpp.HAS_EMD:
        return
    skip = pytest.mark.skip(reason=emd_cpp.MISSING_LEMON)
    for item in items:
        if item.get_closest_marker("needs_emd") is not None:
            item.add_marker(skip)


@pytest.fixture
def without_emd(monkeypatch):
    """Run a test as in a build without LEMON: ``emd_cpp.HAS_EMD`` False, so every EMD entry point raises
    ``emd_cpp.EMDUnavailableError`` (a real build without LEMON has no EMD functions at all)."""
    monkeypatch.setattr(emd_cpp, "HAS_EMD", False)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: for small models, two threads that wait on each other on a machine
    shared with other jobs are many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_RESULTS = {}  # group -> {role: (median seconds, note, roles to compare with)}


@pytest.fixture
def bench_record(benchmark):
    """Call ``bench_record(role, note="", versus=())`` after ``benchmark(...)`` has run; the group is
    ``benchmark.group``, which the test sets before running. ``versus`` names other roles of the group: the
    summary adds this role's time over each of theirs to the note (e.g. SA-MESH's step over SA's, or a peer
    library over ours)."""

    def record(role, note="", versus=()):
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # benchmarks disabled or skipped
            return
        _RESULTS.setdefault(benchmark.group, {})[role] = (stats.stats.median, note, tuple(versus))

    return record


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("Benchmarks: median time and speed-up over each group's baseline (role 'naive' or 'baseline')")
    tr.write_line(f"CPU benchmarks ran with {os.environ.get('OT_BENCH_THREADS', '1')} torch thread(s) "
                  "(OT_BENCH_THREADS)")
    tr.write_line(f"{'group':<38} {'role':<16} {'median':>11} {'vs base':>9}  note")
    for group in sorted(_RESULTS):
        roles = _RESULTS[group]
        base = roles.get("naive", roles.get("baseline", (None, "")))[0]
        for role in sorted(roles, key=lambda r: (r != "ours", r not in ("naive", "baseline"), r)):
            t, note, versus = roles[role]
            ratio = f"{base / t:8.2f}x" if base else f"{'':>9}"
            note = ", ".join([note] * bool(note) + [f"{t / roles[r][0]:.2f}x the time of '{r}'"
                                                    for r in versus if r in roles])
            tr.write_line(f"{group:<38} {role:<16} {t * 1e3:9.2f}ms {ratio}  {note}")
