"""Tests of the analyses that train on random objects (tasks.analysis.fig5, variants, training) at tiny
budgets: they train the random-objects task itself in its default set-up, what they compute and write, that
training moves what it learns, resumption, bad budgets."""
import json
import math
from dataclasses import replace

import pytest
import torch

from tasks.analysis import fig5, variants
from tasks.analysis.__main__ import main
from tasks.analysis.training import eval_curve, experiment, initial_model, read_run, train_sa_mesh
from tasks.random_objects import BUDGETS, RandomObjectsConfig

TINY = replace(BUDGETS["quick"], steps=3, batch_size=32, eval_every=3, ckpt_every=3,
               overrides={"n_train": 64, "n_test": 32})


def test_runs_are_the_random_objects_task_in_its_default_set_up(tmp_path):
    exp = experiment({"learn_mesh_lr": True}, tmp_path, TINY)
    default = RandomObjectsConfig(n_train=64, n_test=32)
    assert exp.config == replace(default, learn_mesh_lr=True)  # only the variant's own option differs
    assert exp.config.mesh_lr == default.mesh_lr and exp.config.slot_init_scale == default.slot_init_scale
    assert exp.variants == ("sa-mesh",) and exp.budget.lr == BUDGETS["quick"].lr
    assert exp.budget.warmup_steps == BUDGETS["quick"].warmup_steps and exp.budget.grad_clip == BUDGETS["quick"].grad_clip
    _, results, run_dir = train_sa_mesh({}, tmp_path / "entropy", TINY, progress=False)
    assert results["task"] == "random_objects" and run_dir == tmp_path / "entropy" / "sa-mesh" / "seed0"
    stored = json.loads((run_dir / "results.json").read_text())["task_config"]
    assert stored["mesh_lr"] == default.mesh_lr and stored["slot_init_scale"] == default.slot_init_scale


def test_fig5_derivatives(tmp_path):
    data = fig5.compute(tmp_path, TINY, progress=False, points=200)
    rows = data["rows"]
    p = torch.tensor([r["p"] for r in rows])
    torch.testing.assert_close(torch.tensor([r["entropy_derivative"] for r in rows]), -torch.log(p) - 1)
    initial = initial_model(fig5.OPTIONS).slot_attention.mesh_variant.objective
    torch.testing.assert_close(torch.tensor([r["learned_initial"] for r in rows]), initial.derivative(p))
    trained = torch.tensor([r["learned_trained"] for r in rows])
    assert (trained - torch.tensor([r["learned_initial"] for r in rows])).abs().max() > 1e-6  # it learned
    assert -1 <= data["corr_trained"] <= 1 and -1 <= data["corr_initial"] <= 1
    entries = data["plan_entries"]
    assert entries.numel() == 64 * 105 * 5 and entries.min() >= 0 and entries.max() <= 1 + 1e-4
    assert data["results"]["step"] == 3 and math.isfinite(data["results"]["eval"]["rmse_norm"])
    again = fig5.compute(tmp_path, TINY, progress=False, points=200, resume=True)  # reuses the finished run
    assert again["rows"] == rows
    read = fig5.compute(tmp_path / "other", replace(TINY, steps=9), progress=False, points=200,
                        run_dir=tmp_path / "run" / "sa-mesh" / "seed0")  # a finished run read back
    assert read["rows"] == rows and read["results"]["step"] == 3


def test_read_run_reads_back_and_refuses_other_runs(tmp_path):
    trained, _, run_dir = train_sa_mesh(variants.VARIANTS["entropy"], tmp_path, TINY, progress=False)
    model, results = read_run(run_dir, variants.VARIANTS["entropy"])
    assert results["step"] == 3 and results["task_config"]["sigma"] == 0.01
    for (name, p), q in zip(model.state_dict().items(), trained.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="is not a random-objects SA-MESH run with"):
        fig5.compute(tmp_path / "x", TINY, run_dir=run_dir)  # a run of another variant
    (run_dir / "results.json").unlink()
    with pytest.raises(ValueError, match="no finished run"):
        read_run(run_dir, variants.VARIANTS["entropy"])


def test_variants_train_what_they_learn(tmp_path):
    rows = variants.compute(tmp_path, TINY, names=("entropy", "learned-lr"), progress=False)
    by = {r["name"]: r for r in rows}
    start = RandomObjectsConfig().mesh_lr
    assert by["entropy"]["mesh_lr"] == start
    assert by["learned-lr"]["mesh_lr"] != pytest.approx(start, abs=1e-6)  # the step size moved
    for r in rows:
        assert r["steps"] == 3 and math.isfinite(r["rmse_norm"]) and r["train_step_ms"] > 0
        steps, rmse = eval_curve(r["run_dir"])
        assert steps == [3] and rmse == [r["rmse_norm"]]
    variants.plot(rows, tmp_path / "v.png", 0.01)
    assert (tmp_path / "v.png").stat().st_size > 0
    assert set(variants.VARIANTS) == {"entropy", "entropy-2nd-order", "learned-objective", "similarity", "learned-lr"}


def test_each_variant_config_builds_its_parameters():
    expected = {"entropy": set(), "entropy-2nd-order": set(), "learned-lr": {"log_mesh_lr"},
                "learned-objective": {"objective.net.0.weight", "objective.net.0.bias", "objective.net.2.weight"},
                "similarity": {"similarity.net.0.weight", "similarity.net.0.bias", "similarity.net.2.weight",
                               "similarity.net.2.bias"}}
    for name, options in variants.VARIANTS.items():
        sa = initial_model(options).slot_attention
        names = set() if sa.mesh_variant is None else {k for k, _ in sa.mesh_variant.named_parameters()}
        assert names == expected[name], name


def test_fig5_command_and_bad_budgets(tmp_path, capsys):
    out = tmp_path / "f5"
    assert main(["fig5", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "2 steps of batch 64 (Table 1: 20,000)" in text and "Pearson correlation" in text
    for f in ("fig5.png", "fig5.csv", "run/sa-mesh/seed0/results.json"):
        assert (out / f).stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["fig5", "--steps", "0", "--out", str(out)])
    assert "argument --steps: must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["variants", "--steps", "2", "--sigma", "-1", "--out", str(tmp_path / "v")])
    assert "argument --sigma: must be a finite number > 0, got -1" in capsys.readouterr().err


def test_train_refuses_a_run_folder_of_another_config(tmp_path):
    train_sa_mesh(variants.VARIANTS["entropy"], tmp_path, TINY, progress=False)
    with pytest.raises(ValueError, match="different task configuration"):
        train_sa_mesh(variants.VARIANTS["learned-lr"], tmp_path, TINY, progress=False, resume=True)
