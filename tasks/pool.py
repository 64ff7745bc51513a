"""The one process pool of the tasks: run independent jobs in spawned processes, results in job order.

Used by the scene generators (blocks of scenes) and by the experiment runner (one training run per job).
Spawned, not forked, processes: a fork would inherit torch's thread pools and the parent's state. ``fn``
must therefore be importable (a module-level function), and a calling script needs the usual
``if __name__ == "__main__":`` guard. Workers end when the process that started them dies (killed, not only
interrupted), so no orphaned training run keeps a core busy.
"""
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

__all__ = ["cores", "run_jobs"]


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Worker initializer: a daemon thread that ends this process once ``parent`` is no longer its parent."""
    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_jobs(fn: Callable, jobs: Sequence[tuple], workers: int,
             on_done: Callable[[int, object], None] | None = None) -> list:
    """``[fn(*job) for job in jobs]``, computed by ``workers`` processes (in this one when ``workers`` is 1).

    Args:
        fn: a module-level function. jobs: argument tuples. workers: processes, >= 1.
        on_done: called as ``on_done(i, result)`` in this process as each job finishes (any order).

    Returns:
        The results in job order. The first exception of a job is raised here (the pool is shut down).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list = [None] * len(jobs)
    if workers == 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = fn(*job)
            if on_done is not None:
                on_done(i, results[i])
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_done is not None:
                on_done(i, results[i])
    return results
