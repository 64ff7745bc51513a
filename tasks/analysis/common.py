"""Helpers shared by the analyses: the output folder, CSV files, matplotlib without a display, and the
entropy of a transport plan.
"""
import csv
import math
from pathlib import Path

import torch

__all__ = ["output_dir", "write_csv", "pyplot", "save_figure", "plan_entropy", "fmt"]


def output_dir(name: str, out: str | None) -> Path:
    """The folder an analysis writes to (created): ``out``, or ``runs/analysis/<name>``."""
    path = Path(out) if out is not None else Path("runs") / "analysis" / name
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (dicts with the same keys, in column order) as a CSV file with a header."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, title: str | None = None) -> None:
    """Give ``fig`` its title, lay it out, write it to ``path`` (PNG, 120 dpi) and close it."""
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def plan_entropy(P: torch.Tensor) -> torch.Tensor:
    """H(P) = -sum_ij P_ij log P_ij per batch element: P (B, n, m) -> (B,).

    Entries that underflow to 0 contribute 0 and pass a finite gradient (the clamp keeps log finite, and
    the plan's own gradient is 0 there).
    """
    return -(P * torch.log(P.clamp_min(torch.finfo(P.dtype).tiny))).sum((1, 2))


def fmt(x: float) -> str:
    """A number for a printed table: 3 significant digits, scientific outside [1e-3, 1e4)."""
    if x == 0 or (1e-3 <= abs(x) < 1e4):
        return f"{x:.3g}"
    return f"{x:.2e}" if math.isfinite(x) else str(x)
