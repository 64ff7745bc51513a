"""Fig. 4 (App. E): the gradient norms of Fig. 1 without normalizing each curve to a maximum of 1, on a
linear (left) and a logarithmic (right) y axis. The numbers are those of ``tasks.analysis.fig1`` (same
set-up: cost -s I, 10 x 10; Sinkhorn at temperatures tau, MESH at step sizes lambda).

Writes fig4.png and fig4.csv (the rows of fig1.csv).
"""
from . import fig1
from .common import output_dir, pyplot, save_figure, write_csv

__all__ = ["plot", "add_arguments", "run"]

add_arguments = fig1.add_arguments


def plot(rows: list[dict], path) -> None:
    """Raw ||dH/dC|| against the scale: linear y (left), log y (right)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, yscale in ((left, "linear"), (right, "log")):
        fig1.plot_curves(ax, rows, "grad_norm")
        ax.set_yscale(yscale)
        ax.set_ylabel("||dH/dC|| (not normalized)")
    right.set_ylim(1e-8, 10 * max(r["grad_norm"] for r in rows))
    left.legend(fontsize=8)
    save_figure(fig, path, "Fig. 4: gradient norm of the plan's entropy w.r.t. the cost, unnormalized")


def run(args) -> list[dict]:
    out = output_dir("fig4", args.out)
    rows = fig1.compute(draws=args.draws, seed=args.seed)
    write_csv(out / "fig4.csv", rows)
    plot(rows, out / "fig4.png")
    peaks = {}
    for r in rows:
        key = fig1.label(r["method"], r["param"])
        peaks[key] = max(peaks.get(key, 0.0), r["grad_norm"])
    print("largest gradient norm over the scales, per curve:")
    for key, peak in peaks.items():
        print(f"  {key:<22} {peak:.3g}")
    print(f"written to {out}/ (fig4.png, fig4.csv)")
    return rows
