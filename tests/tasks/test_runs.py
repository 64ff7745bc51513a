"""Tests of ``tasks.runs``: a run read back from its folder (task, options, variant and seed from the stored
configuration, the trained weights) and refused with a clear error when it cannot be."""
import shutil
from dataclasses import asdict

import pytest
import torch

from slots.checkpoint import save_checkpoint
from slots.train import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from tasks.random_objects.experiment import TASK as RANDOM_OBJECTS
from tasks.runs import TASK_MODULES, evaluate_run, get_task, load_eval_data, load_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_task_of_the_registry_has_its_name_and_a_model_kind():
    from slots.pretrained import MODEL_KINDS

    for name in TASK_MODULES:
        task = get_task(name)
        assert task.name == name and task.model_kind in MODEL_KINDS
    with pytest.raises(ValueError, match="'nope' is not one of the tasks"):
        get_task("nope")


def test_load_run_reads_back_the_run(tiny_run):
    folder = tiny_run("random_objects")
    run = load_run(folder)
    ckpt = load_checkpoint(folder / CHECKPOINT_NAME)
    assert run.task is RANDOM_OBJECTS and run.variant == "sa-mesh" and run.seed == 0 and run.step == 3
    assert {k: v for k, v in ckpt["task_config"].items() if k not in ("variant", "seed", "model")} \
        == asdict(run.config)
    assert not run.model.training
    state = run.model.state_dict()
    assert state.keys() == ckpt["model"].keys()
    assert all(torch.equal(state[k], v) for k, v in ckpt["model"].items())
    assert run.train_config["seed"] == 0 and run.path == folder


def test_the_variant_comes_from_the_checkpoint_not_the_folder_name(tiny_run, tmp_path):
    moved = tmp_path / "sa" / "seed7"
    shutil.copytree(tiny_run("random_objects"), moved)
    run = load_run(moved)
    assert run.variant == "sa-mesh" and run.seed == 0


def _rewrite(folder, tmp_path, change):
    """A copy of the run in ``folder`` whose checkpoint ``change(ckpt)`` edited."""
    target = tmp_path / "edited"
    shutil.copytree(folder, target)
    ckpt = load_checkpoint(target / CHECKPOINT_NAME)
    change(ckpt)
    save_checkpoint(target / CHECKPOINT_NAME, ckpt)
    return target


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update(task="analysis_random_objects"), "'analysis_random_objects', which is not one of the tasks"),
    (lambda c: c["task_config"].update(variant="sa-xx"), "unknown variant 'sa-xx'"),
    (lambda c: c["task_config"].pop("model"), "has no model"),
    (lambda c: c["task_config"].update(sigma=-1.0), "sigma must be a finite number > 0"),
    (lambda c: c["task_config"]["model"].update(n_slots=0), "not a valid ModelConfig"),
    (lambda c: c["model"].pop("slot_attention.slots_mu"), "missing: slot_attention.slots_mu"),
    (lambda c: c["model"].update({"slot_attention.slots_mu": torch.zeros(1, 1, 3)}),
     r"wrong shape: slot_attention.slots_mu \(1, 1, 3\) \(the model's is \(1, 1, 32\)\)"),
])
def test_load_run_refuses_what_it_cannot_rebuild(tiny_run, tmp_path, change, match):
    folder = _rewrite(tiny_run("random_objects"), tmp_path, change)
    with pytest.raises(CheckpointError, match=match):
        load_run(folder)


def test_load_run_of_a_folder_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path)


def test_evaluate_run_leaves_the_callers_rngs_alone(tiny_run):
    run = load_run(tiny_run("random_objects"))
    _, test = load_eval_data(run)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = evaluate_run(run, test)
    assert torch.equal(torch.rand(3), expected)
    assert evaluate_run(run, test) == first


def test_load_eval_data_refuses_a_data_folder_for_generated_only_tasks_and_unknown_splits(tiny_run):
    run = load_run(tiny_run("random_objects"))
    with pytest.raises(ValueError, match="task random_objects has no real data"):
        load_eval_data(run, "test", "/data")
    with pytest.raises(ValueError, match="split must be one of test, train"):
        load_eval_data(run, "val")
