"""The appendix variants of MESH: a learned step size, a learned objective (App. I) and the similarity
regulariser (App. B), written with plain autograd so that gradients reach what they learn.

MESH (Eq. 9, 11-12) moves the costs C (B, n, m) by ``n_mesh_iters`` normalized gradient steps

    C'_0 = C + noise_scale * noise,   C'_{t+1} = C'_t - lr * g_t / ||g_t||,   g_t = dF(C'_t)/dC'_t,

where ||.|| is the Frobenius norm per batch element and F is the objective to minimize:

    F(C') = sum_ij f(P'_ij) + alpha * ||P' S - P||^2                                   (Eq. 12, 13)

with P' = sinkhorn(C'), P = sinkhorn(C) (both (B, n, m): rows are inputs, columns are slots) and
    f(p) = -p log p (the entropy, Eq. 9) or a learned scalar MLP (App. I: Linear(1, 32), ReLU,
        Linear(32, 1), applied to every entry of the plan and summed);
    S (B, m, m) the column softmax of g(z_i, z_j), a learned network on pairs of slots (App. B, Eq. 19):
        mass that P' puts on a slot may be moved among slots that g finds similar, and nowhere else.
    alpha = 0 drops the second term (plain MESH).
The step size lr is a number, or a learned parameter (``MeshVariant`` keeps it as log(lr), so it stays
positive; the official code's ``learn_mesh_lr`` is the raw value starting at 1, here it starts at
``OTConfig.mesh_lr``).

Two ways to differentiate the output C'_T (``second_order``):
    True:  through every step, g_t included (second order); the only way for the learned objective
           and for g to get a gradient, since they act on C'_T only through g_t.
    False: first order, as the official code does: g_t is treated as a constant, so C'_T passes the
           gradient to C unchanged (the straight-through estimator of Sec. 4.1) and a learned step size
           gets dC'_T/dlr = -sum_t g_t / ||g_t||.

Sinkhorn inside the steps is ``kernels.reference.sinkhorn_ref`` (unrolled under autograd, so that its
backward is itself differentiable); the plan from C'_T is the library's ``kernels.sinkhorn``.

Known limits: slower than ``kernels.mesh`` (plain PyTorch, no fused kernel; the second-order backward
roughly triples the cost of a MESH step); ``f`` is piecewise linear (ReLU), so the learned objective's
derivative f' is piecewise constant and its second derivative is zero almost everywhere.
"""
import math
from typing import Callable

import torch
from torch import nn

from kernels.ot import sinkhorn
from kernels.reference import sinkhorn_ref

__all__ = ["LEARNED_OBJECTIVE_HIDDEN", "LearnedObjective", "PairSimilarity", "MeshVariant", "entropy_objective",
           "mesh_autograd"]

LEARNED_OBJECTIVE_HIDDEN = 32  # App. I: "a simple 2-layer MLP with ReLU activations and 32 hidden dimensions"

# objective(P, log_P) -> (B,): P, log_P (B, n, m), the plan and its logarithm.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def entropy_objective(P: torch.Tensor, log_P: torch.Tensor) -> torch.Tensor:
    """H(P) = -sum_ij P_ij log P_ij (B,), from log P so that entries that underflow to 0 have gradient 0."""
    return -(P * log_P).sum((1, 2))


class LearnedObjective(nn.Module):
    """f: R -> R, a 2-layer MLP (App. I) applied to every entry of the plan; F(P) = sum_ij f(P_ij).

    f(p) = sum_k w2_k relu(w1_k p + b_k) is piecewise linear with kinks at p = -b_k / w1_k. The weights
    start as PyTorch initializes them, but the biases are set so that the kinks lie log-uniformly in
    [1e-4, 1], where plan entries are: with PyTorch's initial biases most kinks fall outside, and on an
    interval without a kink f' is a constant c, F = c sum_ij P_ij is fixed by the marginals, MESH's
    gradient is zero (rounding noise once normalized) and no gradient reaches f. The biases get no
    gradient (f' is piecewise constant in them); the kinks move as w1 is learned.
    """

    def __init__(self, hidden: int = LEARNED_OBJECTIVE_HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1, bias=False))
        kinks = torch.logspace(-4, 0, hidden)  # (hidden,)
        with torch.no_grad():
            self.net[0].bias.copy_(-self.net[0].weight[:, 0] * kinks)

    def elementwise(self, p: torch.Tensor) -> torch.Tensor:
        """f(p) for a tensor of any shape (same shape out)."""
        return self.net(p.unsqueeze(-1)).squeeze(-1)

    def derivative(self, p: torch.Tensor) -> torch.Tensor:
        """f'(p) (any shape), by autograd; for plots (App. I, Fig. 5)."""
        with torch.enable_grad():
            p = p.detach().requires_grad_(True)
            (d,) = torch.autograd.grad(self.elementwise(p).sum(), p)
        return d

    def forward(self, P: torch.Tensor, log_P: torch.Tensor) -> torch.Tensor:
        """P (B, n, m) -> sum_ij f(P_ij) (B,); ``log_P`` is unused (the objective interface)."""
        return self.elementwise(P).sum((1, 2))


class PairSimilarity(nn.Module):
    """g of App. B: S~_ij = g(z_i, z_j), S = softmax of S~ over i for each column j (Eq. 19).

    g(z_i, z_j) = MLP([z_i * z_j, |z_i - z_j|]) is symmetric in (i, j) by construction, so equal
    slots z_i = z_k have equal rows and columns in S~.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, m, dim) slots -> S (B, m, m), every column sums to 1."""
        zi, zj = z[:, :, None, :], z[:, None, :, :]  # (B, m, 1, dim), (B, 1, m, dim)
        pair = torch.cat([(zi * zj), (zi - zj).abs()], dim=3)  # (B, m, m, 2 dim)
        return torch.softmax(self.net(pair).squeeze(3), dim=1)  # (B, m, m): softmax over i per column j


def mesh_autograd(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, objective: Objective = entropy_objective,
                  n_mesh_iters: int = 4, n_sh_iters: int = 5, lr: float | torch.Tensor = 8.0,
                  noise: torch.Tensor | None = None, noise_scale: float = 1e-3, reuse_uv: bool = True,
                  tau: float = 1.0, similarity: torch.Tensor | None = None, alpha: float = 0.0,
                  second_order: bool = True):
    """MESH with any objective, a tensor step size and the App. B regulariser (see the module docstring).

    Args:
        C: (B, n, m) costs. a: (B, n), b: (B, m) marginals of equal mass.
        objective: (P, log_P) -> (B,) to minimize (default: the entropy, Eq. 9).
        lr: step size, a number or a () tensor (learned).
        noise: (B, n, m) standard-normal noise; drawn with ``torch.randn_like(C)`` if None.
        similarity: (B, m, m) S of Eq. 13, needed when alpha > 0.
        alpha: weight of ||P' S - sinkhorn(C)||^2 (0: plain MESH).
        second_order: differentiate through the steps (True) or treat each step's gradient as a
            constant (False: straight-through for C, first order for lr).

    Returns:
        C2 (B, n, m) the moved costs; u (B, n), v (B, m) the potentials of the last step's Sinkhorn (None
        when ``reuse_uv`` is False or ``n_mesh_iters`` is 0), to warm-start ``sinkhorn(C2, a, b, u=u, v=v)``.
    """
    if alpha > 0 and similarity is None:
        raise ValueError("mesh_autograd: alpha > 0 needs the similarity matrix S (B, m, m)")
    if noise is None:
        noise = torch.randn_like(C)
    second_order = second_order and torch.is_grad_enabled()
    if not second_order:
        a, b = a.detach(), b.detach()
        similarity = None if similarity is None else similarity.detach()
    target = None
    if alpha > 0:  # P = sinkhorn(C), what P' S should stay close to
        with torch.set_grad_enabled(second_order):
            target, _, _ = sinkhorn_ref(C if second_order else C.detach(), a, b, n_sh_iters, tau)
    Ct = C + noise_scale * noise  # (B, n, m)
    u = v = None
    for _ in range(n_mesh_iters):
        with torch.enable_grad():
            Cs = Ct if second_order and Ct.requires_grad else Ct.detach().requires_grad_(True)
            P, u_new, v_new = sinkhorn_ref(Cs, a, b, n_sh_iters, tau, u, v)  # (B, n, m), (B, n), (B, m)
            log_P = -Cs / tau + u_new[:, :, None] + v_new[:, None, :]
            F = objective(P, log_P)  # (B,)
            if alpha > 0:
                F = F + alpha * (torch.bmm(P, similarity) - target).square().sum((1, 2))
            (g,) = torch.autograd.grad(F.sum(), Cs, create_graph=second_order)
        norm = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)  # (B,)
        Ct = (Cs if second_order else Ct) - lr * (g / norm[:, None, None])
        if reuse_uv:
            u, v = (u_new, v_new) if second_order else (u_new.detach(), v_new.detach())
    if not reuse_uv:
        u = v = None
    return Ct, u, v


class MeshVariant(nn.Module):
    """The learned parts of SA-MESH's appendix variants and its plan; built by ``SlotAttention`` when
    ``OTConfig.learn_mesh_lr``, ``mesh_objective="learned"`` or ``similarity_alpha > 0`` is set.

    Attributes (each present only when its option is on):
        log_mesh_lr: () parameter, the learned step size is exp(log_mesh_lr).
        objective: :class:`LearnedObjective`.
        similarity: :class:`PairSimilarity` on the normalized slots.
    """

    def __init__(self, ot, dim: int, hidden: int):
        super().__init__()
        self.ot = ot
        if ot.learn_mesh_lr:
            self.log_mesh_lr = nn.Parameter(torch.tensor(math.log(ot.mesh_lr)))
        if ot.mesh_objective == "learned":
            self.objective = LearnedObjective()
        if ot.similarity_alpha > 0:
            self.similarity = PairSimilarity(dim, hidden)

    def step_size(self) -> float | torch.Tensor:
        """The MESH step size: exp(log_mesh_lr) when learned, else ``OTConfig.mesh_lr``."""
        return self.log_mesh_lr.exp() if self.ot.learn_mesh_lr else self.ot.mesh_lr

    @torch.compiler.disable  # torch.autograd.grad inside: runs eagerly under torch.compile
    def forward(self, C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, noise: torch.Tensor,
                zn: torch.Tensor) -> torch.Tensor:
        """SA-MESH's plan sinkhorn(MESH(C)) with this variant's objective, step size and regulariser.

        Args:
            C: (B, n, m) costs. a: (B, n), b: (B, m) marginals. noise: (B, n, m) standard normal.
            zn: (B, m, dim) normalized slots (the input of g).

        Returns:
            P (B, n, m) the plan.
        """
        ot = self.ot
        objective = self.objective if ot.mesh_objective == "learned" else entropy_objective
        similarity = self.similarity(zn) if ot.similarity_alpha > 0 else None
        C2, u, v = mesh_autograd(C, a, b, objective=objective, n_mesh_iters=ot.mesh_iters, n_sh_iters=ot.n_sh_iters,
                                 lr=self.step_size(), noise=noise, noise_scale=ot.noise_scale, reuse_uv=ot.reuse_uv,
                                 tau=ot.tau, similarity=similarity, alpha=ot.similarity_alpha,
                                 second_order=not ot.straight_through)
        P, _, _ = sinkhorn(C2, a, b, n_iters=ot.n_sh_iters, tau=ot.tau, u=u, v=v, backend=ot.backend)
        return P
