"""Table 1 of the paper: random-objects detection with SA, SA-SH, SA-EMD and SA-MESH (Sec. 5.1, App. F.1).

For one sigma, every (variant, seed) pair is one run of :func:`slots.train.train` in its own folder
``<out>/<variant>/seed<s>/``; the summary (the table, the per-step curves, a plot) goes to ``<out>/``:

    table.md, table.json    normalized Hungarian RMSE per variant (median over seeds), next to the paper's
                            figures labelled as the paper's; table.json adds per-seed values and curves
    rmse_vs_steps.png       test normalized RMSE against training steps, one line per variant

The training set of seed s is ``make_split("train", n_train, sigma, s)``; the test set is the same for
every seed and variant (``make_split("test", n_test, sigma, 0)``, a different stream). The metric is the
RMSE of the Hungarian-matched (prediction, object) pairs over the whole test set, divided by sigma;
predicting zeros scores about 1 and is printed as a baseline.

Known limits: SA-EMD solves exact OT on the CPU for every example and iteration, so it is the slowest
variant; the paper's budget is 20 epochs of 1,000 steps for each of the four variants.
"""
import json
import math
import multiprocessing as mp
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from slots import OTConfig, hungarian_mse_loss, normalized_hungarian_rmse
from slots.train import (RESULTS_NAME, METRICS_NAME, CheckpointError, TrainConfig, check_resumable,
                         dist_info, is_main_process, seed_everything, train)

from .data import make_split
from .model import ModelConfig, RandomObjectsModel

__all__ = ["ExperimentConfig", "run_experiment", "PAPER_TABLE1", "VARIANTS", "TASK", "format_table"]

TASK = "random_objects"
VARIANTS = ("sa", "sa-sh", "sa-emd", "sa-mesh")
VARIANT_NAMES = {"sa": "SA", "sa-sh": "SA-SH", "sa-emd": "SA-EMD", "sa-mesh": "SA-MESH"}
# Table 1 of Zhang et al. (ICML 2023), median over 5 seeds: the paper's figures, not ours.
PAPER_TABLE1 = {
    "sa": {1.0: 0.44, 0.1: 0.53, 0.01: 0.65},
    "sa-sh": {1.0: 0.27, 0.1: 0.32, 0.01: 0.41},
    "sa-emd": {1.0: 0.23, 0.1: 0.52, 0.01: 1.04},
    "sa-mesh": {1.0: 0.24, 0.1: 0.27, 0.01: 0.31},
}
TEST_SEED = 0
BACKENDS = ("auto", "torch", "cpp", "compile", "triton")


def _paper_value(variant: str, sigma: float) -> float | None:
    for s, v in PAPER_TABLE1[variant].items():
        if math.isclose(s, sigma, rel_tol=1e-9):
            return v
    return None


@dataclass
class ExperimentConfig:
    """Options of :func:`run_experiment` (the CLI's arguments).

    Attributes:
        sigma: standard deviation of the objects, > 0.
        out: run folder of this sigma.
        variants: variants to train, in table order.
        seeds: number of seeds (0 .. seeds - 1); the table reports the median.
        n_train, n_test: training and test examples. n_objects, n_background, dim: the data (5, 100, 32).
        batch_size, steps: global batch and optimizer steps per run (the paper: 64 and 20 x 1,000).
        lr, warmup_steps, decay_steps, grad_clip: optimizer (see ``slots.train.TrainConfig``);
            warmup_steps None: min(1,000, steps / 20); decay_steps None: steps / 4 (the rate halves every
            quarter of the run).
        eval_every, ckpt_every: steps between test evaluations / checkpoints.
        eval_batch: examples per forward pass during evaluation.
        head, n_iters, mesh_lr, mesh_iters: model options (see ``model.ModelConfig``, ``slots.OTConfig``).
        backend: OT backend (``slots.OTConfig.backend``); "auto" is the default dispatch: the fused C++
            loops on CPU, Triton on CUDA.
        resume: continue runs from their checkpoints and reuse finished runs.
        num_threads: torch threads per run (None: torch's default; with jobs > 1, cores / jobs).
        progress: progress bars (off for runs in worker processes).
        jobs: runs trained at the same time, each in its own process; 0 is "auto": on CPU, as many as
            there are cores (at most the number of runs to train), on CUDA or under torchrun one.
            Every run is seeded and built the same way in a worker as in this process, so the results
            do not depend on ``jobs`` (given the same number of threads per run).
    """

    sigma: float = 0.01
    out: str | None = None
    variants: tuple[str, ...] = VARIANTS
    seeds: int = 1
    n_train: int = 64_000
    n_test: int = 6_400
    n_objects: int = 5
    n_background: int = 100
    dim: int = 32
    batch_size: int = 64
    steps: int = 20_000
    lr: float = 4e-4
    warmup_steps: int | None = None
    decay_steps: int | None = None
    grad_clip: float = 1.0
    eval_every: int = 1_000
    ckpt_every: int = 1_000
    eval_batch: int = 1_000
    head: str = "linear"
    n_iters: int = 3
    mesh_lr: float = 8.0
    mesh_iters: int = 4
    backend: str = "auto"
    resume: bool = False
    num_threads: int | None = None
    progress: bool = True
    jobs: int = 1

    def __post_init__(self):
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not math.isfinite(self.sigma) \
                or self.sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {self.sigma!r}")
        self.sigma = float(self.sigma)
        self.variants = tuple(dict.fromkeys(self.variants))  # drop repeats, keep order
        if not self.variants:
            raise ValueError("at least one variant is needed")
        for v in self.variants:
            if v not in VARIANTS:
                raise ValueError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        for name, minimum in (("seeds", 1), ("n_train", 1), ("n_test", 1), ("n_objects", 1), ("n_background", 0),
                              ("dim", 1), ("batch_size", 1), ("steps", 1), ("eval_every", 0), ("ckpt_every", 0),
                              ("eval_batch", 1), ("n_iters", 1), ("mesh_iters", 0),
                              ("jobs", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train ({self.n_train}) must be at least one batch ({self.batch_size})")
        if self.out is None:
            self.out = f"runs/random_objects/sigma_{self.sigma:g}"
        if self.warmup_steps is None:
            self.warmup_steps = min(1_000, self.steps // 20)
        if self.decay_steps is None:
            self.decay_steps = max(1, self.steps // 4)
        self.model(self.variants[0])  # validates the model options
        self.train_config(self.variants[0], 0)  # validates the optimizer options

    def model(self, variant: str) -> ModelConfig:
        """The model configuration of one variant."""
        return ModelConfig(variant=variant, n_slots=self.n_objects, dim=self.dim, n_iters=self.n_iters,
                           head=self.head, ot=OTConfig(mesh_lr=self.mesh_lr, mesh_iters=self.mesh_iters,
                                                       backend=self.ot_backend()))

    def ot_backend(self) -> str | None:
        """The resolved ``slots.OTConfig.backend`` ("auto": None, the default dispatch)."""
        return None if self.backend == "auto" else self.backend

    def run_dir(self, variant: str, seed: int) -> Path:
        """The run folder of one (variant, seed)."""
        return Path(self.out) / variant / f"seed{seed}"

    def task_config(self, variant: str, seed: int) -> dict:
        """What fixes a run's data and model (stored in its checkpoints and compared on resume)."""
        return {"sigma": self.sigma, "variant": variant, "seed": seed, "n_train": self.n_train,
                "n_test": self.n_test, "n_objects": self.n_objects, "n_background": self.n_background,
                "dim": self.dim, "test_seed": TEST_SEED, "model": self.model(variant).to_dict()}

    def train_config(self, variant: str, seed: int, num_threads: int | None = None,
                     progress: bool | None = None) -> TrainConfig:
        """The training-loop configuration of one (variant, seed); ``num_threads`` and ``progress``
        override the config's (they do not affect results or resumption)."""
        num_threads = self.num_threads if num_threads is None else num_threads
        progress = self.progress if progress is None else progress
        return TrainConfig(out_dir=str(self.run_dir(variant, seed)), steps=self.steps, batch_size=self.batch_size,
                           lr=self.lr, warmup_steps=self.warmup_steps, decay_rate=0.5,
                           decay_steps=self.decay_steps, grad_clip=self.grad_clip, seed=seed,
                           log_every=min(50, self.steps), eval_every=self.eval_every, ckpt_every=self.ckpt_every,
                           resume=self.resume, num_threads=num_threads, progress=progress)


def _finished(cfg: ExperimentConfig, variant: str, seed: int) -> dict | None:
    """The results of a finished run that ``--resume`` can reuse, else None (a foreign one is an error)."""
    path = cfg.run_dir(variant, seed) / RESULTS_NAME
    if not cfg.resume or not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from None
    if results.get("task") != TASK or results.get("task_config") != json.loads(json.dumps(cfg.task_config(variant, seed))):
        raise CheckpointError(f"{path} belongs to another task or configuration; choose another --out")
    step = results.get("step", 0)
    if step > cfg.steps:  # reusing it would report a longer run under this run's budget
        raise CheckpointError(f"{path} is a finished run of {step} steps, more than the {cfg.steps} asked for; "
                              "choose another --out or --steps")
    return results if step >= cfg.steps else None


def _loss(model, batch) -> torch.Tensor:
    x, target = batch
    return hungarian_mse_loss(model(x), target)


def _make_eval(test, sigma: float, eval_batch: int):
    def evaluate(model) -> dict:
        device = next(model.parameters()).device
        preds, targets = [], []
        for start in range(0, len(test), eval_batch):
            x, target = test[torch.arange(start, min(start + eval_batch, len(test)))]
            preds.append(model(x.to(device)).cpu())
            targets.append(target)
        pred, target = torch.cat(preds), torch.cat(targets)  # (N, k, dim)
        rmse = float(normalized_hungarian_rmse(pred, target, sigma))
        return {"rmse_norm": rmse, "mse": (rmse * sigma) ** 2}
    return evaluate


def _curves(run_dir: Path) -> dict:
    records = []
    path = run_dir / METRICS_NAME
    if path.exists():
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("split") == "eval" and "rmse_norm" in r]
    trains = [r for r in records if r.get("split") == "train"]
    return {"eval_step": [r["step"] for r in evals], "test_rmse_norm": [r["rmse_norm"] for r in evals],
            "train_step": [r["step"] for r in trains], "train_loss": [r["loss"] for r in trains]}


def _test_split(cfg: ExperimentConfig):
    return make_split("test", cfg.n_test, cfg.sigma, TEST_SEED, cfg.n_objects, cfg.n_background, cfg.dim)


def _train_split(cfg: ExperimentConfig, seed: int):
    return make_split("train", cfg.n_train, cfg.sigma, seed, cfg.n_objects, cfg.n_background, cfg.dim)


def _train_one(cfg: ExperimentConfig, variant: str, seed: int, train_set, evaluate, train_cfg: TrainConfig,
               label: str = "") -> dict:
    """Seed, build and train one (variant, seed); the same in this process and in a worker."""
    seed_everything(seed)
    model = RandomObjectsModel(cfg.model(variant))
    return train(train_cfg, model, train_set, _loss, evaluate, task=TASK, task_config=cfg.task_config(variant, seed),
                 label=label)


def _worker(cfg: ExperimentConfig, variant: str, seed: int, num_threads: int) -> dict:
    """One run in a worker process (module level, so that spawned processes can import it)."""
    evaluate = _make_eval(_test_split(cfg), cfg.sigma, cfg.eval_batch)
    label = f"[{VARIANT_NAMES[variant]} seed {seed}] "
    return _train_one(cfg, variant, seed, _train_split(cfg, seed), evaluate,
                      cfg.train_config(variant, seed, num_threads=num_threads, progress=False), label)


# The slowest variants first, so that parallel workers finish together.
_COST_ORDER = ("sa-mesh", "sa-emd", "sa-sh", "sa")


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _resolve_jobs(cfg: ExperimentConfig, n_pending: int) -> int:
    if cfg.jobs != 0:
        return min(cfg.jobs, max(1, n_pending))
    if torch.cuda.is_available() or dist_info()[1] > 1:
        return 1
    return max(1, min(_cores(), n_pending))


def _train_parallel(cfg: ExperimentConfig, pending: list, jobs: int) -> dict:
    """Train the pending (variant, seed) runs in ``jobs`` spawned processes; returns their results."""
    if dist_info()[1] > 1:
        raise ValueError("jobs > 1 cannot be combined with torchrun; use one or the other")
    threads = cfg.num_threads or max(1, _cores() // jobs)
    order = sorted(pending, key=lambda run: (_COST_ORDER.index(run[0]), run[1]))
    print(f"== {len(order)} runs in {jobs} processes, {threads} torch thread(s) each: "
          + ", ".join(f"{VARIANT_NAMES[v]} seed {s}" for v, s in order), flush=True)
    results = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_worker, cfg, v, s, threads): (v, s) for v, s in order}
        for future in as_completed(futures):
            v, s = futures[future]
            results[v, s] = future.result()
            print(f"== {VARIANT_NAMES[v]}, seed {s} done: rmse_norm {results[v, s]['eval']['rmse_norm']:.4g}",
                  flush=True)
    return results


def run_experiment(cfg: ExperimentConfig) -> dict:
    """Train every (variant, seed) of ``cfg`` and summarize them (see the module docstring).

    Returns:
        The summary written to table.json: "sigma", "config", "zeros_baseline", "rows" (per variant: name,
        ours (median normalized RMSE), per_seed, paper, step_ms), "curves" (per variant, per seed).

    Raises:
        ValueError / CheckpointError before anything is trained or written if a run folder cannot be used
        (an existing run without ``resume``; an unreadable or foreign checkpoint or result).
    """
    runs = [(v, s) for v in cfg.variants for s in range(cfg.seeds)]
    reuse = {}
    for v, s in runs:  # check every run folder before training anything
        # also for finished runs: their checkpoint holds the training configuration (lr, schedule, ...),
        # which results.json's task_config does not cover
        check_resumable(cfg.train_config(v, s), TASK, cfg.task_config(v, s))
        reuse[v, s] = _finished(cfg, v, s)

    test = _test_split(cfg)
    zeros = float(normalized_hungarian_rmse(torch.zeros_like(test.objects), test.objects, cfg.sigma))
    results = {run: r for run, r in reuse.items() if r is not None}
    pending = [run for run in runs if reuse[run] is None]
    jobs = _resolve_jobs(cfg, len(pending))
    if jobs > 1:
        results.update(_train_parallel(cfg, pending, jobs))
    else:
        evaluate, train_sets = _make_eval(test, cfg.sigma, cfg.eval_batch), {}
        for v, s in pending:
            if s not in train_sets:
                train_sets[s] = _train_split(cfg, s)
            if is_main_process():
                print(f"== {VARIANT_NAMES[v]}, seed {s}: {cfg.steps} steps -> {cfg.run_dir(v, s)}", flush=True)
            results[v, s] = _train_one(cfg, v, s, train_sets[s], evaluate, cfg.train_config(v, s))

    rows, curves = [], {}
    for v in cfg.variants:
        per_seed = [results[v, s]["eval"]["rmse_norm"] for s in range(cfg.seeds)]
        step_ms = [results[v, s]["train_step_ms"] for s in range(cfg.seeds)]
        step_ms = [t for t in step_ms if t is not None]
        rows.append({"variant": v, "name": VARIANT_NAMES[v], "ours": statistics.median(per_seed),
                     "per_seed": per_seed, "paper": _paper_value(v, cfg.sigma),
                     "step_ms": statistics.median(step_ms) if step_ms else None})
        curves[v] = {f"seed{s}": _curves(cfg.run_dir(v, s)) for s in range(cfg.seeds)}
    summary = {"task": TASK, "sigma": cfg.sigma, "config": asdict(cfg), "zeros_baseline": zeros, "rows": rows,
               "curves": curves}
    if is_main_process():
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(format_table(summary) + "\n")
        (out / "table.json").write_text(json.dumps(summary, indent=2) + "\n")
        _plot(summary, out / "rmse_vs_steps.png")
    return summary


def format_table(summary: dict) -> str:
    """The markdown table of a summary from :func:`run_experiment`."""
    cfg = summary["config"]
    lines = [
        f"Random objects detection, sigma = {summary['sigma']:g}: normalized Hungarian RMSE on {cfg['n_test']:,} "
        f"test examples (lower is better); {cfg['steps']:,} steps of batch {cfg['batch_size']}, "
        f"median over {cfg['seeds']} seed(s).",
        "",
        "| model | ours | paper (Table 1, median of 5 seeds) | ours per seed | step time (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        paper = f"{r['paper']:.2f}" if r["paper"] is not None else "-"
        seeds = ", ".join(f"{x:.3f}" for x in r["per_seed"])
        ms = f"{r['step_ms']:.1f}" if r["step_ms"] is not None else "-"
        lines.append(f"| {r['name']} | {r['ours']:.3f} | {paper} | {seeds} | {ms} |")
    lines.append(f"| always zeros | {summary['zeros_baseline']:.3f} | 1 | - | - |")
    return "\n".join(lines)


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (variant, per_seed) in enumerate(summary["curves"].items()):
        color = f"C{i}"
        for j, c in enumerate(per_seed.values()):
            label = VARIANT_NAMES[variant] if j == 0 else None
            ax.plot(c["eval_step"], c["test_rmse_norm"], color=color, label=label, alpha=1.0 if j == 0 else 0.4)
    ax.axhline(summary["zeros_baseline"], color="gray", ls="--", lw=1, label="always zeros")
    ax.set_xlabel("training step")
    ax.set_ylabel("test RMSE / sigma")
    ax.set_title(f"Random objects detection, sigma = {summary['sigma']:g}")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
