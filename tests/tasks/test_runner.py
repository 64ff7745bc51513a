"""Tests of the shared experiment runner (``tasks.runner``) on a toy task: the summary and table of a task with
several metrics and mean +- std over seeds, baseline rows, the after-train hook, budgets and their overrides,
and run folders that cannot be used (refused in one line, exit status 2, nothing written)."""
import contextlib
import dataclasses
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import emd_cpp
from tasks import runner
from tasks.options import Options, option
from tasks.pool import run_jobs


@dataclass
class ToyConfig(Options):
    n_train: int = option(64, "training examples", minimum=1)
    noise: float = option(0.1, "noise of the targets", minimum=0.0)


class _Toy:
    def __init__(self, n: int, noise: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + noise * torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx]


def _build(cfg, variant):
    model = nn.Linear(3, 1)
    if variant == "zero":
        nn.init.zeros_(model.weight)
    return model


def _loss(model, batch):
    x, y = batch
    return ((model(x).squeeze(1) - y) ** 2).mean()


def _evaluate(model, test, cfg):
    mse = float(_loss(model, (test.x, test.y)))
    return {"mse": mse, "score": 100 / (1 + mse)}


def _after_train(model, test, cfg, variant, run_dir):
    (run_dir / "after.txt").write_text(f"{_evaluate(model, test, cfg)['mse']!r}")


def _describe(cfg, budget, seeds):
    return f"Toy regression: {budget.steps} steps, mean of {seeds} seed(s)."


TOY = runner.Task(
    name="toy", config=ToyConfig, variants={"sa": "Plain", "zero": "Zero-init"}, default_variants=("sa", "zero"),
    data=runner.Data(load_train=lambda cfg, seed: _Toy(cfg.n_train, cfg.noise, 1 + seed),
                     load_test=lambda cfg: _Toy(32, 0.0, 0)),
    build=_build, loss=_loss, evaluate=_evaluate,
    report=runner.Report(
        metrics=(runner.Metric("score", "score", fmt=".1f"), runner.Metric("mse", "MSE", lower_is_better=True)),
        paper=lambda cfg: {"zero": {"score": (90.0, 1.5)}, "predict 0": {"mse": 4.0}},
        paper_label="Table 0, mean ± std", describe=_describe, aggregate="mean",
        baselines=lambda cfg, test: {"predict 0": {"mse": float((test.y ** 2).mean()), "score": 0.0}},
        after_train=_after_train, plot_file="score.png"),
    budgets={"cpu": runner.Budget(steps=6, batch_size=16, lr=0.05, eval_every=3, ckpt_every=3),
             "paper": runner.Budget(steps=10, batch_size=16, overrides={"n_train": 128})},
    default_budget="cpu")


def _with(task, **changes):
    """``task`` with fields of the task, of its ``data`` or of its ``report`` replaced."""
    parts = {}
    for part in ("data", "report"):
        names = {f.name for f in dataclasses.fields(getattr(task, part))}
        parts[part] = dataclasses.replace(getattr(task, part), **{k: changes.pop(k) for k in list(changes)
                                                                  if k in names})
    return dataclasses.replace(task, **parts, **changes)


def run_main(argv, task=TOY):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = runner.main(task, [str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def test_summary_table_and_hooks(tmp_path):
    out = tmp_path / "toy"
    code, stdout, stderr = run_main(["--seeds", "2", "--jobs", "1", "--threads", "1", "--no-progress", "--out", out])
    assert code == 0, stderr
    summary = json.loads((out / "table.json").read_text())
    assert [r["name"] for r in summary["rows"]] == ["Plain", "Zero-init"]
    for row in summary["rows"]:
        per_seed = [json.loads((out / row["variant"] / f"seed{s}" / "results.json").read_text())["eval"]
                    for s in range(2)]
        cell = row["metrics"]["score"]
        assert cell["per_seed"] == [e["score"] for e in per_seed] == row["per_seed"]
        assert cell["ours"] == pytest.approx(sum(cell["per_seed"]) / 2) == row["ours"]
        assert cell["std"] == pytest.approx(abs(cell["per_seed"][0] - cell["per_seed"][1]) / 2 ** 0.5)
        assert row["metrics"]["mse"]["ours"] == pytest.approx((per_seed[0]["mse"] + per_seed[1]["mse"]) / 2)
        for s in range(2):  # the hook ran on the trained model of every run
            assert float((out / row["variant"] / f"seed{s}" / "after.txt").read_text()) == per_seed[s]["mse"]
        assert row["step_ms"] > 0
    assert summary["rows"][0]["time_vs"] == 1.0
    assert summary["rows"][1]["metrics"]["score"]["paper"] == [90.0, 1.5]
    assert summary["rows"][0]["metrics"]["score"]["paper"] is None
    zero_mse = summary["baselines"]["predict 0"]["metrics"]["mse"]
    assert zero_mse["paper"] == 4.0 and zero_mse["ours"] > 0.5
    assert summary["curves"]["zero"]["seed1"]["eval_step"] == [3, 6]

    table = (out / "table.md").read_text()
    lines = table.splitlines()
    assert lines[0] == "Toy regression: 6 steps, mean of 2 seed(s)."
    assert "The paper's figures: Table 0, mean ± std." in table
    header = next(line for line in lines if line.startswith("| model"))
    assert [c.strip() for c in header.strip("| ").split("|")] == [
        "model", "ours score", "paper score", "ours MSE", "paper MSE", "ours per seed (score)", "step time (ms)",
        "time vs Plain"]
    zero = summary["rows"][1]["metrics"]["score"]
    assert f"| Zero-init | {zero['ours']:.1f} ± {zero['std']:.1f} | 90 ± 1.5 |" in table
    assert f"| predict 0 | 0.0 | - | {zero_mse['ours']:.3f} | 4 |" in table
    assert table.strip() in stdout
    assert (out / "score.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_overrides_and_explicit_options():
    parse = runner.build_parser(TOY).parse_args
    paper = runner.experiment_from_args(TOY, parse(["--budget", "paper"]))
    assert paper.budget.steps == 10 and paper.config.n_train == 128 and paper.out == "runs/toy/paper"
    mine = runner.experiment_from_args(TOY, parse(["--budget", "paper", "--steps", "4", "--lr", "0.1",
                                                   "--grad-clip", "0"]))
    assert mine.budget.steps == 4 and mine.budget.lr == 0.1 and mine.budget.batch_size == 16
    assert mine.budget.grad_clip == 0 and paper.budget.grad_clip == 1.0
    train_cfg = mine.train_config(TOY, "sa", 1)
    assert train_cfg.warmup_steps == 0 and train_cfg.decay_steps == 1 and train_cfg.seed == 1
    assert train_cfg.out_dir == str(Path("runs/toy/paper/sa/seed1"))
    flat = runner.experiment_from_args(TOY, parse(["--steps", "400", "--warmup-steps", "100", "--decay-steps", "50",
                                                   "--decay-rate", "1"])).train_config(TOY, "sa", 0)
    assert (flat.warmup_steps, flat.decay_steps, flat.decay_rate) == (100, 50, 1.0)


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_unusable_out_folder_is_refused_before_any_work(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "sub" / "run"
    code, stdout, stderr = run_main(["--no-progress", "--out", out])
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith(f"error: run folder {out} ")
    assert ("is a file" if where == "file" else f"is under {blocker}, which is a file") in stderr
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.parametrize("args,match", [
    (["--grad-clip", "-1"], "argument --grad-clip: must be a finite number >= 0, got -1"),
    (["--grad-clip", "x"], "argument --grad-clip: 'x' is not a number"),
    (["--decay-rate", "1.5"], "argument --decay-rate: must be in (0, 1], got 1.5"),
    (["--decay-rate", "0"], "argument --decay-rate: must be a finite number > 0, got 0"),
    (["--budget", "gpu"], "argument --budget: invalid choice"),
    (["--variant", "sa-foo"], "argument --variant: invalid choice"),
    (["--jobs", "0"], "argument --jobs: must be an integer >= 1, got 0"),
    (["--jobs", "-2"], "argument --jobs: must be an integer >= 1, got -2"),
    (["--seeds", "0"], "argument --seeds: must be an integer >= 1, got 0"),
])
def test_bad_arguments_exit_2(tmp_path, args, match):
    code, _, stderr = run_main([*args, "--out", tmp_path / "x"])
    assert code == 2 and match in stderr and "usage:" in stderr
    assert not (tmp_path / "x").exists()


def test_experiment_jobs_is_at_least_one_or_none():
    budget = TOY.budgets["cpu"]
    assert runner.Experiment(ToyConfig(), budget, ("sa",), "x").jobs is None  # one per core
    for jobs in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"jobs must be an integer >= 1, got {jobs}"):
            runner.Experiment(ToyConfig(), budget, ("sa",), "x", jobs=jobs)


def test_task_validation_runs_before_any_work(tmp_path):
    code, _, stderr = run_main(["--batch-size", "128", "--out", tmp_path / "x"])
    assert code == 2 and stderr == "error: n_train (64) must be at least one batch (128)\n"
    assert not (tmp_path / "x").exists()


def test_a_variant_that_needs_emd_is_refused_before_any_work_without_lemon(tmp_path, without_emd):
    emd_task = _with(TOY, variants={**TOY.variants, "sa-emd": "SA-EMD"})
    code, stdout, stderr = run_main(["--variant", "sa", "--variant", "sa-emd", "--out", tmp_path / "x"], emd_task)
    assert code == 2 and stdout == "" and stderr == f"error: {emd_cpp.MISSING_LEMON}\n"
    assert not (tmp_path / "x").exists()


def _draw(model, test, cfg, variant, run_dir):
    """An after_train hook that draws a picture: the model's weights as a (1, 3) grey image."""
    from PIL import Image

    w = model.weight.detach().clamp(-2, 2).add(2).mul(63).to(torch.uint8).numpy()
    Image.fromarray(w).save(run_dir / "weights.png")


def test_tensorboard_flag_writes_every_run_with_its_pictures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "toy"
    code, _, stderr = run_main(["--tensorboard", "--jobs", "1", "--threads", "1", "--no-progress", "--out", out],
                               _with(TOY, after_train=_draw))
    assert code == 0, stderr
    for variant in TOY.default_variants:
        run = out / variant / "seed0"
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if r["split"] == "eval"]
        for key in ("score", "mse"):
            assert [(e.step, e.value) for e in acc.Scalars(f"eval/{key}")] == [
                (r["step"], pytest.approx(r[key], rel=1e-6)) for r in evals]
        assert {"train/loss", "train/lr", "train/grad_norm"} <= set(acc.Tags()["scalars"])
        (picture,) = acc.Images("pictures/weights")
        assert (picture.step, picture.height, picture.width) == (6, 1, 3)


def test_tensorboard_flag_without_tensorboard_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    code, stdout, stderr = run_main(["--tensorboard", "--out", tmp_path / "x"])
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: --tensorboard needs the tensorboard package") and "[tensorboard]" in stderr
    assert not (tmp_path / "x").exists()


def _square_plus(x, y):
    return x * x + y


def test_run_jobs_keeps_job_order_and_reports_each_job():
    done = []
    assert run_jobs(_square_plus, [(3, 1), (2, 0), (5, 5)], 2, on_done=lambda i, r: done.append((i, r))) == [10, 4, 30]
    assert sorted(done) == [(0, 10), (1, 4), (2, 30)]
    assert run_jobs(_square_plus, [(1, 1)], 1) == [2]
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        run_jobs(_square_plus, [], 0)


def _refuse_data(cfg, progress):
    raise ValueError(f"data file /no/such/train.bin does not exist (noise {cfg.noise})")


def test_prepare_runs_once_before_any_run_folder_is_written(tmp_path):
    bad = _with(TOY, prepare=_refuse_data)
    code, stdout, stderr = run_main(["--jobs", "2", "--no-progress", "--out", tmp_path / "x"], task=bad)
    assert code == 2 and stdout == ""
    assert stderr == "error: data file /no/such/train.bin does not exist (noise 0.1)\n"
    assert not (tmp_path / "x").exists()

    calls = []  # (n_train, whether a run folder existed when prepare ran)
    good = _with(TOY, prepare=lambda cfg, progress: calls.append(
        (cfg.n_train, any((tmp_path / "y").glob("*/seed*")))))
    code, _, stderr = run_main(["--jobs", "1", "--threads", "1", "--no-progress", "--out", tmp_path / "y"],
                               task=good)
    assert code == 0, stderr
    assert calls == [(64, False)] and (tmp_path / "y" / "table.md").exists()
def test_a_metric_without_figures_of_the_paper_has_no_paper_column():
    def cell(ours, paper):
        return {"ours": ours, "std": None, "min": ours, "max": ours, "per_seed": [ours], "paper": paper}

    row = {"variant": "sa", "name": "Plain", "step_ms": 2.0, "time_vs": 1.0,
           "metrics": {"score": cell(50.0, (90.0, 1.5)), "mse": cell(0.25, None)}}
    summary = {"describe": "Toy.", "paper_label": "Table 0", "rows": [row], "baselines": {}}
    lines = runner.format_table(TOY, summary).splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert [c.strip() for c in header.strip("| ").split("|")] == [
        "model", "ours score", "paper score", "ours MSE", "ours per seed (score)", "step time (ms)", "time vs Plain"]
    assert lines[-1] == "| Plain | 50.0 | 90 ± 1.5 | 0.250 | 50.0 | 2.0 | 1.00x |"
def test_prepare_paper_rows_paper_time_and_label(tmp_path):
    """A task's prepare hook runs once before any work (and not when every run is reused); a ValueError from it
    is one line with nothing written. Names the paper lists that are not variants become rows of the paper's
    figures alone; the paper's training times show with their ratio to time_vs's; a callable paper_label gets
    the options."""
    prepared = []

    def prepare(cfg, progress):
        prepared.append(cfg.noise)
        if cfg.noise > 1:
            raise ValueError(f"data file for noise {cfg.noise:g} is broken")

    task = _with(
        TOY, prepare=prepare, paper_label=lambda cfg: f"Table 0 at noise {cfg.noise:g}",
        paper=lambda cfg: {"zero": {"score": (90.0, 1.5)}, "Other method": {"score": 95.0, "mse": 0.5}},
        paper_time=lambda cfg: {"sa": 2.0, "zero": 3.0})
    out = tmp_path / "toy"
    argv = ["--jobs", "1", "--threads", "1", "--no-progress", "--out", out]
    code, stdout, stderr = run_main(argv, task)
    assert code == 0, stderr
    assert prepared == [0.1]
    summary = json.loads((out / "table.json").read_text())
    assert summary["paper_label"] == "Table 0 at noise 0.1"
    assert [r["paper_time_h"] for r in summary["rows"]] == [2.0, 3.0]
    assert [r["paper_time_vs"] for r in summary["rows"]] == [1.0, 1.5]
    other = summary["baselines"]["Other method"]["metrics"]
    assert other["score"] == {"ours": None, "paper": 95.0} and other["mse"] == {"ours": None, "paper": 0.5}
    table = (out / "table.md").read_text()
    assert "The paper's figures: Table 0 at noise 0.1." in table
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("| ").split("|")][-4:] == [
        "ours per seed (score)", "step time (ms)", "time vs Plain", "paper train time"]
    assert "| 3 h (1.50x) |" in table and "| Other method | - | 95 | - | 0.5 | - | - | - | - |" in table

    code, stdout, _ = run_main([*argv, "--resume"], task)  # every run finished: nothing to prepare
    assert code == 0 and prepared == [0.1]

    broken = tmp_path / "broken"

    code, stdout, stderr = run_main(["--no-progress", "--noise", "2", "--out", broken], task)
    assert code == 2 and stdout == "" and stderr == "error: data file for noise 2 is broken\n"
    assert not broken.exists() and prepared == [0.1, 2.0]


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` that run a spawned multiprocessing worker (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, ...
        if fields[0] != "Z" and int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_end_when_the_parent_is_killed():
    """kill -9 of the process that runs run_jobs leaves no worker training on: each ends within seconds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import time\nfrom tasks.pool import run_jobs\n"
              "if __name__ == '__main__':\n    run_jobs(time.sleep, [(300,), (300,)], 2)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 60
        workers = _children(parent.pid)
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = _children(parent.pid)
        assert len(workers) == 2, "the two workers did not start"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [w for w in workers if _alive(w)]
    for w in orphans:  # leave nothing behind when the test fails
        os.kill(w, signal.SIGKILL)
    assert not orphans


def _pool_end_times(costs: list[float], workers: int) -> list[float]:
    """When each of ``workers`` processes ends if each takes the next job of ``costs`` as soon as it is free."""
    ends = [0.0] * workers
    for c in costs:
        ends[ends.index(min(ends))] += c
    return ends


def test_schedule_starts_the_costliest_runs_first():
    """With measured step costs the runs start costliest first (then by seed), and two processes that each
    take the next run when free end Table 1's four runs as early as the best split of them allows; without
    costs the variants listed last start first."""
    from tasks.random_objects.experiment import TASK

    runs = [(v, s) for v in TASK.variants for s in range(2)]
    assert runner.schedule(_with(TASK, step_cost=None), runs)[:3] == [
        ("sa-mesh", 0), ("sa-mesh", 1), ("sa-emd", 0)]
    cost = {"sa": 1.0, "sa-sh": 1.9, "sa-emd": 3.5, "sa-mesh": 2.4}
    order = runner.schedule(_with(TASK, step_cost=cost), runs[::-1])
    assert [cost[v] for v, _ in order] == sorted((cost[v] for v, _ in runs), reverse=True)
    assert [s for v, s in order if v == "sa"] == [0, 1]
    one_seed = runner.schedule(_with(TASK, step_cost=cost), [(v, 0) for v in TASK.variants])
    ends = _pool_end_times([cost[v] for v, _ in one_seed], 2)
    best = min(max(sum(cost[v] for v in part), sum(cost.values()) - sum(cost[v] for v in part))
               for part in (("sa-emd",), ("sa-emd", "sa"), ("sa-emd", "sa-sh"), ("sa-emd", "sa-mesh")))
    assert max(ends) == pytest.approx(best)


def test_an_option_added_since_a_run_was_written_keeps_it_resumable(tmp_path):
    argv = ["--jobs", "1", "--threads", "1", "--no-progress", "--variant", "sa", "--out", tmp_path / "toy"]
    assert run_main(argv)[0] == 0

    @dataclass
    class Newer(ToyConfig):
        extra: int = option(0, "an option the task gained after the run", minimum=0)

    newer = dataclasses.replace(TOY, config=Newer)
    code, stdout, stderr = run_main([*argv, "--resume"], newer)
    assert code == 0 and "== Plain" not in stdout, stderr  # reused: the new option keeps its default
    code, _, stderr = run_main([*argv, "--resume", "--extra", "1"], newer)
    assert code == 2 and "differs in: extra" in stderr


def test_compile_flag_reaches_every_runs_training_config(tmp_path):
    parser = runner.build_parser(TOY)
    for argv, want in (([], False), (["--compile"], True)):
        exp = runner.experiment_from_args(TOY, parser.parse_args([*argv, "--out", str(tmp_path / "x")]))
        assert exp.compile is want
        assert all(exp.train_config(TOY, v, 0).compile is want for v in TOY.default_variants)
