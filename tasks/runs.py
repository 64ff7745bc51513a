"""Reading a trained run back from its folder (``<out>/<variant>/seed<s>/`` of ``tasks.runner``): the task, its
options, the variant, the seed and the trained model, all from the run's checkpoint (:func:`load_run`), and the
evaluation of a run exactly as the training loop's own evaluation (:func:`evaluate_run`).

The task is found by the checkpoint's task name in :data:`TASK_MODULES` (imported on first use), the options
and the variant from the stored task configuration (not from the folder's name), and the model is rebuilt from
the model configuration stored with the run (``Task.model_kind``, ``slots.pretrained``), so a default changed
since the run was trained does not change the model read back. ``python -m tasks.evaluate``,
``tasks.predict`` and ``tasks.export`` start from :func:`load_run`.

Known limits: the checkpoint is the run's last (``ckpt.pt``): the model at the step it was written, which is
the final step for a finished run.
"""
from __future__ import annotations

import argparse
import importlib
import random
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from slots.pretrained import PretrainedError, build_model, load_weights
from slots.train import CHECKPOINT_NAME, CheckpointError, _process_seed, load_checkpoint, seed_everything

from .runner import Task

__all__ = ["TASK_MODULES", "Run", "get_task", "load_run", "config_with_data_dir", "load_eval_data", "evaluate_run",
           "EVAL_SPLITS", "run_parser"]

# task name (as stored in checkpoints) -> the module whose TASK is its runner spec
TASK_MODULES = {
    "random_objects": "tasks.random_objects.experiment",
    "clevr": "tasks.clevr.experiment",
    "clevrer": "tasks.clevrer.experiment",
    "multi_dsprites": "tasks.multi_dsprites.experiment",
    "clevrtex": "tasks.clevrtex.experiment",
}
EVAL_SPLITS = ("test", "train")
# slots.train evaluates under torch.random.fork_rng, every RNG seeded with _process_seed(seed, EVAL_RANK)
EVAL_RANK = 2**20


class Run(NamedTuple):
    """A trained run read back by :func:`load_run`.

    Attributes:
        task: the runner spec. config: the task's options (an instance of ``task.config``). variant: a key of
        ``task.variants``. seed: the run's seed. model: the trained model on the CPU, in eval mode.
        step: the optimizer step of the checkpoint. train_config: the training loop's options (a dict of
        ``slots.train.TrainConfig``'s fields). path: the run folder.
    """

    task: Task
    config: Any
    variant: str
    seed: int
    model: nn.Module
    step: int
    train_config: dict
    path: Path


def get_task(name: str, source: str = "") -> Task:
    """The runner spec of the task ``name`` (ValueError naming ``source`` for a name not in TASK_MODULES)."""
    if name not in TASK_MODULES:
        where = f"{source} is a run of task {name!r}, which" if source else f"task {name!r}"
        raise ValueError(f"{where} is not one of the tasks that can be read back: {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name]).TASK


def load_run(run_dir) -> Run:
    """The run in ``run_dir`` (a folder holding ``ckpt.pt``), rebuilt from its checkpoint alone.

    The checkpoint is read by ``slots.train.load_checkpoint`` (``weights_only=True``, and whatever checks that
    function makes).

    Raises:
        CheckpointError (a ValueError) for a missing or unreadable checkpoint, a task that is not in
        :data:`TASK_MODULES`, stored options that the task's config refuses, an unknown variant, or weights
        that do not fit the stored model configuration.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    try:
        task = get_task(ckpt["task"], str(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    tc = ckpt["task_config"]
    absent = [k for k in ("variant", "seed", "model") if k not in tc]
    if absent or task.model_kind is None:
        raise CheckpointError(f"{path} does not say which model it holds (its task configuration has no "
                              f"{', '.join(absent or ['model kind'])})")
    names = {f.name for f in fields(task.config)}
    try:
        config = task.config(**{k: v for k, v in tc.items() if k in names})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the run's options are not valid options of task {task.name}: {e}") from None
    if tc["variant"] not in task.variants:
        raise CheckpointError(f"{path}: unknown variant {tc['variant']!r} of task {task.name}; the variants are "
                              f"{', '.join(task.variants)}")
    try:
        model = build_model(task.model_kind, tc["model"], source=str(path))
        load_weights(model, ckpt["model"], str(path))
    except PretrainedError as e:
        raise CheckpointError(str(e)) from None
    return Run(task, config, tc["variant"], int(tc["seed"]), model.eval(), int(ckpt["step"]),
               dict(ckpt["train_config"]), run_dir)


def config_with_data_dir(run: Run, data_dir) -> Any:
    """The run's options reading the real data of ``data_dir`` (the run's own options for None).

    Raises:
        ValueError if the task has no data folder option (its data are generated only).
    """
    if data_dir is None:
        return run.config
    if "data_dir" not in {f.name for f in fields(run.task.config)}:
        raise ValueError(f"task {run.task.name} has no real data to read (no data folder option); its data are "
                         "generated")
    return replace(run.config, data_dir=str(data_dir))


def load_eval_data(run: Run, split: str = "test", data_dir=None) -> tuple[Any, Any]:
    """(options, data) for evaluating ``run`` on ``split`` ("test": ``task.data.load_test``; "train": the run's
    training data, ``task.data.load_train_eval`` or ``task.data.load_train`` with the run's seed), from ``data_dir``
    instead of the run's own data source when given (:func:`config_with_data_dir`)."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    cfg = config_with_data_dir(run, data_dir)
    data = run.task.data
    if split == "test":
        return cfg, data.load_test(cfg)
    load = data.load_train_eval or data.load_train
    return cfg, load(cfg, run.seed)


def evaluate_run(run: Run, data, config=None, device: str | torch.device = "cpu") -> dict[str, float]:
    """``run.task.evaluate`` of the run's model on ``data`` as ``slots.train`` evaluates: the model in eval mode,
    under ``torch.no_grad`` and a forked RNG seeded as the training loop seeds its evaluations, so that the
    metrics of the run's test data equal its ``results.json`` (same machine, torch build and thread count).
    The RNG states of this process are left as they were.

    Args:
        run: from :func:`load_run`. data: what ``run.task.evaluate`` takes (:func:`load_eval_data`).
        config: the options passed to ``evaluate`` (None: the run's). device: where the model runs.

    Returns:
        {metric: float}.
    """
    device = torch.device(device)
    model = run.model.to(device).eval()
    state = (random.getstate(), np.random.get_state())
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            seed_everything(_process_seed(run.train_config["seed"], EVAL_RANK))
            metrics = run.task.evaluate(model, data, run.config if config is None else config)
            return {k: float(v) for k, v in metrics.items()}
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])


def _device(text: str) -> str:
    """argparse type: "auto", "cpu", "cuda" or "cuda:<i>"."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:<i>, got {text!r}")


def run_parser(prog: str, description: str, device: bool = True) -> argparse.ArgumentParser:
    """The command line of a command on one run folder: the folder and, with ``device``, ``--device`` (the
    commands turn it into a device with ``slots.runtime.pick_device``)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run folder, <out>/<variant>/seed<s>/ (holding ckpt.pt)")
    if device:
        p.add_argument("--device", type=_device, default="auto",
                       help="where the model runs: auto (CUDA when present, as training), cpu, cuda or cuda:<i>")
    return p
