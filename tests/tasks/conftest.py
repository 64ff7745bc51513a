"""Fixtures shared by the tests of the experiments' command lines (``python -m tasks.<name>``)."""
import contextlib
import dataclasses
import io
import os
import signal

import pytest
import torch


def _run_cli(main, argv):
    """main(argv) -> (exit status, stdout, stderr); argparse errors give their SystemExit code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bench_threads():
    """The set-up of a benchmark module (``pytestmark = pytest.mark.usefixtures("bench_threads")``): freed memory
    kept as the training loop keeps it (``slots.train.retain_freed_memory``) and $OT_BENCH_THREADS torch threads
    (default 1); torch's thread count is restored after the module."""
    from slots.train import retain_freed_memory

    retain_freed_memory()
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OT_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(main, argv) -> (exit status, stdout, stderr)`` of a task's ``__main__.main``."""
    return _run_cli


@pytest.fixture
def ctrl_c_at_step_2(monkeypatch):
    """``ctrl_c_at_step_2(experiment_module) -> calls``: the module's ``TASK.loss`` sends this process SIGINT
    on its second call (as Ctrl-C during step 2 would); ``calls`` counts the loss calls."""
    def patch(module):
        calls = []
        real_loss = module.TASK.loss

        def loss(model, batch):
            calls.append(1)
            if len(calls) == 2:
                signal.raise_signal(signal.SIGINT)
            return real_loss(model, batch)

        monkeypatch.setattr(module, "TASK", dataclasses.replace(module.TASK, loss=loss))
        return calls
    return patch


def _assert_same_checkpoint(run_dir, ref_dir, step: int) -> None:
    from slots.train import CHECKPOINT_NAME, load_checkpoint
    import torch

    mine, ref = load_checkpoint(run_dir / CHECKPOINT_NAME), load_checkpoint(ref_dir / CHECKPOINT_NAME)
    assert mine["step"] == ref["step"] == step
    assert mine["model"].keys() == ref["model"].keys()
    for k, v in ref["model"].items():
        assert torch.equal(mine["model"][k], v), k


@pytest.fixture(scope="session")
def assert_same_checkpoint():
    """``assert_same_checkpoint(run_dir, ref_dir, step)``: both run folders' checkpoints are at ``step`` and hold
    bit-identical parameters."""
    return _assert_same_checkpoint


# Tiny runs of each task, trained once per session by the task's own command line (a few steps of a small model)
_TINY_RUNS = {
    "random_objects": ("tasks.random_objects.__main__", ["--variant", "sa-mesh", "--steps", "3", "--n-train", "64",
                                                          "--n-test", "40", "--batch-size", "16"]),
    "multi_dsprites": ("tasks.multi_dsprites.__main__", ["--variant", "sa-mesh", "--budget", "quick", "--steps", "3",
                                                          "--batch-size", "4", "--n-train", "8", "--n-test", "5",
                                                          "--resolution", "16"]),
    "clevr": ("tasks.clevr.__main__", ["--variant", "sa-mesh", "--steps", "1", "--n-train", "8", "--n-test", "4",
                                       "--batch-size", "8", "--image-size", "16"]),
    "clevrer": ("tasks.clevrer.__main__", ["--variant", "sa", "--steps", "1", "--batch-size", "2", "--n-train", "2",
                                           "--n-test", "2"]),
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(task) -> run folder``: a run of ``task`` (random_objects, multi_dsprites, clevr, clevrer) of a
    few steps on generated data, trained on first use by ``python -m tasks.<task>`` in this process (one torch
    thread, data cached in the session's temporary folder) and shared by the session's tests."""
    import importlib

    runs = {}

    def get(task: str):
        if task not in runs:
            module, argv = _TINY_RUNS[task]
            out = tmp_path_factory.mktemp(task)
            n = torch.get_num_threads()
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("SA_MESH_CACHE", str(tmp_path_factory.getbasetemp() / "tiny_run_cache"))
                code, _, err = _run_cli(importlib.import_module(module).main,
                                        [*argv, "--jobs", "1", "--threads", "1", "--no-progress", "--out", out])
            torch.set_num_threads(n)
            assert code == 0, err
            variant = argv[argv.index("--variant") + 1]
            runs[task] = out / variant / "seed0"
        return runs[task]

    return get
