"""The experiments behind the paper's Tables 1-6, as commands of the tasks (``python -m tasks.<task> ...``), and
what their folders hold: finished, interrupted or not started.

An experiment is one invocation of one task's command line with its own summary folder
``<out>/<experiment name>/``, in which the task writes ``table.md``, ``table.json``, its plot and the run folders
``<variant>/seed<s>/``. Beside them ``reproduce.json`` records what this package ran there: the command, the
wall time summed over attempts, the status of the last attempt ("finished", "interrupted", "failed"), the commit,
the machine and the dates. A table is one or more experiments (Table 1: one per sigma).

Budgets: "cpu" is each task's CPU budget (random_objects has none apart from the paper's, which is its default
and fits a CPU), "paper" each task's paper budget (meant for a GPU), "quick" a few steps on a few generated
examples per run, only to check the whole pipeline in minutes.

Known limits: ClevrTex's OOD and CAMO sets are read only from the real data (``--data-dir`` with
``--data-variant outd|camo``); the generated data has no such variants, so they are not in the plan.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slots.checkpoint import LOCK_NAME, RESULTS_NAME

__all__ = ["TABLES", "BUDGETS", "Experiment", "experiments", "STATE_NAME", "read_state", "State", "planned_steps"]

STATE_NAME = "reproduce.json"  # this package's record in an experiment's folder

TABLES = {
    "1": "Table 1: object position prediction on random objects (normalized Hungarian RMSE)",
    "2": "Table 2: CLEVR object property prediction (AP)",
    "3": "Table 3: object discovery on Multi-dSprites (FG-ARI, FG-mIoU)",
    "4": "Table 4: object discovery on ClevrTex (FG-ARI, FG-mIoU)",
    "5": "Table 5: video object discovery on CLEVRER-S and CLEVRER-L (FG-ARI, FG-mIoU, TC)",
    "6": "Table 6: CLEVR object property prediction without implicit differentiation (AP)",
}

# reproduce budget -> the task's --budget ("quick" adds QUICK_ARGS)
BUDGETS = {
    "cpu": {"random_objects": "paper", "clevr": "cpu", "multi_dsprites": "cpu", "clevrtex": "cpu", "clevrer": "cpu"},
    "paper": {task: "paper" for task in ("random_objects", "clevr", "multi_dsprites", "clevrtex", "clevrer")},
    "quick": {"random_objects": "quick", "clevr": "cpu", "multi_dsprites": "quick", "clevrtex": "quick",
              "clevrer": "cpu"},
}
# a few steps of a small model on a few generated examples, one process per experiment
QUICK_ARGS = {
    "random_objects": ("--steps", "2", "--batch-size", "16", "--n-train", "32", "--n-test", "16"),
    "clevr": ("--steps", "1", "--batch-size", "4", "--n-train", "4", "--n-test", "4", "--image-size", "16"),
    "multi_dsprites": ("--steps", "2", "--batch-size", "4", "--n-train", "4", "--n-test", "4", "--resolution", "16"),
    "clevrtex": ("--steps", "2", "--batch-size", "4", "--n-train", "4", "--n-test", "4", "--resolution", "16"),
    "clevrer": ("--steps", "1", "--batch-size", "2", "--n-train", "2", "--n-test", "2"),
}
QUICK_COMMON = ("--jobs", "1", "--threads", "1", "--no-progress")


@dataclass(frozen=True)
class Experiment:
    """One command of the plan.

    Attributes:
        table: the key of :data:`TABLES` it belongs to. name: its folder under the output folder.
        title: what it is within its table (e.g. "sigma = 0.01"). task: the package under ``tasks``.
        variants: the variants trained, in table order. seeds: seeds 0 .. seeds - 1.
        options: the task's own options (not the grid, budget or folder).
    """

    table: str
    name: str
    title: str
    task: str
    variants: tuple[str, ...]
    seeds: int = 1
    options: tuple[str, ...] = ()

    def args(self, budget: str, out: Path) -> list[str]:
        """The task's arguments under ``budget`` ("cpu", "paper" or "quick"), writing into ``out / name``;
        without ``--resume``, which the caller adds for an interrupted experiment."""
        grid = [arg for v in self.variants for arg in ("--variant", v)]
        quick = [*QUICK_ARGS[self.task], *QUICK_COMMON] if budget == "quick" else []
        seeds = 1 if budget == "quick" else self.seeds
        return [*self.options, *grid, "--seeds", str(seeds), "--budget", BUDGETS[budget][self.task], *quick,
                "--out", str(out / self.name)]

    def command(self, budget: str, out: Path) -> list[str]:
        """The whole command line, ``python -m tasks.<task> ...`` (``python`` as written, not this interpreter)."""
        return ["python", "-m", f"tasks.{self.task}", *self.args(budget, out)]

    def runs(self, budget: str) -> list[tuple[str, int]]:
        """The (variant, seed) pairs it trains."""
        return [(v, s) for v in self.variants for s in range(1 if budget == "quick" else self.seeds)]


_CLEVR = ("sa", "sa-sh", "sa-emd", "sa-mesh")
_OBJECTS = ("sa", "sa-sh", "sa-mesh")
_VIDEO = ("sa", "sa-fixed-noise", "sa-learned-noise", "sa-sh", "sa-mesh")


def experiments() -> list[Experiment]:
    """Every experiment of Tables 1-6, in the order they run (the tables' order, then 6)."""
    plan = [Experiment("1", f"table1-sigma{sigma}", f"sigma = {sigma}", "random_objects", _CLEVR, seeds=5,
                       options=("--sigma", sigma))
            for sigma in ("1", "0.1", "0.01")]
    plan += [
        Experiment("2", "table2", "with implicit differentiation", "clevr", _CLEVR),
        Experiment("3", "table3", "SA and SA-MESH, 3 seeds", "multi_dsprites", ("sa", "sa-mesh"), seeds=3),
        Experiment("3", "table3-sa-sh", "SA-SH", "multi_dsprites", ("sa-sh",)),
        # beyond the paper, which calls SA-EMD infeasible at this scale: the exact solver's step time is the point
        Experiment("3", "table3-sa-emd", "SA-EMD (not in the paper)", "multi_dsprites", ("sa-emd",)),
        Experiment("4", "table4", "ClevrTex (full)", "clevrtex", _OBJECTS),
        Experiment("5", "table5-S", "CLEVRER-S (with SA-MESH at the lower MESH step size)", "clevrer",
                   (*_VIDEO, "sa-mesh-low-lr"), options=("--data", "S")),
        Experiment("5", "table5-L", "CLEVRER-L", "clevrer", _VIDEO, options=("--data", "L")),
        Experiment("6", "table6", "without implicit differentiation", "clevr", _CLEVR,
                   options=("--no-implicit-grad",)),
    ]
    return plan


@dataclass
class State:
    """What an experiment's folder holds.

    Attributes:
        record: its ``reproduce.json`` (empty when absent). started: the folder holds anything the task wrote.
        finished: the last attempt ended with status 0 and ``table.md`` is there.
        runs_done: the (variant, seed) runs with a ``results.json`` of at least the planned steps.
    """

    record: dict
    started: bool
    finished: bool
    runs_done: list[tuple[str, int]]


def read_state(exp: Experiment, budget: str, out: Path, steps: int | None) -> State:
    """The :class:`State` of ``exp`` in ``out / exp.name``; ``steps`` is its planned steps per run (None: any
    ``results.json`` counts)."""
    folder = out / exp.name
    try:
        record = json.loads((folder / STATE_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        record = {}
    done = []
    for v, s in exp.runs(budget):
        try:
            step = json.loads((folder / v / f"seed{s}" / RESULTS_NAME).read_text()).get("step", 0)
        except (OSError, json.JSONDecodeError):
            continue
        if steps is None or step >= steps:
            done.append((v, s))
    started = folder.is_dir() and any(p.name not in (LOCK_NAME, STATE_NAME) for p in folder.iterdir())
    finished = record.get("status") == "finished" and (folder / "table.md").is_file()
    return State(record, started, finished, done)


def planned_steps(exp: Experiment, budget: str) -> int | None:
    """Optimizer steps per run of ``exp`` under ``budget`` (the task's budget, or --steps of "quick"); None when
    the task cannot be read."""
    if budget == "quick":
        quick = QUICK_ARGS[exp.task]
        return int(quick[quick.index("--steps") + 1])
    from ..runs import get_task

    try:
        return get_task(exp.task).budgets[BUDGETS[budget][exp.task]].steps
    except (ValueError, KeyError, ImportError):
        return None
