"""Training SA-MESH variants on random objects for the analyses (Fig. 5 and ``variants``).

One run = ``slots.train.train`` on ``tasks.random_objects.make_split`` data with the random-objects model
(``tasks.random_objects.model``, variant "sa-mesh") and a given ``slots.OTConfig``; the schedule is that
of the Table 1 runs (AdamW 4e-4, warm-up min(1,000, steps / 20), the rate halved every quarter of the run,
gradient clipping at 1, batch 64), at a budget the caller picks: ``SHORT`` (a few minutes per run on a
CPU) or ``PAPER`` (Table 1's 20 epochs of 1,000 steps of batch 64 on 64,000 examples, 6,400 test
examples). The metric is the normalized Hungarian RMSE on the test set (``slots.normalized_hungarian_rmse``),
the test set being ``make_split("test", n_test, sigma, 0)`` for every run. Runs checkpoint into their
folder and ``resume=True`` continues them (or reuses a finished one).
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from slots import OTConfig, hungarian_mse_loss, normalized_hungarian_rmse
from slots.train import (CHECKPOINT_NAME, METRICS_NAME, RESULTS_NAME, TrainConfig, load_checkpoint, seed_everything,
                         train)
from tasks.random_objects.data import make_split
from tasks.random_objects.model import ModelConfig, RandomObjectsModel

__all__ = ["Budget", "SHORT", "PAPER", "train_sa_mesh", "load_run", "eval_curve", "add_budget_arguments",
           "budget_from_args", "TASK", "build_model"]

TASK = "analysis_random_objects"


@dataclass(frozen=True)
class Budget:
    """Training budget and data size of one run."""

    steps: int
    n_train: int
    n_test: int
    eval_every: int
    batch_size: int = 64

    def __post_init__(self):
        for name in ("steps", "n_train", "n_test", "eval_every", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train ({self.n_train}) must be at least one batch ({self.batch_size})")


SHORT = Budget(steps=1_000, n_train=64_000, n_test=1_280, eval_every=250)
PAPER = Budget(steps=20_000, n_train=64_000, n_test=6_400, eval_every=1_000)


def _loss(model, batch) -> torch.Tensor:
    x, target = batch  # (b, k + h, dim), (b, k, dim)
    return hungarian_mse_loss(model(x), target)


def _evaluator(test, sigma: float, chunk: int = 640):
    def evaluate(model) -> dict:
        preds, targets = [], []
        for idx in torch.arange(len(test)).split(chunk):
            x, target = test[idx]
            preds.append(model(x))
            targets.append(target)
        return {"rmse_norm": float(normalized_hungarian_rmse(torch.cat(preds), torch.cat(targets), sigma))}
    return evaluate


def build_model(ot: OTConfig, seed: int) -> RandomObjectsModel:
    """The random-objects SA-MESH model with ``ot`` as a run of ``seed`` starts (its initial parameters)."""
    seed_everything(seed)
    return RandomObjectsModel(ModelConfig(variant="sa-mesh", ot=ot))


def train_sa_mesh(ot: OTConfig, out_dir, budget: Budget, sigma: float = 0.01, seed: int = 0, resume: bool = False,
                  progress: bool = True, label: str = "", num_threads: int | None = 1):
    """Train SA-MESH with ``ot`` on random objects at ``sigma`` (``num_threads`` torch threads; None: torch's
    default).

    Returns:
        (model, results): the trained :class:`RandomObjectsModel` and ``slots.train.train``'s results dict
        ("eval" holds the final "rmse_norm", "train_step_ms" the mean step time).
    """
    model_cfg = ModelConfig(variant="sa-mesh", ot=ot)
    train_set = make_split("train", budget.n_train, sigma, seed)
    test_set = make_split("test", budget.n_test, sigma, 0)
    cfg = TrainConfig(out_dir=str(out_dir), steps=budget.steps, batch_size=budget.batch_size, lr=4e-4,
                      warmup_steps=min(1_000, budget.steps // 20), decay_rate=0.5,
                      decay_steps=max(1, budget.steps // 4), grad_clip=1.0, seed=seed,
                      log_every=min(50, budget.steps), eval_every=budget.eval_every, ckpt_every=budget.eval_every,
                      resume=resume, progress=progress, num_threads=num_threads)
    task_config = {"sigma": sigma, "seed": seed, "budget": asdict(budget), "model": model_cfg.to_dict()}
    model = build_model(ot, seed)
    results = train(cfg, model, train_set, _loss, _evaluator(test_set, sigma), task=TASK, task_config=task_config,
                    label=label)
    return model, results


def load_run(run_dir, ot: OTConfig):
    """A finished run of :func:`train_sa_mesh` with ``ot``, read back from its folder.

    Returns:
        (model, results, budget, sigma, seed): the trained model (from the final checkpoint), the run's
        results dict, its :class:`Budget`, sigma and seed.

    Raises:
        ValueError (``slots.train.CheckpointError`` for an unreadable checkpoint) if the folder holds no
        finished run of SA-MESH with ``ot``.
    """
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    tc = ckpt["task_config"]
    want = json.loads(json.dumps(ModelConfig(variant="sa-mesh", ot=ot).to_dict()))
    if ckpt["task"] != TASK or tc.get("model") != want:
        raise ValueError(f"{run_dir} is not a run of {TASK} with SA-MESH and {ot}")
    if not (run_dir / RESULTS_NAME).is_file():
        raise ValueError(f"{run_dir} holds no finished run ({RESULTS_NAME} is missing); finish it with --resume")
    model = build_model(ot, tc["seed"])
    model.load_state_dict(ckpt["model"])
    results = json.loads((run_dir / RESULTS_NAME).read_text())
    return model, results, Budget(**tc["budget"]), tc["sigma"], tc["seed"]


def eval_curve(run_dir) -> tuple[list[int], list[float]]:
    """(steps, test normalized RMSE) of the evaluations recorded in a run folder's metrics.jsonl."""
    steps, rmse = [], []
    for line in (Path(run_dir) / METRICS_NAME).read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "eval" and "rmse_norm" in r:
            steps.append(r["step"])
            rmse.append(r["rmse_norm"])
    return steps, rmse


def add_budget_arguments(p, short: Budget = SHORT) -> None:
    """--steps / --paper-budget, --sigma, --seed, --resume, --no-progress."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, help=f"training steps of batch 64 (default {short.steps:,}; "
                                                 f"{short.n_train:,} training and {short.n_test:,} test examples)")
    group.add_argument("--paper-budget", action="store_true",
                       help=f"Table 1's budget: {PAPER.steps:,} steps, {PAPER.n_test:,} test examples")
    p.add_argument("--sigma", type=float, default=0.01, help="standard deviation of the objects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue (or reuse) runs in the output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def budget_from_args(args, short: Budget = SHORT) -> Budget:
    """The :class:`Budget` chosen on the command line (raises ValueError for bad values)."""
    if args.paper_budget:
        return PAPER
    if args.steps is None:
        return short
    eval_every = max(1, min(short.eval_every, args.steps))
    return Budget(steps=args.steps, n_train=short.n_train, n_test=short.n_test, eval_every=eval_every)
