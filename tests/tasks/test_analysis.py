"""Tests of tasks.analysis: the paper's claims on the numbers behind Fig. 1/4, Fig. 3, App. B and App. C
(not on the pixels), and that every command writes its PNG and CSV."""
import csv
import math

import pytest
import torch

from tasks.analysis import ANALYSES, equivariance, fig1, fig3, similarity
from tasks.analysis.__main__ import main
from tasks.analysis.common import plan_entropy


@pytest.fixture(scope="module")
def fig1_rows():
    return fig1.compute(draws=8)


def _curve(rows, method, param):
    return fig1.curves(rows)[(method, param)]


def _window_decades(c, threshold):
    """log10 width of the range of scales where the relative gradient norm is >= threshold."""
    s = [x for x, g in zip(c["scale"], c["grad_norm_rel"]) if g >= threshold]
    return math.log10(max(s)) - math.log10(min(s))


def test_fig1_entropy_is_normalized_and_extremes_are_right(fig1_rows):
    for (method, param), c in fig1.curves(fig1_rows).items():
        assert all(-1e-9 <= h <= 1 + 1e-9 for h in c["entropy"]), (method, param)
        assert c["entropy"][-1] < 1e-6  # s = 1e3: the plan is the identity
        assert max(c["grad_norm_rel"]) == pytest.approx(1.0)
    for tau in fig1.TAUS:
        assert _curve(fig1_rows, "sinkhorn", tau)["entropy"][0] > 0.999  # s = 1e-3: uniform plan


def test_fig1_mesh_lowers_entropy_at_small_scales_with_gradients_away_from_zero(fig1_rows):
    """Sec. 4.2: at s < 0.1 MESH reduces the entropy where Sinkhorn cannot, and keeps its gradients."""
    small = [i for i, s in enumerate(_curve(fig1_rows, "mesh", 4.0)["scale"]) if s <= 1e-2]
    sh_entropy = min(_curve(fig1_rows, "sinkhorn", tau)["entropy"][i] for tau in fig1.TAUS for i in small)
    assert sh_entropy > 0.85
    c = _curve(fig1_rows, "mesh", 4.0)
    assert max(c["entropy"][i] for i in small) < 0.5  # well below Sinkhorn's
    for lr in (1.0, 2.0, 4.0):
        c = _curve(fig1_rows, "mesh", lr)
        assert min(c["grad_norm_rel"][i] for i in small) > 0.2, lr
        assert max(c["entropy"][i] for i in small) < min(_curve(fig1_rows, "sinkhorn", 1.0)["entropy"][i]
                                                         for i in small), lr


def test_fig1_sinkhorn_gradients_vanish_outside_a_narrow_range(fig1_rows):
    for tau in fig1.TAUS:
        c = _curve(fig1_rows, "sinkhorn", tau)
        assert _window_decades(c, 0.05) <= 2.0, tau
        assert c["grad_norm_rel"][0] < 0.02 and c["grad_norm_rel"][-1] < 1e-6, tau  # both ends: ~0
    for lr in (1.0, 2.0, 4.0):
        c = _curve(fig1_rows, "mesh", lr)
        assert c["grad_norm_rel"][0] > 0.2 and _window_decades(c, 0.05) >= 3.0, lr


def test_fig4_raw_gradients_scale_with_sinkhorn_temperature_but_not_mesh_step(fig1_rows):
    """App. E: Sinkhorn's peak gradient grows like 1 / tau; MESH's varies little across lambda = 1..4."""
    sh = [max(_curve(fig1_rows, "sinkhorn", tau)["grad_norm"]) for tau in fig1.TAUS]
    for hi, lo, t_hi, t_lo in zip(sh[1:], sh, fig1.TAUS[1:], fig1.TAUS):
        assert hi / lo == pytest.approx(t_lo / t_hi, rel=0.05)
    mesh = [max(_curve(fig1_rows, "mesh", lr)["grad_norm"]) for lr in (1.0, 2.0, 4.0)]
    assert max(mesh) / min(mesh) < 2


def test_fig1_gradient_matches_finite_differences():
    """The gradient of the plotted entropy w.r.t. the cost, checked on one Sinkhorn point."""
    import kernels

    C = (-0.7 * torch.eye(4, dtype=torch.float64))[None].clone().requires_grad_(True)
    ones = torch.ones(1, 4, dtype=torch.float64)

    def H(C):
        return plan_entropy(kernels.sinkhorn(C, ones, ones, n_iters=5, tau=0.5)[0])

    assert torch.autograd.gradcheck(H, (C,))


@pytest.fixture(scope="module")
def fig3_rows():
    return fig3.compute(instances=16, n=24, m=4, mesh_iters=5)


def test_fig3_equal_at_first_step_smaller_with_reuse_after(fig3_rows):
    no = {r["mesh_iter"]: r["mae"] for r in fig3_rows if not r["reuse_uv"]}
    yes = {r["mesh_iter"]: r["mae"] for r in fig3_rows if r["reuse_uv"]}
    assert no[1] == yes[1] > 0
    for t in range(2, 6):
        assert yes[t] < no[t], t


def test_converged_sinkhorn_meets_both_marginals_and_matches_pot():
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(0)
    C = torch.rand(2, 6, 3, generator=g, dtype=torch.float64)
    a, b = torch.full((2, 6), 0.5, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    P = fig3.converged_sinkhorn(C, a, b)
    for k in range(2):
        ref = ot.sinkhorn(a[k].numpy(), b[k].numpy(), C[k].numpy(), reg=1.0, stopThr=1e-14, numItermax=100_000)
        torch.testing.assert_close(P[k], torch.from_numpy(ref), rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="did not converge"):
        fig3.converged_sinkhorn(C * 300, a, b, chunk=1, max_chunks=2)


def test_app_c_set_versus_exclusive_multiset_equivariance():
    rows = equivariance.compute(trials=6)
    by = {(s["setting"], s["variant"]): s for s in equivariance.summarize(rows)}
    for setting in equivariance.SETTINGS:
        for v in ("sa", "sa-sh"):  # set-equivariant: identical twins, output permutes with the input
            s = by[setting, v]
            assert s["max_twin_gap_slots"] < 1e-12 and s["max_set_error"] < 1e-10, (setting, v)
        for v in ("sa-emd", "sa-mesh"):  # the twins are split in every trial
            assert by[setting, v]["split"] == 6 and by[setting, v]["min_twin_gap_plan"] > 0.5, (setting, v)
    # square: the tie is a swap; the output permutes up to swapping the twins (EMD exactly, MESH to ~noise)
    assert by["square", "sa-emd"]["max_multiset_error"] < 1e-10
    assert by["square", "sa-mesh"]["max_multiset_error"] < 1e-3
    for v in ("sa-emd", "sa-mesh"):  # ...but not with the input's permutation alone: not set-equivariant
        assert by["square", v]["max_set_error"] > 1e-2
    rect = [r for r in rows if r["setting"] == "rectangular" and r["variant"] == "sa-emd"]
    assert max(r["multiset_error"] for r in rect) > 1e-3  # a degenerate tie: reported, see the docstring


def test_app_b_example_twins_may_swap_but_y_column_stays():
    """With noise N(0, 1) (where App. B says the regulariser is needed): regularised MESH keeps gamma on
    y in every draw and splits the twins both ways; plain MESH moves y's column in some draws. With
    noise 1e-3 plain MESH keeps it too (the regulariser is not needed)."""
    rows = {(r["noise_scale"], r["alpha"]): r for r in similarity.compute(draws=400)}
    reg = rows[1.0, 1.0]
    assert reg["y_stays"] == 400 and reg["twins_split"] == 400
    assert reg["t1"] + reg["t2"] == 400 and min(reg["t1"], reg["t2"]) > 120
    assert rows[1.0, 0.0]["y_stays"] <= 396
    assert rows[1e-3, 0.0]["y_stays"] == 400


@pytest.mark.parametrize("name,argv,files", [
    ("fig1", ["--draws", "2"], ("fig1.png", "fig1.csv")),
    ("fig4", ["--draws", "2"], ("fig4.png", "fig4.csv")),
    ("fig3", ["--instances", "4", "--mesh-iters", "2"], ("fig3.png", "fig3.csv")),
    ("equivariance", ["--trials", "1"], ("equivariance.png", "equivariance.csv")),
    ("similarity", ["--draws", "8"], ("similarity.png", "similarity.csv")),
])
def test_commands_write_png_and_csv(tmp_path, capsys, name, argv, files):
    assert main([name, "--out", str(tmp_path), *argv]) == 0
    for f in files:
        assert (tmp_path / f).stat().st_size > 0
    with open(tmp_path / files[1]) as f:
        rows = list(csv.DictReader(f))
    assert rows and all(v != "" for v in rows[0].values())
    assert "written to" in capsys.readouterr().out


def test_command_errors(tmp_path, capsys):
    assert set(ANALYSES) == {"fig1", "fig3", "fig4", "fig5", "equivariance", "similarity", "variants", "sigma_sweep"}
    assert main(["fig3", "--instances", "1", "--out", str(tmp_path)]) == 2
    assert "--instances must be >= 2" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["similarity", "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fig2"])


def test_sigma_sweep_trains_the_random_objects_task_at_each_sigma(tmp_path, capsys):
    import json

    from tasks.random_objects import RandomObjectsConfig

    argv = ["sigma_sweep", "--out", str(tmp_path), "--sigmas", "1", "0.01", "--variant", "sa", "--variant", "sa-sh",
            "--quick", "--steps", "2", "--jobs", "1", "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    with open(tmp_path / "sigma_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["sigma"]), r["variant"]) for r in rows] == [(1.0, "sa"), (1.0, "sa-sh"), (0.01, "sa"),
                                                                 (0.01, "sa-sh")]
    assert (tmp_path / "sigma_sweep.png").stat().st_size > 0
    for r in rows:  # each row is the run's own final evaluation
        results = json.loads((tmp_path / f"sigma_{float(r['sigma']):g}" / r["variant"] / "seed0" /
                              "results.json").read_text())
        assert float(r["rmse_norm"]) == pytest.approx(results["eval"]["rmse_norm"], rel=1e-12)
        assert results["step"] == 2
        # the task's own default set-up, not one of the analysis's
        config = {k: v for k, v in results["task_config"].items() if k not in ("variant", "seed", "model", "n_test")}
        default = {k: v for k, v in vars(RandomObjectsConfig(sigma=float(r["sigma"]))).items() if k != "n_test"}
        assert config == json.loads(json.dumps(default))
        assert (r["background_mass"] == "") == (r["variant"] == "sa")
    assert "written to" in capsys.readouterr().out
    assert main([*argv, "--resume"]) == 0  # finished runs are reused, not trained again
