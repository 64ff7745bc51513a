"""Tests of ``python -m tasks.evaluate``: a tiny run, trained by the test, evaluated again from its folder gives
its results.json metrics bit for bit; the train split, another JSON path and bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from slots.train import RESULTS_NAME
from tasks.evaluate import main

ROOT = Path(__file__).resolve().parents[2]


def _as_text(metrics: dict) -> str:
    return json.dumps(metrics, sort_keys=True)  # NaN == NaN, and every bit of every float


@pytest.mark.parametrize("task", ["random_objects", "multi_dsprites", "clevr", "clevrer"])
def test_evaluate_reproduces_results_json_exactly(tiny_run, task, run_cli):
    folder = tiny_run(task)
    code, stdout, stderr = run_cli(main, [folder])
    assert code == 0, stderr
    written = json.loads((folder / "eval_test.json").read_text())
    results = json.loads((folder / RESULTS_NAME).read_text())
    assert _as_text(written["eval"]) == _as_text(results["eval"])
    assert written["task"] == task and written["split"] == "test" and written["step"] == results["step"]
    assert f"identical to {folder / RESULTS_NAME}" in stdout


def test_evaluate_as_a_command_in_a_fresh_process(tiny_run, tmp_path):
    folder = tiny_run("random_objects")
    target = tmp_path / "sub" / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "tasks.evaluate", str(folder), "--json", str(target)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((folder / RESULTS_NAME).read_text())
    assert _as_text(json.loads(target.read_text())["eval"]) == _as_text(results["eval"])
    assert "| normalized RMSE |" in proc.stdout and "identical to" in proc.stdout


@pytest.mark.parametrize("task", ["multi_dsprites", "clevrer"])
def test_train_split_is_the_runs_training_data(tiny_run, task, tmp_path, run_cli):
    folder = tiny_run(task)
    code, stdout, stderr = run_cli(main, [folder, "--split", "train", "--json", tmp_path / "train.json"])
    assert code == 0, stderr
    train = json.loads((tmp_path / "train.json").read_text())
    test = json.loads((folder / RESULTS_NAME).read_text())["eval"]
    assert train["split"] == "train" and train["eval"].keys() == test.keys() and train["eval"] != test
    assert "train split" in stdout and "identical to" not in stdout


@pytest.mark.parametrize("args, match", [
    (["--data-dir", "/nowhere"], "task random_objects has no real data to read"),
    (["--split", "val"], "invalid choice: 'val'"),
    (["--device", "gpu"], "must be auto, cpu, cuda or cuda:<i>"),
])
def test_bad_options_exit_2(tiny_run, args, match, run_cli):
    code, _, stderr = run_cli(main, [tiny_run("random_objects"), *args])
    assert code == 2 and match in stderr


def test_a_folder_without_a_run_exits_2_naming_the_checkpoint(tmp_path, run_cli):
    code, _, stderr = run_cli(main, [tmp_path])
    assert code == 2 and f"checkpoint {tmp_path / 'ckpt.pt'} does not exist" in stderr


def test_a_missing_real_data_folder_exits_2(tiny_run, tmp_path, run_cli):
    code, _, stderr = run_cli(main, [tiny_run("multi_dsprites"), "--data-dir", tmp_path / "none"])
    assert code == 2 and str(tmp_path / "none") in stderr
