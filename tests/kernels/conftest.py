"""Shared helpers for the kernel benchmarks: collect timings per group and print ratios.

Each benchmark records (group, role, median seconds) through the ``bench_record`` fixture; at the end
of a ``pytest --benchmark-only`` run a table gives, per group, the median of every role and its ratio
to the naive baseline (role "naive"): ratio > 1 means faster than the baseline.
"""
import os

import pytest

_RESULTS = {}  # group -> {role: (median seconds, note)}


@pytest.fixture
def bench_record(benchmark):
    """Call ``bench_record(role, note="")`` after ``benchmark(...)`` has run; the group is
    ``benchmark.group``, which the test sets before running."""

    def record(role, note=""):
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # benchmarks disabled or skipped
            return
        _RESULTS.setdefault(benchmark.group, {})[role] = (stats.stats.median, note)

    return record


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("OT kernels: median time and speed-up over the naive baseline (paper-literal autograd)")
    tr.write_line(f"CPU benchmarks ran with {os.environ.get('OT_BENCH_THREADS', '1')} torch thread(s) "
                  "(OT_BENCH_THREADS)")
    tr.write_line(f"{'group':<38} {'role':<14} {'median':>11} {'vs naive':>9}  note")
    for group in sorted(_RESULTS):
        roles = _RESULTS[group]
        base = roles.get("naive", (None, ""))[0]
        for role in sorted(roles, key=lambda r: (r != "ours", r != "naive", r)):
            t, note = roles[role]
            ratio = f"{base / t:8.2f}x" if base else f"{'':>9}"
            tr.write_line(f"{group:<38} {role:<14} {t * 1e3:9.2f}ms {ratio}  {note}")
