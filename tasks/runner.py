"""The one experiment runner of the paper's tasks: variants x seeds, parallel runs, resume, the table next to
the paper's figures, a plot of the headline metric against steps, and the command line.

A task is a spec, :class:`Task`: its name, a dataclass of data and model options (whose fields are the task's
command line, ``tasks.options``), functions that load the data (:class:`Data`), build the model of a variant,
compute the loss and evaluate, the table and the paper's figures (:class:`Report`) and named training budgets.
Everything else is here, once::

    TASK = Task(name="my_task", config=MyConfig, variants={"sa": "SA", "sa-mesh": "SA-MESH"}, ...)

    if __name__ == "__main__":            # tasks/my_task/__main__.py
        sys.exit(runner.main(TASK))

Every (variant, seed) is one run of :func:`slots.train.train` in ``<out>/<variant>/seed<s>/``: the seed fixes
the initial parameters, the training data (``task.data.load_train(cfg, seed)``) and the data order; the test
data (``task.data.load_test(cfg)``) is the same for every run. A task's ``data.prepare(cfg, progress)`` runs
once before any training (data caches built, data files checked). The summary goes to ``<out>/``:

    table.md, table.json    per variant: each metric aggregated over seeds (the median with its range, or
                            the mean and standard deviation), the paper's figures labelled as the paper's,
                            the per-seed values of the headline metric, the step time (and the paper's
                            training time, when the task gives it); rows for the paper's other methods;
                            table.json adds the per-step curves
    <report.plot_file>      the headline metric on the test data against training steps

Runs are independent, so ``--jobs`` trains several at once, each in its own spawned process (one per core
by default on CPU); every run is seeded and built the same way in a worker as in this process, so results do
not depend on ``--jobs`` (given the same threads per run). ``--resume`` continues interrupted runs from their
checkpoints and reuses finished ones; ``--resume-previous`` also continues a run whose newest checkpoint fails
its check from the previous one. Every run folder is checked before anything is trained or written. The
summary folder is locked while the runner works in it, and each run folder while its run trains
(``slots.checkpoint.lock_folder``): a second runner on the same ``--out`` exits with status 2 before it
writes anything. ``--tensorboard`` adds TensorBoard events to every run folder (``slots.tensorboard``), so that
``tensorboard --logdir runs/`` shows the runs side by side.

Known limits: under ``torchrun`` runs are trained one after the other (each one data-parallel); parallel
jobs and torchrun do not mix.
"""
import argparse
import contextlib
import json
import math
import statistics
import sys
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from emd_cpp import EMDUnavailableError
from kernels import check_int
from slots import tensorboard
from slots.attention import check_available
from slots.checkpoint import jsonable, load_checkpoint, lock_folder
from slots.train import (CHECKPOINT_NAME, METRICS_NAME, PREVIOUS_NAME, RESULTS_NAME, CheckpointError,
                         RunFolderWriteError, TrainConfig, TrainingInterrupted, check_resumable, dist_info,
                         is_main_process, seed_everything, train)

from . import options
from .options import BACKENDS, float_at_least_zero, int_at_least, positive_float, unit_interval
from .pool import cores, run_jobs

__all__ = ["Metric", "Budget", "Data", "Report", "Task", "Experiment", "run", "format_table", "build_parser",
           "experiment_from_args", "main", "entry_points", "schedule", "BACKENDS"]


@dataclass(frozen=True)
class Metric:
    """A column of a task's table.

    Attributes:
        key: the key in ``task.evaluate``'s dict. label: the column header.
        lower_is_better: direction. fmt: format of our figure (e.g. ".3f"; ".1f" for percentages).
        paper_fmt: format of the paper's figures.
    """

    key: str
    label: str
    lower_is_better: bool = False
    fmt: str = ".3f"
    paper_fmt: str = "g"


@dataclass(frozen=True)
class Budget:
    """A named training schedule (the fields of ``slots.train.TrainConfig`` that a task varies) and the task
    options it changes (``overrides``, e.g. fewer training images for a CPU budget).

    ``warmup_steps`` None is min(1,000, steps / 20); ``decay_steps`` None is steps / 4 (the rate halves every
    quarter of the run): :meth:`warmup` and :meth:`decay` resolve them. ``shortcut``: the command line also
    selects this budget with ``--<name>`` (e.g. ``--quick``).
    """

    steps: int
    batch_size: int
    lr: float = 4e-4
    warmup_steps: int | None = None
    decay_rate: float = 0.5
    decay_steps: int | None = None
    grad_clip: float = 1.0
    eval_every: int = 1_000
    ckpt_every: int = 1_000
    overrides: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    shortcut: bool = False

    def warmup(self) -> int:
        """Linear warm-up steps: ``warmup_steps``, or min(1,000, steps / 20) when it is None."""
        return min(1_000, self.steps // 20) if self.warmup_steps is None else self.warmup_steps

    def decay(self) -> int:
        """Steps per factor ``decay_rate`` of the rate: ``decay_steps``, or steps / 4 when it is None."""
        return max(1, self.steps // 4) if self.decay_steps is None else self.decay_steps


@dataclass(frozen=True)
class Data:
    """How a task reads its data.

    Attributes:
        load_train: ``(cfg, seed) -> dataset`` with ``len()`` and ``ds[idx]`` for idx a (b,) int64 tensor.
        load_test: ``(cfg) -> test data``, whatever ``Task.evaluate`` takes.
        prepare: optional ``(cfg, progress)``, called once in this process before any run is trained or any
            run folder written: build data caches, check data files (raises ValueError naming the file).
        load_train_eval: optional ``(cfg, seed) -> data``: the training data in the form ``evaluate`` takes,
            for a task whose ``load_train`` gives another form (None: ``load_train``'s data is evaluated).
    """

    load_train: Callable[[Any, int], Any]
    load_test: Callable[[Any], Any]
    prepare: Callable[[Any, bool], None] | None = None
    load_train_eval: Callable[[Any, int], Any] | None = None


@dataclass(frozen=True)
class Report:
    """How the runs of a task are judged and shown: the table, the paper's figures, the plot, the pictures.

    Attributes:
        metrics: the table's metrics; the first is the headline (per-seed values, plot).
        paper: ``(cfg) -> {variant or baseline name: {metric key: figure or (mean, std)}}``, the paper's. A name
            that is neither a variant nor a baseline is a row of the paper's figures alone (e.g. another
            method the paper lists).
        paper_label: where the paper's figures come from, e.g. "Table 1, median of 5 seeds"; or
            ``(cfg) -> str`` when it depends on the options.
        describe: ``(cfg, budget, seeds) -> str``, the sentence above the table.
        aggregate: "median" or "mean" (mean and standard deviation) over seeds.
        baselines: optional ``(cfg, test) -> {name: {metric key: float}}``, rows of reference predictors.
        after_train: optional ``(model, test, cfg, variant, run_dir)``: e.g. pictures, after a run is trained.
        plot_file: file name of the plot.
        time_vs: variant whose step time is the unit of the "time vs" column (None: no column).
        paper_time: optional ``(cfg) -> {variant: hours}``, the paper's training times, shown next to ours
            relative to the ``time_vs`` variant's.
        step_cost: optional {variant: measured time of one training step, in any unit}: parallel runs start
            the costliest first (:func:`schedule`).
    """

    metrics: tuple[Metric, ...]
    paper: Callable[[Any], Mapping[str, Mapping[str, Any]]]
    paper_label: str | Callable[[Any], str]
    describe: Callable[[Any, Budget, int], str]
    aggregate: str = "median"
    baselines: Callable[[Any, Any], Mapping[str, Mapping[str, float]]] | None = None
    after_train: Callable[[nn.Module, Any, Any, str, Path], None] | None = None
    plot_file: str = "curves.png"
    time_vs: str | None = "sa"
    paper_time: Callable[[Any], Mapping[str, float]] | None = None
    step_cost: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Task:
    """What makes an experiment: the data, the model, the loss, the evaluation and the paper's table.

    The options ``config`` is a dataclass of the data and model options (``asdict`` JSON-serializable), best
    a subclass of ``tasks.options.Options``: its fields are the task's command line (``tasks.options``), and
    the runner calls its methods where it has them: ``validate(budget)`` (raises ValueError for options that do
    not fit the budget), ``model_config(variant) -> dict`` (the model's full configuration, stored with each
    run so that a changed default is not resumed silently) and ``run_folder(budget name)`` (the default
    ``--out``).

    Attributes:
        name: run-folder and checkpoint id.
        config: the options dataclass (above).
        variants: variant -> display name, in table order. default_variants: trained without ``--variant``.
        data: how the data are read (:class:`Data`).
        build: ``(cfg, variant) -> nn.Module``, called right after seeding.
        loss: ``(model, batch) -> () tensor``, a mean over the batch.
        evaluate: ``(model, test, cfg) -> {metric key: float}``.
        report: the table, the paper's figures, the plot and the pictures (:class:`Report`).
        budgets: name -> :class:`Budget`; default_budget: the one used without ``--budget``.
        model_kind: the kind of model ``build`` returns (a key of ``slots.pretrained.MODEL_KINDS``), with which
            ``tasks.runs.load_run`` rebuilds a run's model from the configuration stored with it.
    """

    name: str
    config: type
    variants: Mapping[str, str]
    default_variants: tuple[str, ...]
    data: Data
    build: Callable[[Any, str], nn.Module]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    evaluate: Callable[[nn.Module, Any, Any], dict]
    report: Report
    budgets: Mapping[str, Budget]
    default_budget: str
    model_kind: str | None = None

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return self.report.metrics

    @property
    def headline(self) -> Metric:
        return self.report.metrics[0]

    def label(self, cfg) -> str:
        """Where the paper's figures come from, for the options ``cfg``."""
        label = self.report.paper_label
        return label(cfg) if callable(label) else label


@dataclass
class Experiment:
    """One invocation: the task's options, the budget, and the grid of runs.

    Attributes:
        config: an instance of ``task.config``. budget: the training schedule (overrides already applied
            to ``config``). variants: in table order. seeds: seeds 0 .. seeds - 1. out: the summary folder.
        resume: continue interrupted runs and reuse finished ones.
        resume_previous: with ``resume``, continue a run whose newest checkpoint fails its check from the
            previous checkpoint (``TrainConfig.resume_previous``).
        jobs: runs trained at once in separate processes, >= 1; None is one per core on CPU (at most the
            number of runs), one on CUDA or under torchrun.
        num_threads: torch threads per run (None: torch's default; with jobs > 1, cores / jobs).
        progress: progress bars (never in worker processes).
        tensorboard: also write TensorBoard events into every run folder (``slots.tensorboard``): the training
            records, the evaluations and the pictures of ``task.report.after_train``.
        compile: compile each run's model with inductor (``TrainConfig.compile``); off by default, because on
            CPU only SA's step gains and a cold compile costs about a minute (BENCHMARKS.md).
    """

    config: Any
    budget: Budget
    variants: tuple[str, ...]
    out: str
    seeds: int = 1
    resume: bool = False
    resume_previous: bool = False
    jobs: int | None = None
    num_threads: int | None = None
    progress: bool = True
    tensorboard: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.jobs is not None:  # None: one per core
            check_int(self.jobs, "jobs", 1)

    def train_config(self, task: Task, variant: str, seed: int, num_threads: int | None = None,
                     progress: bool | None = None) -> TrainConfig:
        """The training-loop configuration of one run; ``num_threads`` and ``progress`` override the
        experiment's (they do not affect results or resumption)."""
        b = self.budget
        return TrainConfig(
            out_dir=str(run_dir(self, variant, seed)), steps=b.steps, batch_size=b.batch_size, lr=b.lr,
            warmup_steps=b.warmup(), decay_rate=b.decay_rate, decay_steps=b.decay(),
            grad_clip=b.grad_clip, seed=seed, log_every=min(50, b.steps), eval_every=b.eval_every,
            ckpt_every=b.ckpt_every, resume=self.resume, resume_previous=self.resume_previous,
            num_threads=self.num_threads if num_threads is None else num_threads,
            progress=self.progress if progress is None else progress, tensorboard=self.tensorboard,
            compile=self.compile)


def run_dir(exp: Experiment, variant: str, seed: int) -> Path:
    """The run folder of one (variant, seed)."""
    return Path(exp.out) / variant / f"seed{seed}"


def task_config(task: Task, exp: Experiment, variant: str, seed: int) -> dict:
    """What fixes a run's data and model (stored in its checkpoints and compared on resume).

    An option that a run folder's stored configuration does not have (one added to the task since the run was
    written) is left out while it keeps its default, so that the run still resumes: its model configuration,
    stored and compared too, still has to match.
    """
    config = {**asdict(exp.config), "variant": variant, "seed": seed}
    model_config = getattr(exp.config, "model_config", None)
    if model_config is not None:
        config["model"] = model_config(variant)
    stored = _stored_task_config(run_dir(exp, variant, seed))
    if stored is not None:
        defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                    for f in fields(exp.config) if f.default is not MISSING or f.default_factory is not MISSING}
        config = {k: v for k, v in config.items()
                  if k in stored or k not in defaults or jsonable(v) != jsonable(defaults[k])}
    return config


def _stored_task_config(folder: Path) -> dict | None:
    """The task configuration stored in a run folder (its results, else its checkpoints); None if none can be
    read (the checks of the run folder then say why)."""
    try:
        if (folder / RESULTS_NAME).is_file():
            return json.loads((folder / RESULTS_NAME).read_text())["task_config"]
        for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
            if (folder / name).is_file():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return load_checkpoint(folder / name)["task_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def _check_out(out: str) -> None:
    """The summary folder must be a folder or creatable: no file at it or at any folder above it."""
    for p in (Path(out), *Path(out).parents):
        if p.exists() and not p.is_dir():
            where = "is a file" if p == Path(out) else f"is under {p}, which is a file"
            raise ValueError(f"run folder {out} {where}; choose another --out")


# ---------------------------------------------------------------------------------------------------
# Training the runs


def _train_one(task: Task, exp: Experiment, variant: str, seed: int, train_cfg: TrainConfig, test=None,
               train_set=None, label: str = "") -> dict:
    """Seed, build and train one (variant, seed); the same in this process and in a worker."""
    test = task.data.load_test(exp.config) if test is None else test
    train_set = task.data.load_train(exp.config, seed) if train_set is None else train_set
    seed_everything(seed)
    model = task.build(exp.config, variant)
    results = train(train_cfg, model, train_set, task.loss, lambda m: task.evaluate(m, test, exp.config),
                    task=task.name, task_config=task_config(task, exp, variant, seed), label=label)
    if task.report.after_train is not None and is_main_process():
        model.eval()
        with torch.no_grad():
            task.report.after_train(model, test, exp.config, variant, run_dir(exp, variant, seed))
        if train_cfg.tensorboard:
            board = tensorboard.RunBoard(run_dir(exp, variant, seed), purge=False)
            board.add_pictures(sorted(run_dir(exp, variant, seed).glob("*.png")), results["step"])
            board.close()
    return results


def _worker(task: Task, exp: Experiment, variant: str, seed: int, threads: int) -> dict:
    """One run in a worker process (module level, so that spawned processes can import it)."""
    label = f"[{task.variants[variant]} seed {seed}] "
    return _train_one(task, exp, variant, seed, exp.train_config(task, variant, seed, threads, False), label=label)


def _finished(task: Task, exp: Experiment, variant: str, seed: int) -> dict | None:
    """The results of a finished run that ``resume`` can reuse, else None (a foreign one is an error)."""
    path = run_dir(exp, variant, seed) / RESULTS_NAME
    if not exp.resume or not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from None
    mine = json.loads(json.dumps(task_config(task, exp, variant, seed)))
    if results.get("task") != task.name or results.get("task_config") != mine:
        raise CheckpointError(f"{path} belongs to another task or configuration; choose another --out")
    step = results.get("step", 0)
    if step > exp.budget.steps:  # reusing it would report a longer run under this run's budget
        raise CheckpointError(f"{path} is a finished run of {step} steps, more than the {exp.budget.steps} "
                              "asked for; choose another --out or --steps")
    return results if step >= exp.budget.steps else None


def _resolve_jobs(exp: Experiment, n_pending: int) -> int:
    if exp.jobs is not None:
        return min(exp.jobs, max(1, n_pending))
    if torch.cuda.is_available() or dist_info()[1] > 1:
        return 1
    return max(1, min(cores(), n_pending))


def schedule(task: Task, runs: list) -> list:
    """The order in which the parallel runner starts ``runs``, (variant, seed) pairs.

    Each process takes the next run when it is free, so starting the costliest runs first (by
    ``task.report.step_cost``: all runs of an experiment train the same number of steps) is longest-processing-time
    list scheduling: the processes end at about the same time, and the last run to start is a cheap one.
    Without a measured cost, and between equal ones, the variants listed last start first (in the paper's
    tables they are the slowest); then by seed.
    """
    order = list(task.variants)[::-1]
    cost = task.report.step_cost or {}
    return sorted(runs, key=lambda run: (-cost.get(run[0], 0.0), order.index(run[0]), run[1]))


def _train_parallel(task: Task, exp: Experiment, pending: list, jobs: int) -> dict:
    if dist_info()[1] > 1:
        raise ValueError("jobs > 1 cannot be combined with torchrun; use one or the other")
    threads = exp.num_threads or max(1, cores() // jobs)
    print(f"== {len(pending)} runs in {jobs} processes, {threads} torch thread(s) each: "
          + ", ".join(f"{task.variants[v]} seed {s}" for v, s in pending), flush=True)
    headline = task.headline.key

    def done(i, result):
        v, s = pending[i]
        print(f"== {task.variants[v]}, seed {s} done: {headline} {result['eval'].get(headline, math.nan):.4g}",
              flush=True)

    results = run_jobs(_worker, [(task, exp, v, s, threads) for v, s in pending], jobs, on_done=done)
    return dict(zip(pending, results))


def run(task: Task, exp: Experiment) -> dict:
    """Train every (variant, seed) of ``exp`` and summarize them (see the module docstring).

    Returns:
        The summary written to table.json: "task", "config" (the task options, the budget and the grid),
        "describe" (the table's sentence), "rows" (per variant: "variant", "name", "metrics" {key: {"ours",
        "std", "min", "max", "per_seed", "paper"}}, and for the headline "ours", "per_seed", "paper"; "step_ms", "time_vs"),
        "baselines" {name: {"metrics": {key: {"ours", "paper"}}}}, "curves" (per variant, per seed).

    Raises:
        ValueError / CheckpointError before anything is trained or written if a run folder cannot be used
        (a file in the way, an existing run without ``resume``, an unreadable or foreign checkpoint or result,
        another process working in ``exp.out``: ``LockHeld``) or the task's ``prepare`` or ``load_test`` finds
        bad input; emd_cpp.EMDUnavailableError, also before, for a variant that needs exact EMD in a build
        without LEMON; slots.tensorboard.TensorBoardMissing, also before, for ``tensorboard`` without the
        tensorboard package; RunFolderWriteError if a run cannot write its files (its last checkpoint is intact).
    """
    _check_out(exp.out)
    unknown = [v for v in exp.variants if v not in task.variants]
    if unknown or not exp.variants:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(task.variants)}")
    for v in exp.variants:  # sa-emd without LEMON fails here, not after the other variants have trained
        check_available(v)
    if exp.tensorboard:
        tensorboard.require()
    validate = getattr(exp.config, "validate", None)
    if validate is not None:
        validate(exp.budget)
    # one runner per summary folder (under torchrun, the main process holds the lock for all)
    with lock_folder(exp.out) if is_main_process() else contextlib.nullcontext():
        return _run_locked(task, exp)


def _run_locked(task: Task, exp: Experiment) -> dict:
    """The body of :func:`run` once the experiment is validated and its summary folder locked."""
    runs = [(v, s) for v in exp.variants for s in range(exp.seeds)]
    reuse = {}
    for v, s in runs:  # every run folder is checked before anything is trained
        # also for finished runs: their checkpoint holds the training configuration, which results.json's
        # task_config does not cover
        found = check_resumable(exp.train_config(task, v, s), task.name, task_config(task, exp, v, s))
        # a run whose newest checkpoint failed its check trains again from the previous one (to the same final
        # parameters), even if it had finished, so that its final checkpoint is whole again
        from_previous = found is not None and found[1].name == PREVIOUS_NAME
        reuse[v, s] = None if from_previous else _finished(task, exp, v, s)
    if task.data.prepare is not None and any(r is None for r in reuse.values()):
        task.data.prepare(exp.config, exp.progress)

    test = task.data.load_test(exp.config)
    results = {run: r for run, r in reuse.items() if r is not None}
    pending = [run for run in runs if reuse[run] is None]
    pending = schedule(task, pending)
    jobs = _resolve_jobs(exp, len(pending))
    if jobs > 1:
        results.update(_train_parallel(task, exp, pending, jobs))
    else:
        train_sets = {}
        for v, s in sorted(pending, key=lambda run: (exp.variants.index(run[0]), run[1])):
            if s not in train_sets:
                train_sets[s] = task.data.load_train(exp.config, s)
            if is_main_process():
                print(f"== {task.variants[v]}, seed {s}: {exp.budget.steps} steps -> {run_dir(exp, v, s)}",
                      flush=True)
            results[v, s] = _train_one(task, exp, v, s, exp.train_config(task, v, s), test, train_sets[s])
    summary = summarize(task, exp, results, test)
    if is_main_process():
        out = Path(exp.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(format_table(task, summary) + "\n")
        (out / "table.json").write_text(json.dumps(summary, indent=2) + "\n")
        _plot(task, summary, out / task.report.plot_file)
    return summary


# ---------------------------------------------------------------------------------------------------
# Summary, table, plot


def _curves(path: Path, metrics: tuple[Metric, ...]) -> dict:
    records = []
    if path.exists():
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("split") == "eval"]
    trains = [r for r in records if r.get("split") == "train"]
    curves = {"eval_step": [r["step"] for r in evals]}
    for m in metrics:
        curves[f"test_{m.key}"] = [r.get(m.key) for r in evals]
    curves.update(train_step=[r["step"] for r in trains], train_loss=[r["loss"] for r in trains])
    return curves


def _aggregate(values: list[float], how: str) -> dict:
    """{"ours": median or mean, "std": standard deviation over seeds (mean only, with several seeds) or None,
    "min", "max"}."""
    spread = {"min": min(values), "max": max(values)}
    if how == "median":
        return {"ours": statistics.median(values), "std": None, **spread}
    return {"ours": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None, **spread}


def summarize(task: Task, exp: Experiment, results: dict, test) -> dict:
    """The summary of finished runs ``results`` {(variant, seed): results dict} (see :func:`run`)."""
    paper = task.report.paper(exp.config)
    rows, curves = [], {}
    for v in exp.variants:
        cells = {}
        for m in task.metrics:
            per_seed = [results[v, s]["eval"][m.key] for s in range(exp.seeds)]
            cells[m.key] = {**_aggregate(per_seed, task.report.aggregate), "per_seed": per_seed,
                            "paper": paper.get(v, {}).get(m.key)}
        step_ms = [results[v, s]["train_step_ms"] for s in range(exp.seeds)]
        step_ms = [t for t in step_ms if t is not None]
        head = cells[task.headline.key]
        rows.append({"variant": v, "name": task.variants[v], "ours": head["ours"], "per_seed": head["per_seed"],
                     "paper": head["paper"], "metrics": cells,
                     "step_ms": statistics.median(step_ms) if step_ms else None})
        curves[v] = {f"seed{s}": _curves(run_dir(exp, v, s) / METRICS_NAME, task.metrics) for s in range(exp.seeds)}
    unit = next((r["step_ms"] for r in rows if r["variant"] == task.report.time_vs), None)
    paper_time = task.report.paper_time(exp.config) if task.report.paper_time else {}
    for r in rows:
        r["time_vs"] = r["step_ms"] / unit if unit and r["step_ms"] else None
        hours, paper_unit = paper_time.get(r["variant"]), paper_time.get(task.report.time_vs)
        r["paper_time_h"] = hours
        r["paper_time_vs"] = hours / paper_unit if hours and paper_unit else None
    ours = task.report.baselines(exp.config, test) if task.report.baselines else {}
    paper_only = [name for name in paper if name not in task.variants and name not in ours]
    baselines = {}
    for name in [*ours, *paper_only]:
        values = ours.get(name, {})
        baselines[name] = {"metrics": {m.key: {"ours": values.get(m.key), "paper": paper.get(name, {}).get(m.key)}
                                       for m in task.metrics}}
    config = {**asdict(exp.config), **{k: v for k, v in asdict(exp.budget).items() if k != "overrides"},
              "variants": list(exp.variants), "seeds": exp.seeds, "out": exp.out}
    return {"task": task.name, "config": config, "describe": task.report.describe(exp.config, exp.budget, exp.seeds),
            "paper_label": task.label(exp.config), "aggregate": task.report.aggregate, "rows": rows,
            "baselines": baselines,
            "curves": curves}


def _fmt_paper(value, metric: Metric) -> str:
    if value is None:
        return "-"
    if isinstance(value, (tuple, list)):
        return f"{value[0]:{metric.paper_fmt}} ± {value[1]:{metric.paper_fmt}}"
    return format(value, metric.paper_fmt)


def _fmt_ours(cell: dict, metric: Metric) -> str:
    if cell["ours"] is None:
        return "-"
    text = format(cell["ours"], metric.fmt)
    if cell.get("std") is not None:
        text += " ± " + format(cell["std"], metric.fmt)
    elif len(cell.get("per_seed", ())) > 1:  # a median: its range over seeds
        text += f" [{cell['min']:{metric.fmt}}, {cell['max']:{metric.fmt}}]"
    return text


def format_table(task: Task, summary: dict) -> str:
    """The markdown table of a summary from :func:`run`: our figures and the paper's side by side (with several
    metrics, a metric without any figure of the paper has no paper column)."""
    single = len(task.metrics) == 1
    head = task.headline
    label = summary["paper_label"]
    has_time = any(r["time_vs"] is not None for r in summary["rows"])
    has_paper_time = any(r.get("paper_time_h") is not None for r in summary["rows"])
    entries = [r["metrics"] for r in summary["rows"]] + [b["metrics"] for b in summary["baselines"].values()]
    in_paper = {m.key: single or any(e[m.key]["paper"] is not None for e in entries) for m in task.metrics}
    if single:
        metric_cols = ["ours", f"paper ({label})", "ours per seed"]
    else:
        metric_cols = [c for m in task.metrics
                       for c in (f"ours {m.label}", f"paper {m.label}")[:1 + in_paper[m.key]]]
        metric_cols.append(f"ours per seed ({head.label})")
    time_cols = [f"time vs {task.variants[task.report.time_vs]}"] if has_time else []
    if has_paper_time:
        time_cols.append("paper train time")
    cols = ["model", *metric_cols, "step time (ms)", *time_cols]
    lines = [summary["describe"], "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    if not single:
        lines.insert(1, f"\nThe paper's figures: {label}.")

    def cells(metrics: dict) -> list[str]:
        return [c for m in task.metrics
                for c in (_fmt_ours(metrics[m.key], m), _fmt_paper(metrics[m.key]["paper"], m))[:1 + in_paper[m.key]]]

    for r in summary["rows"]:
        seeds = ", ".join(format(x, head.fmt) for x in r["metrics"][head.key]["per_seed"])
        ms = f"{r['step_ms']:.1f}" if r["step_ms"] is not None else "-"
        row = [r["name"], *cells(r["metrics"]), seeds, ms]
        if has_time:
            row.append(f"{r['time_vs']:.2f}x" if r["time_vs"] is not None else "-")
        if has_paper_time:
            hours, ratio = r.get("paper_time_h"), r.get("paper_time_vs")
            row.append("-" if hours is None else f"{hours:g} h" + (f" ({ratio:.2f}x)" if ratio is not None else ""))
        lines.append("| " + " | ".join(row) + " |")
    for name, b in summary["baselines"].items():
        row = [name, *cells({k: {**c, "std": None} for k, c in b["metrics"].items()}), "-", "-", *["-"] * len(time_cols)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _plot(task: Task, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = task.headline.key
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (variant, per_seed) in enumerate(summary["curves"].items()):
        for j, c in enumerate(per_seed.values()):
            steps = [s for s, y in zip(c["eval_step"], c[f"test_{key}"]) if y is not None]
            ys = [y for y in c[f"test_{key}"] if y is not None]
            ax.plot(steps, ys, color=f"C{i}", label=task.variants[variant] if j == 0 else None,
                    alpha=1.0 if j == 0 else 0.4)
    for k, (name, b) in enumerate(summary["baselines"].items()):
        value = b["metrics"][key]["ours"]
        if value is not None:
            ax.axhline(value, color="gray", ls=("--", ":", "-.")[k % 3], lw=1, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"test {task.headline.label}")
    ax.set_title(summary["describe"].split(":")[0])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Command line


def _epochs_option(task: Task) -> bool:
    """Whether the task's options have a fixed number of training examples, ``n_train`` (then ``--epochs``
    sets the steps)."""
    return any(f.name == "n_train" and f.type in (int, "int") for f in fields(task.config))


def build_parser(task: Task, description: str = "") -> argparse.ArgumentParser:
    """The command line of ``task``: the grid and schedule options of every task, then the task's own options
    (the fields of ``task.config``, ``tasks.options``)."""
    p = argparse.ArgumentParser(prog=f"python -m tasks.{task.name}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", action="append", choices=list(task.variants), dest="variants",
                   help=f"variant to train (repeatable); default: {', '.join(task.default_variants)}")
    p.add_argument("--seeds", type=int_at_least(1), default=1,
                   help=f"seeds 0..N-1; the table shows the {task.report.aggregate}")
    p.add_argument("--budget", choices=list(task.budgets), default=task.default_budget,
                   help="training budget: " + "; ".join(f"{k}: {b.steps:,} steps of batch {b.batch_size}"
                                                         + (f" ({b.note})" if b.note else "")
                                                         for k, b in task.budgets.items()))
    for name, b in task.budgets.items():
        if b.shortcut:
            p.add_argument(f"--{name}", action="store_const", const=name, dest="budget",
                           help=f"the '{name}' budget: {b.note}")
    steps_group = p.add_mutually_exclusive_group()
    steps_group.add_argument("--steps", type=int_at_least(1), help="optimizer steps per run (default: the budget's)")
    if _epochs_option(task):
        steps_group.add_argument("--epochs", type=int_at_least(1),
                                 help="epochs per run, each n_train / batch_size steps (instead of --steps)")
    p.add_argument("--batch-size", type=int_at_least(1), help="batch size (default: the budget's)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the budget's)")
    p.add_argument("--grad-clip", type=float_at_least_zero,
                   help="clip the global gradient norm to this value, 0: no clipping (default: the budget's)")
    p.add_argument("--warmup-steps", type=int_at_least(0),
                   help="linear warm-up steps, 0: none (default: the budget's, else min(1,000, steps / 20))")
    p.add_argument("--decay-steps", type=int_at_least(1),
                   help="the rate is multiplied by --decay-rate every this many steps (default: the budget's, "
                        "else steps / 4)")
    p.add_argument("--decay-rate", type=unit_interval,
                   help="factor of the rate per --decay-steps, in (0, 1]; 1: no decay (default: the budget's)")
    p.add_argument("--eval-every", type=int_at_least(0), help="steps between test evaluations (default: the budget's)")
    p.add_argument("--ckpt-every", type=int_at_least(0), help="steps between checkpoints (default: the budget's)")
    p.add_argument("--out", help=f"run folder (default runs/{task.name}/...)")
    p.add_argument("--resume", action="store_true", help="continue runs from their checkpoints and reuse finished runs")
    p.add_argument("--resume-previous", action="store_true",
                   help="as --resume, and a run whose newest checkpoint (ckpt.pt) fails its check continues from "
                        "the previous one (ckpt.prev.pt); the damaged file is kept as ckpt.damaged.pt")
    p.add_argument("--jobs", type=int_at_least(1),
                   help="runs trained at the same time in separate processes (default: one per core on CPU, at "
                        "most the number of runs; one on CUDA or under torchrun)")
    p.add_argument("--threads", type=int_at_least(1),
                   help="torch threads per run (default: torch's choice; with several jobs, cores / jobs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard events (loss, learning rate, gradient norm, evaluation metrics, "
                        "pictures) into every run folder; view with tensorboard --logdir runs/ "
                        f"(needs tensorboard: {tensorboard.INSTALL})")
    p.add_argument("--compile", action="store_true",
                   help="compile each run's model with torch.compile (inductor); the OT plans stay eager. Same "
                        "results up to rounding; on CPU only SA's step gains (about 1.1x) and a cold compile "
                        "takes about a minute")
    options.add_arguments(p, task.config, {k: b.overrides for k, b in task.budgets.items()})
    return p


def experiment_from_args(task: Task, args: argparse.Namespace) -> Experiment:
    """The :class:`Experiment` of parsed arguments: the task's defaults, then the budget's overrides, then the
    options given explicitly; ``--epochs`` is steps = epochs * (n_train // batch_size). The run folder without
    ``--out`` is the config's ``run_folder(budget)``, else ``runs/<task>/<budget>``."""
    budget = task.budgets[args.budget]
    cfg = task.config(**{**budget.overrides, **options.given(task.config, args)})
    schedule = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "grad_clip", "warmup_steps", "decay_steps",
                                              "decay_rate", "eval_every", "ckpt_every")
                if getattr(args, k, None) is not None}
    budget = replace(budget, **schedule)
    if getattr(args, "epochs", None) is not None:
        budget = replace(budget, steps=args.epochs * (cfg.n_train // budget.batch_size))
    folder = getattr(cfg, "run_folder", lambda name: None)(args.budget)
    out = args.out or folder or f"runs/{task.name}/{args.budget}"
    return Experiment(config=cfg, budget=budget, variants=tuple(args.variants or task.default_variants), out=out,
                      seeds=args.seeds, resume=args.resume or args.resume_previous,
                      resume_previous=args.resume_previous, jobs=args.jobs, num_threads=args.threads,
                      progress=not args.no_progress, tensorboard=args.tensorboard, compile=args.compile)


def entry_points(module, doc: str) -> tuple[Callable, Callable, Callable]:
    """``build_parser()``, ``config_from_args(args)`` and ``main(argv)`` of ``python -m tasks.<name>`` for the
    task ``module.TASK`` (looked up at each call), with the first paragraph of ``doc`` as the description."""
    description = doc.split("\n\n")[0]
    return (lambda: build_parser(module.TASK, description), lambda args: experiment_from_args(module.TASK, args),
            lambda argv=None: main(module.TASK, argv, description))


def main(task: Task, argv=None, description: str = "") -> int:
    """Run ``task`` from the command line. Exit status: 0 on success, 2 for bad arguments, an unusable run
    folder (a damaged checkpoint, a folder another process works in), a variant this build cannot run or
    ``--tensorboard`` without tensorboard (nothing is written then), 1 when a run cannot write its files (disk
    full, permissions; its last checkpoint is intact, ``--resume`` continues),
    130 after Ctrl-C (the checkpoint is saved; ``--resume`` continues)."""
    parser = build_parser(task, description)
    args = parser.parse_args(argv)
    try:
        exp = experiment_from_args(task, args)
        exp.variants = tuple(dict.fromkeys(exp.variants))
        summary = run(task, exp)
    except TrainingInterrupted as e:
        print(f"\n{e}; rerun with --resume to continue", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, EMDUnavailableError, tensorboard.TensorBoardMissing) as e:  # CheckpointError, LockHeld too
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFolderWriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if is_main_process():
        print()
        print(format_table(task, summary))
        print(f"\nwritten to {exp.out}/ (table.md, table.json, {task.report.plot_file})")
    return 0
