"""Tests of the random-objects command line (``python -m tasks.random_objects``): a tiny end-to-end run and
its summary files, argument checks, unusable run folders (corrupt or foreign checkpoints, existing runs)
refused with nothing overwritten, a damaged checkpoint then --resume-previous, a second runner on the same
folder, reuse of finished runs, Ctrl-C then --resume, and torchrun."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tasks.random_objects.experiment as experiment
from slots.checkpoint import save_checkpoint
from slots.train import CHECKPOINT_NAME, METRICS_NAME, RESULTS_NAME, CheckpointWarning, load_checkpoint
from tasks.random_objects import BUDGETS, PAPER_TABLE1, RandomObjectsConfig, format_table
from tasks.random_objects.__main__ import build_parser, config_from_args, main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--steps", "3", "--n-train", "128", "--n-test", "64", "--batch-size", "32", "--variant", "sa",
        "--threads", "1", "--no-progress"]
SUMMARY = ("table.md", "table.json", "rmse_vs_steps.png")


@pytest.fixture(scope="session")
def run_main(run_cli):
    return lambda argv: run_cli(main, argv)


def snapshot(folder: Path) -> dict:
    """{relative path: (bytes, mtime_ns)} of every file under folder (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, run_main):
    """A finished tiny run (sigma 0.01, SA, 3 steps): (out folder, exit status, stdout, stderr)."""
    out = tmp_path_factory.mktemp("finished")
    n = torch.get_num_threads()
    code, stdout, stderr = run_main([*TINY, "--out", out])
    torch.set_num_threads(n)
    return out, code, stdout, stderr


@pytest.fixture
def copy_of(finished, tmp_path):
    """A copy of the finished run folder (mtimes kept)."""
    dst = tmp_path / "run"
    shutil.copytree(finished[0], dst)
    return dst


def test_end_to_end_writes_table_and_plot(finished):
    out, code, stdout, stderr = finished
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*SUMMARY, "sa"])
    run_dir = out / "sa" / "seed0"
    results = json.loads((run_dir / RESULTS_NAME).read_text())
    assert results["step"] == 3 and results["task"] == "random_objects"
    assert results["task_config"]["sigma"] == 0.01 and results["task_config"]["variant"] == "sa"
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == 3
    ours = results["eval"]["rmse_norm"]
    assert 10 < ours < 200  # 3 steps from the initialization: slots of scale ~0.5 against objects of scale 0.01

    summary = json.loads((out / "table.json").read_text())
    assert summary["config"]["sigma"] == 0.01 and summary["config"]["steps"] == 3 and summary["config"]["n_test"] == 64
    (row,) = summary["rows"]
    assert row["name"] == "SA" and row["ours"] == ours and row["per_seed"] == [ours]
    assert row["paper"] == PAPER_TABLE1["sa"][0.01] == 0.65
    assert summary["baselines"]["always zeros"]["metrics"]["rmse_norm"]["ours"] == pytest.approx(1.0, abs=0.1)
    curves = summary["curves"]["sa"]["seed0"]
    assert curves["eval_step"] == [3] and curves["test_rmse_norm"] == [ours] and curves["train_step"] == [3]

    table = (out / "table.md").read_text()
    assert table == format_table(summary) + "\n"
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["model", "ours",
                                                                    "paper (Table 1, median of 5 seeds)"]
    assert f"| SA | {ours:.3f} | 0.65 | {ours:.3f} |" in table
    assert "sigma = 0.01" in table and "64 test examples" in table and "3 steps of batch 32" in table
    assert (out / "rmse_vs_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table.strip() in stdout and f"written to {out}/" in stdout


def test_table_has_no_paper_figure_for_other_sigmas(finished):
    summary = json.loads((finished[0] / "table.json").read_text())
    assert "sa" not in experiment._paper(RandomObjectsConfig(sigma=0.05))
    assert experiment._paper(RandomObjectsConfig(sigma=1.0))["sa-mesh"]["rmse_norm"] == 0.24
    summary["rows"][0]["metrics"]["rmse_norm"]["paper"] = None
    row = next(line for line in format_table(summary).splitlines() if line.startswith("| SA |"))
    assert row.split("|")[3].strip() == "-"


@pytest.mark.parametrize("args,match", [
    (["--sigma", "0"], "argument --sigma: must be a finite number > 0, got 0"),
    (["--sigma", "-1"], "argument --sigma: must be a finite number > 0, got -1"),
    (["--sigma", "nan"], "argument --sigma: must be a finite number > 0"),
    (["--sigma", "abc"], "argument --sigma: 'abc' is not a number"),
    (["--n-train", "-5"], "argument --n-train: must be an integer >= 1, got -5"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
    (["--n-test", "0"], "argument --n-test: must be an integer >= 1, got 0"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["--eval-every", "-1"], "argument --eval-every: must be an integer >= 0, got -1"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (["--steps", "3", "--epochs", "1"], "not allowed with argument"),
    (["--slot-init-scale", "0"], "argument --slot-init-scale: must be a finite number > 0 or 'sigma', got 0"),
    (["--slot-init-scale", "sigmaa"], "argument --slot-init-scale: 'sigmaa' is not a number"),
    (["--mesh-lr", "-1"], "argument --mesh-lr: must be a finite number >= 0, got -1"),
    (["--cost", "l3"], "argument --cost: invalid choice"),
    (["--marginal-input", "both"], "argument --marginal-input: invalid choice"),
])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, args, match, run_main):
    out = tmp_path / "run"
    code, stdout, stderr = run_main([*args, "--out", out])
    assert code == 2
    assert match in stderr and "usage:" in stderr
    assert not out.exists()


def test_learned_objective_without_differentiating_mesh_exits_2(tmp_path, run_main):
    code, _, stderr = run_main(["--mesh-objective", "learned", "--out", tmp_path / "run"])
    assert code == 2 and "error: OTConfig.mesh_objective='learned' and similarity_alpha > 0 need " in stderr
    assert not (tmp_path / "run").exists()


def test_inconsistent_sizes_exit_2_and_write_nothing(tmp_path, run_main):
    out = tmp_path / "run"
    code, _, stderr = run_main([*TINY, "--n-train", "16", "--out", out])
    assert code == 2
    assert "error: n_train (16) must be at least one batch (32)" in stderr
    assert not out.exists()


def test_command_line_exit_status(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tasks.random_objects", "--sigma", "0", "--out", tmp_path / "x"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "argument --sigma: must be a finite number > 0" in done.stderr
    assert not (tmp_path / "x").exists()


def test_config_from_args_precedence():
    parse = build_parser().parse_args
    quick = config_from_args(parse(["--quick", "--steps", "7", "--out", "o"]))
    assert quick.budget.steps == 7 and quick.config.n_test == BUDGETS["quick"].overrides["n_test"] == 1_280
    assert quick.budget.eval_every == BUDGETS["quick"].eval_every == 250
    epochs = config_from_args(parse(["--epochs", "2", "--n-train", "100", "--batch-size", "32", "--out", "o"]))
    assert epochs.budget.steps == 6
    head = config_from_args(parse(["--head", "none", "--out", "o"]))
    assert head.config.head == "none" and head.config.model("sa").head == "none"
    variant = config_from_args(parse(["--no-straight-through", "--learn-mesh-lr", "--mesh-objective", "learned",
                                      "--similarity-alpha", "0.5", "--out", "o"])).config
    ot = variant.model("sa-mesh").ot
    assert (ot.straight_through, ot.learn_mesh_lr, ot.mesh_objective, ot.similarity_alpha) == (False, True, "learned", 0.5)
    assert variant.model("sa-sh").ot == RandomObjectsConfig().model("sa-sh").ot  # other variants ignore them
    official = config_from_args(parse(["--warm-start-grad", "--out", "o"])).config
    assert official.model("sa-mesh").ot.warm_start_grad and not RandomObjectsConfig().model("sa-mesh").ot.warm_start_grad
    raw = config_from_args(parse(["--raw-plan", "--uniform-marginals", "--out", "o"])).config
    for name in ("sa-sh", "sa-emd", "sa-mesh"):
        assert not raw.model(name).ot.normalize_plan and not raw.model(name).ot.learned_marginals
        assert RandomObjectsConfig().model(name).ot.normalize_plan and RandomObjectsConfig().model(name).ot.learned_marginals
    default = config_from_args(parse(["--sigma", "0.1"]))
    assert default.out == "runs/random_objects/sigma_0.1" and default.variants == experiment.VARIANTS
    # the paper's set-up: the slots are the predictions, the official optimizer settings
    assert default.config.head == "none" and default.config.model("sa-mesh").head == "none"
    b = default.budget
    assert (b.steps, b.batch_size, b.lr, b.warmup_steps, b.decay_steps, b.grad_clip) == (20_000, 64, 4e-4, 10_000,
                                                                                         100_000, 0.1)
    linear = config_from_args(parse(["--head", "linear", "--out", "o"]))
    assert linear.config.head == "linear" and linear.config.model("sa").head == "linear"


# ---------------------------------------------------------------------------------------------------
# Unusable run folders: exit status 2, nothing overwritten


def _break(run, breakage):
    """Damage the copy of a finished run as named; returns the extra CLI arguments of the attempt.
    Names ending in "_killed" remove results.json first (a run killed while it trained)."""
    ckpt, results = run / "sa" / "seed0" / CHECKPOINT_NAME, run / "sa" / "seed0" / RESULTS_NAME
    if breakage.endswith("_killed"):
        results.unlink()
    if breakage.startswith("garbage"):
        ckpt.write_bytes(b"\x00garbage, not a checkpoint")
    elif breakage.startswith("truncated"):
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[:len(data) // 3])
    elif breakage.startswith("other_task"):
        state = load_checkpoint(ckpt)
        state["task"] = "clevr"
        save_checkpoint(ckpt, state)
    elif breakage == "corrupt_results":
        results.write_text('{"task": "random_ob')
    elif breakage == "foreign_results":  # results of sigma 0.01 without their checkpoint
        ckpt.unlink()
        return ["--sigma", "0.1"]
    elif breakage.startswith("other_sigma"):
        return ["--sigma", "0.1"]
    elif breakage.startswith("other_lr"):
        return ["--lr", "1e-3"]
    elif breakage == "fewer_steps":
        return ["--steps", "2"]
    return []


CANNOT_READ = "cannot be read (truncated or corrupt?)"


@pytest.mark.parametrize("breakage,match", [
    ("garbage_killed", CANNOT_READ),
    ("garbage", CANNOT_READ),
    ("truncated_killed", CANNOT_READ),
    ("other_task_killed", "belongs to task 'clevr', not 'random_objects'"),
    ("other_task", "belongs to task 'clevr', not 'random_objects'"),
    ("other_sigma_killed", "different task configuration (differs in: sigma)"),
    ("other_sigma", "different task configuration (differs in: sigma)"),
    ("other_lr_killed", "different training configuration (differs in: lr)"),
    ("other_lr", "different training configuration (differs in: lr)"),
    ("fewer_steps", "is a finished run of 3 steps, more than the 2 asked for"),
    ("corrupt_results", "results.json cannot be read"),
    ("foreign_results", "results.json belongs to another task or configuration"),
])
def test_unusable_run_folder_with_resume_exits_2_and_overwrites_nothing(copy_of, breakage, match, run_main):
    extra = _break(copy_of, breakage)
    before = snapshot(copy_of)
    code, stdout, stderr = run_main([*TINY, *extra, "--out", copy_of, "--resume"])
    assert code == 2, stdout + stderr
    assert stderr.startswith("error: ") and match in stderr
    assert snapshot(copy_of) == before


def test_existing_run_without_resume_exits_2_and_overwrites_nothing(copy_of, run_main):
    before = snapshot(copy_of)
    code, _, stderr = run_main([*TINY, "--out", copy_of])
    assert code == 2
    assert "already holds ckpt.pt, results.json; resume it or choose another run folder" in stderr
    assert snapshot(copy_of) == before


def test_resume_reuses_finished_run(copy_of, run_main):
    before = snapshot(copy_of)
    code, stdout, stderr = run_main([*TINY, "--out", copy_of, "--resume"])
    assert code == 0, stderr
    after = snapshot(copy_of)
    assert "== SA" not in stdout  # nothing trained
    for name in ("sa/seed0/ckpt.pt", "sa/seed0/results.json", "sa/seed0/metrics.jsonl"):
        assert after[name] == before[name]
    assert after["table.md"][0].decode() == before["table.md"][0].decode()  # the same table, written again


def test_damaged_checkpoint_exits_2_and_resume_previous_gives_the_uninterrupted_run(finished, tmp_path, run_main,
                                                                                    assert_same_checkpoint):
    out = tmp_path / "run"
    code, _, stderr = run_main([*TINY, "--ckpt-every", "1", "--out", out])  # ckpt.pt: step 3, ckpt.prev.pt: step 2
    assert code == 0, stderr
    run_dir = out / "sa" / "seed0"
    ckpt = run_dir / CHECKPOINT_NAME
    weights = max(load_checkpoint(ckpt)["model"].values(), key=lambda t: t.numel()).numpy().tobytes()
    data = bytearray(ckpt.read_bytes())
    data[data.find(weights) + 5] ^= 0x01  # one flipped byte in a tensor
    ckpt.write_bytes(bytes(data))
    before = snapshot(out)
    code, _, stderr = run_main([*TINY, "--out", out, "--resume"])
    assert code == 2 and stderr.startswith(f"error: checkpoint {ckpt} cannot be read (truncated or corrupt?)")
    assert "SHA-256" in stderr and "(step 2) passes its check" in stderr and "--resume-previous" in stderr
    assert "weights_only" not in stderr and stderr.count("\n") == 1
    assert snapshot(out) == before
    with pytest.warns(CheckpointWarning, match=r"resuming from .*ckpt\.prev\.pt \(step 2\).*ckpt\.damaged\.pt"):
        code, _, stderr = run_main([*TINY, "--out", out, "--resume-previous"])
    assert code == 0, stderr
    assert_same_checkpoint(run_dir, finished[0] / "sa" / "seed0", 3)
    assert (run_dir / "ckpt.damaged.pt").read_bytes() == bytes(data)


def test_second_runner_on_the_same_folder_exits_2_and_the_first_logs_each_step_once(tmp_path, run_main):
    out = tmp_path / "run"
    argv = ["--steps", "60", *TINY[2:], "--out", out]  # a training record at steps 50 and 60
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first = subprocess.Popen([sys.executable, "-m", "tasks.random_objects", *map(str, argv)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lock").exists():
            assert first.poll() is None, first.stdout.read().decode()
            assert time.monotonic() < deadline, "the first runner did not start"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # it stays alive, holding the lock, while the second one tries
        before = snapshot(out)
        for extra in ([], ["--resume"]):
            code, stdout, stderr = run_main([*argv, *extra])
            assert code == 2 and stdout == ""
            assert stderr == (f"error: run folder {out} is in use by process {first.pid} (lock file {out}/.lock); "
                              "wait for it to end or choose another folder\n")
        assert snapshot(out) == before
        first.send_signal(signal.SIGCONT)
        output, _ = first.communicate(timeout=300)
        assert first.returncode == 0, output.decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    records = [json.loads(line) for line in (out / "sa" / "seed0" / METRICS_NAME).read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [50, 60]
    assert [r["step"] for r in records if r["split"] == "eval"] == [60]
    assert not (out / ".lock").exists()


def test_ctrl_c_then_resume_gives_the_uninterrupted_run(finished, tmp_path, run_main, ctrl_c_at_step_2,
                                                         assert_same_checkpoint):
    out = tmp_path / "run"
    calls = ctrl_c_at_step_2(experiment)
    code, _, stderr = run_main([*TINY, "--out", out])
    assert code == 130
    assert "interrupted at step 2" in stderr and "rerun with --resume" in stderr
    run_dir = out / "sa" / "seed0"
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == 2
    assert not (run_dir / RESULTS_NAME).exists()
    assert not any((out / name).exists() for name in SUMMARY)

    code, _, stderr = run_main([*TINY, "--out", out, "--resume"])
    assert code == 0, stderr
    assert len(calls) == 3
    assert_same_checkpoint(run_dir, finished[0] / "sa" / "seed0", 3)
    ours = json.loads((out / "table.json").read_text())["rows"][0]["ours"]
    assert ours == json.loads((finished[0] / "table.json").read_text())["rows"][0]["ours"]


def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "tasks.random_objects", *TINY, "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "sa" / "seed0" / RESULTS_NAME).read_text())
    assert results["step"] == 3 and results["world_size"] == 2
    assert load_checkpoint(out / "sa" / "seed0" / CHECKPOINT_NAME)["world_size"] == 2
    train_steps = [json.loads(line)["step"] for line in (out / "sa" / "seed0" / METRICS_NAME).read_text().splitlines()
                   if json.loads(line)["split"] == "train"]
    assert train_steps == [3]  # one record per logging step: only rank 0 writes
    assert all((out / name).exists() for name in SUMMARY)
    assert done.stdout.count("| SA |") == 1 and done.stdout.count("== SA, seed 0") == 1  # rank 0 prints


def test_parallel_jobs_give_the_same_results_as_one_process(tmp_path, run_main):
    """--jobs 2 trains the runs in two spawned processes: every run's evaluations and final parameters
    equal those of the same runs trained one after the other in this process."""
    argv = ["--steps", "4", "--n-train", "128", "--n-test", "64", "--batch-size", "32", "--variant", "sa",
            "--variant", "sa-sh", "--backend", "torch", "--threads", "1", "--no-progress", "--eval-every", "2"]
    code1, _, err1 = run_main(argv + ["--jobs", "1", "--out", tmp_path / "serial"])
    code2, out2, err2 = run_main(argv + ["--jobs", "2", "--out", tmp_path / "parallel"])
    assert code1 == 0 and code2 == 0, err1 + err2
    assert "2 runs in 2 processes" in out2
    for variant in ("sa", "sa-sh"):
        runs = [tmp_path / mode / variant / "seed0" for mode in ("serial", "parallel")]
        evals = [[(r["step"], r["rmse_norm"]) for r in map(json.loads, (d / METRICS_NAME).read_text().splitlines())
                  if r["split"] == "eval"] for d in runs]
        assert evals[0] == evals[1] and len(evals[0]) == 2
        params = [load_checkpoint(d / CHECKPOINT_NAME)["model"] for d in runs]
        assert params[0].keys() == params[1].keys()
        assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])
    tables = [json.loads((tmp_path / mode / "table.json").read_text())["rows"] for mode in ("serial", "parallel")]
    assert [r["ours"] for r in tables[0]] == [r["ours"] for r in tables[1]]


# ---------------------------------------------------------------------------------------------------
# The ideal-routing floor and the spread over seeds


def test_ideal_routing_floor():
    from tasks.random_objects.data import make_split

    g = torch.Generator().manual_seed(0)
    # objects with zero mean over their features and one norm: LayerNorm only rescales them, so a linear
    # read-out recovers them exactly
    x = torch.randn(200, 5, 32, generator=g, dtype=torch.float64)
    x = x - x.mean(2, keepdim=True)
    x = x / x.norm(dim=2, keepdim=True)
    assert experiment.ideal_routing_rmse(x, 0.2) < 1e-6
    # Gaussian objects lose their mean and scale: the floor lies between the mean-only loss sqrt(1 / 32) and
    # what the plain rescaled LayerNorm output scores, and (eps aside) does not depend on sigma
    test = make_split("test", 2_000, 1.0, 0)
    floor = experiment.ideal_routing_rmse(test.objects, 1.0)
    rescaled = torch.nn.functional.layer_norm(test.objects, (32,))
    assert (1 / 32) ** 0.5 < floor < float(experiment.normalized_hungarian_rmse(rescaled, test.objects, 1.0))
    small = make_split("test", 2_000, 0.1, 0)
    assert experiment.ideal_routing_rmse(small.objects, 0.1) == pytest.approx(floor, abs=2e-3)


def test_table_shows_floor_and_median_range(finished):
    summary = json.loads((finished[0] / "table.json").read_text())
    floor = summary["baselines"][experiment.IDEAL_ROUTING]["metrics"]["rmse_norm"]
    assert floor["paper"] is None and 0.15 < floor["ours"] < 0.3
    assert f"| {experiment.IDEAL_ROUTING} | {floor['ours']:.3f} | - |" in format_table(summary)
    row = summary["rows"][0]
    row["metrics"]["rmse_norm"].update(per_seed=[0.5, 0.7, 0.6], ours=0.6, min=0.5, max=0.7)
    assert "| SA | 0.600 [0.500, 0.700] | 0.65 |" in format_table(summary)


# ---------------------------------------------------------------------------------------------------
# The input marginal's share on the zero inputs (issue 9: does the learned marginal starve the objects?)


def test_background_mass_is_the_marginals_share_on_zero_inputs():
    from tasks.random_objects.data import make_split

    test = make_split("test", 16, 0.01, 0)
    x, _ = test[torch.arange(16)]  # (16, 105, 32): 5 objects, 100 zeros
    uniform = experiment.RandomObjectsModel(RandomObjectsConfig(learned_marginals=False).model("sa-sh"))
    assert torch.allclose(experiment.background_mass(uniform, x), torch.full((16,), 100 / 105))

    torch.manual_seed(0)
    model = experiment.RandomObjectsModel(RandomObjectsConfig().model("sa-mesh"))
    sa = model.slot_attention
    with torch.no_grad():  # LN(0) = beta: a random beta gives the zero inputs a logit of their own
        sa.norm_inputs.bias.normal_()
        sa.input_marginal[-1].weight.mul_(10.0)  # and logits far from equal
    logits = sa.input_marginal(sa.norm_inputs(x)).squeeze(2)  # (16, 105), the modules one by one
    zero = (x == 0).all(2)
    assert zero.sum(1).eq(100).all()
    expected = torch.softmax(logits, 1)[zero].view(16, 100).sum(1)
    got = experiment.background_mass(model, x).detach()
    assert torch.allclose(got, expected, atol=1e-6)
    assert (got - 100 / 105).abs().mean() > 0.05  # the learned marginal is far from uniform here

    with torch.no_grad():  # as the training loop evaluates
        evaluated = experiment._evaluate(model.eval(), test, RandomObjectsConfig(n_test=16))
        sa_model = experiment.RandomObjectsModel(RandomObjectsConfig().model("sa")).eval()
        sa_evaluated = experiment._evaluate(sa_model, test, RandomObjectsConfig(n_test=16))
    assert evaluated["background_mass"] == pytest.approx(float(got.mean()), abs=1e-6)
    assert "background_mass" not in sa_evaluated


# ---------------------------------------------------------------------------------------------------
# The options of the Table 1 search: initial slot scale, cost, marginal network's input, MESH step


def test_search_options_reach_the_model_from_the_command_line():
    parse = build_parser().parse_args
    cfg = config_from_args(parse(["--slot-init-scale", "0.01", "--mesh-lr", "1", "--mesh-iters", "2", "--n-iters",
                                  "4", "--cost", "l2sq", "--marginal-input", "raw", "--out", "o"])).config
    for name in ("sa-sh", "sa-emd", "sa-mesh"):
        m = cfg.model(name)
        assert (m.init_scale, m.cost, m.n_iters) == (0.01, "l2sq", 4)
        assert (m.ot.mesh_lr, m.ot.mesh_iters, m.ot.marginal_input) == (1.0, 2, "raw")
    assert cfg.model("sa").cost == "dot"  # SA keeps its scaled dot product
    by_sigma = config_from_args(parse(["--slot-init-scale", "sigma", "--sigma", "0.1", "--out", "o"])).config
    assert by_sigma.model("sa").init_scale == 0.1
    default = RandomObjectsConfig().model("sa-mesh")
    assert (default.init_scale, default.cost, default.ot.mesh_lr, default.ot.marginal_input) == (0.01, "l2", 1.0,
                                                                                                 "normalized")


def test_config_rejects_bad_search_options():
    with pytest.raises(ValueError, match="slot_init_scale must be a finite number > 0 or 'sigma', got -1"):
        RandomObjectsConfig(slot_init_scale=-1)
    with pytest.raises(ValueError, match="cost must be None or one of"):
        RandomObjectsConfig(cost="l3")
    with pytest.raises(ValueError, match="marginal_input must be one of normalized, raw"):
        RandomObjectsConfig(marginal_input="both")


def test_init_scale_multiplies_the_drawn_slots():
    from slots import SlotAttention, SlotAttentionConfig

    x = torch.randn(3, 7, 8)
    base = SlotAttentionConfig(n_slots=4, dim=8, input_dim=8, variant="sa", n_iters=1)
    torch.manual_seed(0)
    sa = SlotAttention(base)
    scaled = SlotAttention(SlotAttentionConfig(**{**base.to_dict(), "init_scale": 0.01}))
    scaled.load_state_dict(sa.state_dict())
    torch.manual_seed(1)
    drawn = sa.slots_mu + sa.slots_log_sigma.exp() * torch.randn(3, 4, 8)  # what _init_learned draws
    expected, _ = sa(x, slots=0.01 * drawn.detach())
    torch.manual_seed(1)
    got, _ = scaled(x)
    assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match="init_scale must be a finite number > 0"):
        SlotAttentionConfig(n_slots=4, dim=8, input_dim=8, init_scale=0.0)


def test_raw_marginal_input_is_the_network_on_the_raw_inputs():
    from tasks.random_objects.data import make_split

    x, _ = make_split("test", 8, 0.01, 0)[torch.arange(8)]  # (8, 105, 32)
    torch.manual_seed(0)
    model = experiment.RandomObjectsModel(RandomObjectsConfig(marginal_input="raw").model("sa-sh"))
    sa = model.slot_attention
    with torch.no_grad():
        sa.input_marginal[-1].weight.mul_(1e3)  # objects of scale 0.01: logits far from equal
    expected = 5 * torch.softmax(sa.input_marginal(x).squeeze(2), 1)  # (8, 105), the modules one by one
    a, _ = sa.marginals(x, torch.zeros(8, 5, 32))
    assert torch.allclose(a, expected, atol=1e-6)
    # the fused path of forward() computes the same marginal: compare the plans' row sums (rows sum to a)
    _, plan = sa(x)
    assert torch.allclose(plan.sum(2), expected, atol=1e-4)
    zero = (x == 0).all(2)
    normalized = experiment.RandomObjectsModel(RandomObjectsConfig().model("sa-sh"))
    normalized.load_state_dict(model.state_dict())
    a_norm, _ = normalized.slot_attention.marginals(x, torch.zeros(8, 5, 32))
    assert not torch.allclose(a_norm, a, atol=1e-3)  # the option changes what the network sees
    assert a[zero].view(8, 100).std(1).max() < 1e-6  # every zero input of an example gets the same mass in both
    assert a_norm[zero].view(8, 100).std(1).max() < 1e-6


def test_plan_entropy_of_uniform_and_one_hot_columns():
    uniform = torch.full((2, 105, 5), 1 / 105)
    assert torch.allclose(experiment.plan_entropy(uniform), torch.full((2,), math.log(105)))
    one_hot = torch.zeros(2, 105, 5)
    one_hot[:, :5, :] = torch.eye(5)
    assert torch.allclose(experiment.plan_entropy(one_hot), torch.zeros(2), atol=1e-6)


def test_table_names_the_set_up_in_its_first_line():
    from tasks.random_objects.experiment import setup_label

    paper = BUDGETS["paper"]
    label = setup_label(RandomObjectsConfig(), paper)
    default = RandomObjectsConfig()
    assert label.startswith("slots compared with the objects, ")
    assert f"initial slots x{default.slot_init_scale:g}" in label and f"MESH step {default.mesh_lr:g}" in label
    assert label.endswith("Adam 0.0004, 10,000 warm-up steps, clipping at 0.1")
    other = setup_label(RandomObjectsConfig(slot_init_scale="sigma", mesh_lr=2.0, cost="l2sq", marginal_input="raw",
                                            normalize_plan=False, head="linear"), paper)
    assert other.startswith("a linear read-out of the slots, initial slots x sigma, MESH step 2, OT cost l2sq, "
                            "marginal network on the raw inputs, raw plan")
    assert "uniform marginals" in setup_label(RandomObjectsConfig(learned_marginals=False), paper)
    describe = experiment.TASK.report.describe(default, paper, 5)
    assert describe.startswith(f"Random objects detection, sigma = 0.01 (set-up: {label}): ")
