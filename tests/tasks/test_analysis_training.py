"""Tests of the analyses that train on random objects (tasks.analysis.fig5, variants, training) at tiny
budgets: what they compute and write, that training moves what it learns, resumption, bad budgets."""
import math

import pytest
import torch

from tasks.analysis import fig5, variants
from tasks.analysis.__main__ import main
from tasks.analysis.training import Budget, build_model, eval_curve, load_run, train_sa_mesh

TINY = Budget(steps=3, n_train=64, n_test=32, eval_every=3, batch_size=32)


def test_fig5_derivatives(tmp_path):
    data = fig5.compute(tmp_path, TINY, progress=False, points=200)
    rows = data["rows"]
    p = torch.tensor([r["p"] for r in rows])
    torch.testing.assert_close(torch.tensor([r["entropy_derivative"] for r in rows]), -torch.log(p) - 1)
    initial = build_model(fig5.OT, 0).slot_attention.mesh_variant.objective
    torch.testing.assert_close(torch.tensor([r["learned_initial"] for r in rows]), initial.derivative(p))
    trained = torch.tensor([r["learned_trained"] for r in rows])
    assert (trained - torch.tensor([r["learned_initial"] for r in rows])).abs().max() > 1e-6  # it learned
    assert -1 <= data["corr_trained"] <= 1 and -1 <= data["corr_initial"] <= 1
    entries = data["plan_entries"]
    assert entries.numel() == 64 * 105 * 5 and entries.min() >= 0 and entries.max() <= 1 + 1e-4
    assert data["results"]["step"] == 3 and math.isfinite(data["results"]["eval"]["rmse_norm"])
    again = fig5.compute(tmp_path, TINY, progress=False, points=200, resume=True)  # reuses the finished run
    assert again["rows"] == rows
    read = fig5.compute(tmp_path / "other", Budget(9, 64, 32, 9), progress=False, points=200,
                        run_dir=tmp_path / "run")  # a finished run read back: its budget, not the one passed
    assert read["rows"] == rows and read["budget"] == TINY


def test_load_run_reads_back_and_refuses_other_runs(tmp_path):
    trained, _ = train_sa_mesh(variants.VARIANTS["entropy"], tmp_path, TINY, progress=False)
    model, results, budget, sigma, seed = load_run(tmp_path, variants.VARIANTS["entropy"])
    assert (budget, sigma, seed, results["step"]) == (TINY, 0.01, 0, 3)
    for (name, p), q in zip(model.state_dict().items(), trained.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="is not a run of"):
        fig5.compute(tmp_path / "x", run_dir=tmp_path)  # a run of another variant
    (tmp_path / "results.json").unlink()
    with pytest.raises(ValueError, match="no finished run"):
        load_run(tmp_path, variants.VARIANTS["entropy"])


def test_variants_train_what_they_learn(tmp_path):
    rows = variants.compute(tmp_path, TINY, names=("entropy", "learned-lr"), progress=False)
    by = {r["name"]: r for r in rows}
    assert by["entropy"]["mesh_lr"] == 8.0
    assert by["learned-lr"]["mesh_lr"] != pytest.approx(8.0, abs=1e-6)  # the step size moved
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
    for name, ot in variants.VARIANTS.items():
        sa = build_model(ot, 0).slot_attention
        names = set() if sa.mesh_variant is None else {k for k, _ in sa.mesh_variant.named_parameters()}
        assert names == expected[name], name


def test_fig5_command_and_bad_budgets(tmp_path, capsys):
    out = tmp_path / "f5"
    assert main(["fig5", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "2 steps of batch 64 (Table 1: 20,000)" in text and "Pearson correlation" in text
    for f in ("fig5.png", "fig5.csv", "run/results.json"):
        assert (out / f).stat().st_size > 0
    assert main(["fig5", "--steps", "0", "--out", str(out)]) == 2
    assert "steps must be an integer >= 1" in capsys.readouterr().err
    assert main(["variants", "--steps", "2", "--sigma", "-1", "--out", str(tmp_path / "v")]) == 2
    assert "sigma must be a finite number > 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="n_train"):
        Budget(steps=1, n_train=10, n_test=1, eval_every=1)


def test_train_refuses_a_run_folder_of_another_config(tmp_path):
    train_sa_mesh(variants.VARIANTS["entropy"], tmp_path, TINY, progress=False)
    with pytest.raises(ValueError, match="another|does not match|different"):
        train_sa_mesh(variants.VARIANTS["learned-lr"], tmp_path, TINY, progress=False, resume=True)
