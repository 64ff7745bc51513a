"""App. C as a demonstration: slot attention started from two identical slots ("twins"), run again on a
permutation of its inputs and of its initial slots.

f(x, Z) is a SlotAttention module (3 iterations, random weights; cost "dot" for SA, "l2" for the OT
variants) mapping inputs x (n, d) and initial slots Z (m, d) with Z_0 = Z_1 to output slots (m, d). With
pi a permutation of the inputs and P1 one of the slots, we measure, relative to ||f(x, Z)||:
    twin gap:        ||f(x, Z)_0 - f(x, Z)_1||, and the L1 distance between the twins' columns of the
                     last iteration's plan divided by a column's mass (0: identical, 2: disjoint);
    set error:       ||f(pi x, P1 Z) - P1 f(x, Z)||  (0 for a set-equivariant f, Prop. C.1);
    multiset error:  min over P2 with P2 Z = P1 Z (P1, or P1 followed by swapping the twins) of
                     ||f(pi x, P1 Z) - P2 f(x, Z)||  (0 for a multiset-equivariant f, Eq. 22).
SA and SA-SH keep the twins identical and have set error 0 (set-equivariant); SA-EMD and SA-MESH split
the twins, so they cannot be set-equivariant, and their multiset error is 0 (EMD) or of the order of
MESH's noise (1e-3) when the tie is a plain swap (Prop. C.2).

Two settings: "square" (n = m = 4 inputs and slots, uniform marginals a = b = 1: the optimal plans are
permutation matrices and the tie between the twins is a swap, as in the proof's example, Eq. 20-21) and
"rectangular" (n = 20 inputs, m = 4 slots, learned marginals: the twins share several inputs
fractionally, the optimal plans tied with the twins form a polytope with more than two vertices, and
which one EMD or MESH reaches may depend on the order of the inputs; the proof's "the same up to
permutation" does not hold exactly there). The MESH noise is the same tensor in both calls (drawn from
the same seed); it is indexed by position, so it is not permuted with the inputs.

Writes equivariance.csv (one row per setting, variant and trial) and equivariance.png (the errors per
variant, log scale; exact zeros drawn at 1e-17).
"""
import torch

from slots import OTConfig, SlotAttention, SlotAttentionConfig

from .common import fmt, output_dir, pyplot, save_figure, write_csv

__all__ = ["compute", "summarize", "plot", "add_arguments", "run", "SETTINGS", "VARIANTS"]

VARIANTS = ("sa", "sa-sh", "sa-emd", "sa-mesh")
COST = {"sa": "dot", "sa-sh": "l2", "sa-emd": "l2", "sa-mesh": "l2"}
# setting -> (inputs n, slots m, learned marginals)
SETTINGS = {"square": (4, 4, False), "rectangular": (20, 4, True)}
DIM = 16
FLOOR = 1e-17  # where exact zeros are drawn on the log axis


def _trial(variant: str, n: int, m: int, learned: bool, trial: int) -> dict:
    g = torch.Generator().manual_seed(1000 + trial)
    x = torch.randn(1, n, DIM, generator=g, dtype=torch.float64)  # (1, n, d) inputs
    Z = torch.randn(1, m, DIM, generator=g, dtype=torch.float64)  # (1, m, d) initial slots
    Z[:, 1] = Z[:, 0]  # the twins
    pi, p1 = torch.randperm(n, generator=g), torch.randperm(m, generator=g)
    swap = torch.arange(m)
    swap[0], swap[1] = 1, 0
    p2 = swap[p1]  # P1 followed by swapping the twins: p2 Z == p1 Z

    torch.manual_seed(trial)  # the same weights for every variant of a trial
    f = SlotAttention(SlotAttentionConfig(n_slots=m, dim=DIM, input_dim=DIM, variant=variant, cost=COST[variant],
                                          n_iters=3, ot=OTConfig(learned_marginals=learned))).double()
    with torch.no_grad():
        torch.manual_seed(0)  # the same MESH noise in both calls
        out, plan = f(x, slots=Z)  # (1, m, d), (1, n, m)
        torch.manual_seed(0)
        out_p, _ = f(x[:, pi], slots=Z[:, p1])
    scale = float(out.norm())
    set_error = float((out_p - out[:, p1]).norm()) / scale
    return {"twin_gap_slots": float((out[0, 0] - out[0, 1]).norm()) / scale,
            "twin_gap_plan": float((plan[0, :, 0] - plan[0, :, 1]).abs().sum() / plan[0, :, 0].sum()),
            "set_error": set_error,
            "multiset_error": min(set_error, float((out_p - out[:, p2]).norm()) / scale)}


def compute(trials: int = 20, settings=tuple(SETTINGS), variants=VARIANTS) -> list[dict]:
    """One dict per (setting, variant, trial): setting, variant, trial, twin_gap_slots, twin_gap_plan,
    set_error, multiset_error (see the module docstring). Every trial draws new inputs, slots,
    permutations and weights."""
    rows = []
    for setting in settings:
        n, m, learned = SETTINGS[setting]
        for variant in variants:
            for trial in range(trials):
                rows.append({"setting": setting, "variant": variant, "trial": trial,
                             **_trial(variant, n, m, learned, trial)})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (setting, variant): the largest twin gap, set error and multiset error over the trials, the
    smallest plan twin gap, and in how many trials the twins split (plan gap > 0.5) and the multiset
    error is below 1e-3."""
    out = {}
    for r in rows:
        out.setdefault((r["setting"], r["variant"]), []).append(r)
    summary = []
    for (setting, variant), rs in out.items():
        summary.append({
            "setting": setting, "variant": variant, "trials": len(rs),
            "max_twin_gap_slots": max(r["twin_gap_slots"] for r in rs),
            "min_twin_gap_plan": min(r["twin_gap_plan"] for r in rs),
            "max_set_error": max(r["set_error"] for r in rs),
            "max_multiset_error": max(r["multiset_error"] for r in rs),
            "split": sum(r["twin_gap_plan"] > 0.5 for r in rs),
            "multiset_ok": sum(r["multiset_error"] < 1e-3 for r in rs),
        })
    return summary


def plot(rows: list[dict], path) -> None:
    """Per setting, one strip per variant and measure (log scale)."""
    plt = pyplot()
    measures = (("twin_gap_slots", "twin gap", "o"), ("set_error", "set error", "^"),
                ("multiset_error", "multiset error", "s"))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for j, variant in enumerate(VARIANTS):
            rs = [r for r in rows if r["setting"] == setting and r["variant"] == variant]
            for k, (key, name, marker) in enumerate(measures):
                ys = [max(r[key], FLOOR) for r in rs]
                xs = [j + (k - 1) * 0.25] * len(ys)
                ax.scatter(xs, ys, marker=marker, color=f"C{k}", s=18, alpha=0.6, label=name if j == 0 else None)
        ax.set_yscale("log")
        ax.set_xticks(range(len(VARIANTS)), [v.upper() for v in VARIANTS])
        n, m, learned = SETTINGS[setting]
        ax.set_title(f"{setting}: n = {n} inputs, m = {m} slots, {'learned' if learned else 'uniform'} marginals")
        ax.set_ylabel("relative to ||f(x, Z)|| (0 drawn at 1e-17)")
        ax.legend(fontsize=8)
    save_figure(fig, path, "App. C: twin slots, inputs and slots permuted")


def add_arguments(p) -> None:
    p.add_argument("--trials", type=int, default=20, help="random trials per setting and variant")


def run(args) -> list[dict]:
    if args.trials < 1:
        raise ValueError("--trials must be >= 1")
    out = output_dir("equivariance", args.out)
    rows = compute(trials=args.trials)
    write_csv(out / "equivariance.csv", rows)
    plot(rows, out / "equivariance.png")
    print(f"{'setting':<12} {'variant':<8} {'max twin gap':>12} {'min plan gap':>12} {'max set err':>11} "
          f"{'max multiset err':>16} {'split':>6} {'multiset < 1e-3':>15}")
    for s in summarize(rows):
        print(f"{s['setting']:<12} {s['variant']:<8} {fmt(s['max_twin_gap_slots']):>12} "
              f"{fmt(s['min_twin_gap_plan']):>12} {fmt(s['max_set_error']):>11} {fmt(s['max_multiset_error']):>16} "
              f"{s['split']:>3}/{s['trials']:<2} {s['multiset_ok']:>12}/{s['trials']}")
    print(f"written to {out}/ (equivariance.png, equivariance.csv)")
    return rows
