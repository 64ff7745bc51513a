"""SA-MESH variants on random objects for the analyses (``variants``, ``fig5``), trained by the random-objects
task itself.

One run is ``tasks.runner.run`` of ``tasks.random_objects.TASK`` with the variant "sa-mesh": the task's
default options, changed only by the analysis variant's own (e.g. ``{"mesh_objective": "learned",
"straight_through": False}``), and one of the task's budgets: "paper" (Table 1's 20,000 steps on 64,000
examples, 6,400 test examples) or "quick" (its 1,280 test examples) cut to a number of steps. So an analysis
trains in Table 1's set-up (its schedule, slot scale, MESH step size) by construction. The run goes to
``<out_dir>/sa-mesh/seed<s>/`` as the task writes it; ``resume=True`` continues it or reuses a finished one.
A trained run is read back with ``tasks.runs.load_run``.
"""
import json
from dataclasses import replace
from pathlib import Path

from slots.train import METRICS_NAME, RESULTS_NAME, seed_everything
from tasks import runner
from tasks.random_objects import BUDGETS, TASK, RandomObjectsConfig
from tasks.runs import load_run

from ..runner import int_at_least, positive_float

__all__ = ["VARIANT", "experiment", "train_sa_mesh", "initial_model", "read_run", "eval_curve",
           "add_budget_arguments", "budget_from_args"]

VARIANT = "sa-mesh"


def experiment(options: dict, out_dir, budget: runner.Budget, sigma: float = 0.01, seed: int = 0,
               resume: bool = False, progress: bool = True, threads: int | None = 1) -> runner.Experiment:
    """The random-objects experiment of one analysis run: SA-MESH with ``options`` on top of the task's
    defaults and ``budget``'s overrides; seeds 0..``seed`` (the runner trains every seed up to it)."""
    config = RandomObjectsConfig(**{**budget.overrides, "sigma": sigma, **options})
    return runner.Experiment(config=config, budget=budget, variants=(VARIANT,), out=str(out_dir), seeds=seed + 1,
                             resume=resume, jobs=1, num_threads=threads, progress=progress)


def train_sa_mesh(options: dict, out_dir, budget: runner.Budget, sigma: float = 0.01, seed: int = 0,
                  resume: bool = False, progress: bool = True):
    """Train (or with ``resume`` reuse) SA-MESH with ``options`` on random objects at ``sigma``.

    Returns:
        (model, results, run_dir): the trained model read back from its folder, the run's results dict
        ("eval" holds the final "rmse_norm", "train_step_ms" the mean step time or None for a reused run)
        and the run folder.
    """
    exp = experiment(options, out_dir, budget, sigma, seed, resume, progress)
    runner.run(TASK, exp)
    run_dir = runner.run_dir(exp, VARIANT, seed)
    model, results = read_run(run_dir, options)
    return model, results, run_dir


def initial_model(options: dict, sigma: float = 0.01, seed: int = 0):
    """The SA-MESH model with ``options`` as a run of ``seed`` starts (the runner seeds, then builds)."""
    seed_everything(seed)
    return TASK.build(RandomObjectsConfig(sigma=sigma, **options), VARIANT)


def read_run(run_dir, options: dict):
    """A finished random-objects SA-MESH run whose options include ``options``, read back from its folder.

    Returns:
        (model, results): the trained model (eval mode) and the run's results dict.

    Raises:
        ValueError (``slots.train.CheckpointError`` for an unreadable checkpoint) for a folder that holds no
        finished run of SA-MESH with these options.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    mismatched = {k: getattr(run.config, k, None) for k, v in options.items() if getattr(run.config, k, None) != v}
    if run.task.name != TASK.name or run.variant != VARIANT or mismatched:
        raise ValueError(f"{run_dir} is not a random-objects SA-MESH run with {options} (it has task "
                         f"{run.task.name!r}, variant {run.variant!r}, {mismatched})")
    if not (run_dir / RESULTS_NAME).is_file():
        raise ValueError(f"{run_dir} holds no finished run ({RESULTS_NAME} is missing); finish it with --resume")
    return run.model, json.loads((run_dir / RESULTS_NAME).read_text())


def eval_curve(run_dir) -> tuple[list[int], list[float]]:
    """(steps, test normalized RMSE) of the evaluations recorded in a run folder's metrics.jsonl."""
    steps, rmse = [], []
    for line in (Path(run_dir) / METRICS_NAME).read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "eval" and "rmse_norm" in r:
            steps.append(r["step"])
            rmse.append(r["rmse_norm"])
    return steps, rmse


def add_budget_arguments(p, short_steps: int) -> None:
    """--steps / --paper-budget, --sigma, --seed, --resume, --no-progress."""
    group = p.add_mutually_exclusive_group()
    quick = BUDGETS["quick"]
    group.add_argument("--steps", type=int_at_least(1), default=short_steps,
                       help=f"training steps of batch {quick.batch_size} on the random-objects task's quick budget "
                            f"({quick.overrides['n_test']:,} test examples)")
    group.add_argument("--paper-budget", action="store_true",
                       help=f"Table 1's budget: {BUDGETS['paper'].steps:,} steps")
    p.add_argument("--sigma", type=positive_float, default=0.01, help="standard deviation of the objects")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="the seed whose run is shown (the runner "
                                                                     "trains seeds 0..seed)")
    p.add_argument("--resume", action="store_true", help="continue (or reuse) runs in the output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def budget_from_args(args) -> runner.Budget:
    """The random-objects budget chosen on the command line: "paper", or "quick" cut to ``--steps``."""
    if args.paper_budget:
        return BUDGETS["paper"]
    every = min(BUDGETS["quick"].eval_every, args.steps)
    return replace(BUDGETS["quick"], steps=args.steps, eval_every=every, ckpt_every=every)
