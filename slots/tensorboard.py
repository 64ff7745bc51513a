"""TensorBoard events of a run (``--tensorboard``): the training records, every evaluation metric and the
task's pictures, written into the run folder beside ``metrics.jsonl``.

``tensorboard --logdir runs/`` lists every run folder (``<out>/<variant>/seed<s>``) as a run of its own, so
the variants and seeds of an experiment are side by side. Tags:

    train/loss, train/lr, train/grad_norm, train/steps_per_s     every ``log_every`` steps
    eval/<metric>                                                 every evaluation (the task's metrics)
    pictures/<file name>                                          the PNGs a task's ``after_train`` drew, at the
                                                                  run's last step

The events are a view of ``metrics.jsonl``, which stays the record the runner reads. A writer opened for
training starts its events file by purging every earlier step (a TensorBoard ``SessionLog.START`` at step 0)
and then replays the records kept in ``metrics.jsonl``; so TensorBoard shows what ``metrics.jsonl`` holds, also
after a resumption (a killed run's steps after its checkpoint are dropped from both) and for a run resumed
with ``--tensorboard`` after it ran without it.

TensorBoard is an optional dependency (``pip install .[tensorboard]``); :func:`require` raises
:class:`TensorBoardMissing`, which says what to install, where it is missing. Writing goes through
``torch.utils.tensorboard``.

Known limits: only the main process writes; a record's ``time_s`` is not logged (each event has its own
wall time, the time it was written, also for replayed records).
"""
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["TensorBoardMissing", "require", "RunBoard", "INSTALL"]

INSTALL = "pip install '.[tensorboard]' in a checkout, or pip install 'tensorboard>=2.14'"
_NOT_SCALARS = ("step", "split", "time_s")  # record keys that are not logged as scalars


class TensorBoardMissing(ImportError):
    """``--tensorboard`` was asked for, but the tensorboard package is not installed."""


def require() -> None:
    """Return if the tensorboard package can be imported, else raise :class:`TensorBoardMissing` naming what to
    install."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise TensorBoardMissing(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}"
                                 ) from None


class RunBoard:
    """The TensorBoard writer of one run folder.

    Args:
        run_dir: the run folder (exists); the events file is written into it.
        replay: records of ``metrics.jsonl`` to write first (see the module docstring).
        purge: start by purging every earlier step of this folder's events (True for the training loop; False
            to add pictures after it).

    Raises:
        TensorBoardMissing if tensorboard is not installed.
    """

    def __init__(self, run_dir: str | Path, replay: Iterable[dict] = (), purge: bool = True):
        require()
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=0 if purge else None)
        for record in replay:
            self.add_record(record)

    def add_record(self, record: dict) -> None:
        """Write one ``metrics.jsonl`` record: every number but the step and time as ``<split>/<key>`` at the
        record's step (booleans, strings and lists are skipped)."""
        step, split = int(record["step"]), record.get("split", "train")
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self._writer.add_scalar(f"{split}/{key}", float(value), step)

    def add_pictures(self, paths: Iterable[str | Path], step: int) -> list[str]:
        """Write PNG files as images ``pictures/<file name>`` at ``step``; returns the tags written.

        Each image is read with Pillow and written as (H, W, 3) uint8 RGB (transparency dropped)."""
        from PIL import Image

        tags = []
        for path in paths:
            path = Path(path)
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
            tag = f"pictures/{path.stem}"
            self._writer.add_image(tag, pixels, step, dataformats="HWC")
            tags.append(tag)
        return tags

    def close(self) -> None:
        """Flush the events to disk and close the file."""
        self._writer.close()
