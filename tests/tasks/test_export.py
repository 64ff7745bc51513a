"""Tests of ``python -m tasks.export``: the exported model, read back by ``slots.load_pretrained`` without the run
folder, gives the outputs of the run's own model; an export is not overwritten by accident."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slots
from slots.pretrained import CONFIG_NAME, WEIGHTS_NAME
from tasks.export import main
from tasks.runs import load_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")

INPUTS = {"random_objects": lambda: torch.randn(3, 105, 32), "multi_dsprites": lambda: torch.rand(3, 3, 16, 16) * 2 - 1,
          "clevr": lambda: torch.rand(3, 3, 16, 16) * 2 - 1, "clevrer": lambda: torch.rand(2, 2, 3, 64, 64) * 2 - 1}


def _outputs(model, x):
    torch.manual_seed(5)  # the initial slots' draw
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("task", list(INPUTS))
def test_exported_model_gives_the_runs_outputs_without_the_run_folder(tiny_run, task, tmp_path, run_cli):
    run_dir = tiny_run(task)
    code, stdout, stderr = run_cli(main, [run_dir, "--to", tmp_path / "export"])
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    run = load_run(run_dir)
    config = json.loads((tmp_path / "export" / CONFIG_NAME).read_text())
    assert config["task"] == task and config["variant"] == run.variant and config["step"] == run.step
    assert config["kind"] == run.task.model_kind and "model" not in config["task_config"]

    copy = tmp_path / "elsewhere"
    shutil.move(tmp_path / "export", copy)  # nothing of the run is needed
    loaded = slots.load_pretrained(copy)
    assert not loaded.training
    x = INPUTS[task]()
    for a, b in zip(_outputs(run.model, x), _outputs(loaded, x)):
        assert torch.equal(a, b)


def test_export_and_load_in_fresh_processes(tiny_run, tmp_path):
    run_dir = tiny_run("multi_dsprites")
    proc = subprocess.run([sys.executable, "-m", "tasks.export", str(run_dir), "--to", str(tmp_path / "export")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "slots.load_pretrained(" in proc.stdout
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.save(x, tmp_path / "x.pt")
    script = ("import sys, torch, slots; m = slots.load_pretrained(sys.argv[1]); torch.manual_seed(5); "
              "torch.save(m(torch.load(sys.argv[2])).recon.detach(), sys.argv[3]); "
              "assert not [k for k in sys.modules if k == 'tasks' or k.startswith(('tasks.', 'slots.train'))]")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "export"), str(tmp_path / "x.pt"),
                           str(tmp_path / "recon.pt")], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(tmp_path / "recon.pt"), _outputs(load_run(run_dir).model, x)[0])


def test_an_existing_export_needs_force(tiny_run, tmp_path, run_cli):
    run_dir = tiny_run("random_objects")
    assert run_cli(main, [run_dir, "--to", tmp_path])[0] == 0
    before = (tmp_path / WEIGHTS_NAME).read_bytes()
    code, _, stderr = run_cli(main, [run_dir, "--to", tmp_path])
    assert code == 2 and f"{tmp_path} already holds {WEIGHTS_NAME}, {CONFIG_NAME}" in stderr
    assert run_cli(main, [run_dir, "--to", tmp_path, "--force"])[0] == 0
    assert (tmp_path / WEIGHTS_NAME).read_bytes() == before


def test_bad_targets_and_runs_exit_2(tiny_run, tmp_path, run_cli):
    (tmp_path / "file").write_text("")
    code, _, stderr = run_cli(main, [tiny_run("random_objects"), "--to", tmp_path / "file"])
    assert code == 2 and "is a file; --to takes a folder" in stderr
    code, _, stderr = run_cli(main, [tmp_path, "--to", tmp_path / "out"])
    assert code == 2 and "ckpt.pt does not exist" in stderr and not (tmp_path / "out").exists()
