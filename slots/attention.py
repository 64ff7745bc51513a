"""Slot attention with the paper's four cross-attention variants (Sec. 2.2, 3 and 4; App. A).

One iteration (Eq. 3-5), for inputs X (B, n, input_dim) and slots Z (B, m, dim):
    K = LN(X) W_K, V = LN(X) W_V, Q = LN(Z) W_Q                             (Eq. 3)
    C = cost(K, Q)                           (B, n, m): rows are inputs, columns are slots
    A = attention plan from C                (the variant; see below)
    W = A normalized over the inputs, column by column
    Z <- GRU(Z, W^T V);  Z <- Z + MLP(LN(Z))                               (Eq. 5)

Variants (picked from ``ATTENTION_VARIANTS``, a table of functions):
    "sa":      A = softmax over slots of -C / tau (Eq. 4). With the "dot" cost and tau = 1 this is
               exactly Locatello et al. (2020), including their +eps before normalizing over inputs.
    "sa-sh":   A = sinkhorn(C, a, b) (Eq. 6-7).
    "sa-emd":  A = emd(C) + sinkhorn(C) (Eq. 8, ``kernels.exact.emd_attention``): the EMD term has no
               gradient of its own; the Sinkhorn gradient stands in for it.
    "sa-mesh": C' = MESH(C) (Eq. 9, 11-12) and A = sinkhorn(C', a, b), warm-started from the potentials
               of MESH's last step (Eq. 10, App. D). The noise of MESH is drawn once per forward call and
               shared by all iterations, as in the official code. Its appendix variants (a learned step
               size, the learned objective of App. I, the similarity regulariser of App. B; ``OTConfig``)
               run the MESH steps of ``slots.mesh_variants`` instead of the fused kernel.

Costs (``COSTS``): "l2" is the Euclidean distance ||k - q|| (not squared; this is what the official code
computes with ``torch.cdist``, although Sec. 3 writes "e.g. L2 norm^2"); "l2sq" is its square (with
exact Sinkhorn, its |k|^2 and |q|^2 terms are absorbed by the potentials, leaving -2 k.q: Sander et al.,
2022); "cosine" is 1 - cos(k, q); "dot" is -k.q / sqrt(dim).

Cost scale (``OTConfig.cost_scale``, the official code's ``scale_cost``): every variant's cost is
multiplied by it before the plan is computed (for "sa" the logits are -cost_scale * C / tau).

Marginals (App. A; OT variants only). The paper writes the cost as (m x n) with a on the slots; here rows
are inputs, so a (B, n) is on the inputs and b (B, m) on the slots: a = s * softmax_i(h_a(LN(x_i))),
b = s * softmax_j(h_b(LN(z_j))) with h_a, h_b two-layer MLPs to a scalar, so a.sum() == b.sum() == s, the
marginal mass: ``OTConfig.marginal_scale`` (the official ``scale_marginals``), m = n_slots by default.
With ``learned_marginals=False`` they are uniform: a_i = s / n, b_j = s / m.

Normalizing OT plans over the inputs (``OTConfig.normalize_plan``, default True). The plan's column j sums
to b_j (2 b_j for "sa-emd"); by default every column is divided by its sum (after adding eps, as SA does)
so that each slot's update is a weighted mean of the values, as in SA. The official code instead uses the
raw plan, so a slot's update is scaled by its marginal b_j; ``normalize_plan=False`` reproduces that.

Implicit differentiation (Chang et al., 2022; App. F.1): with ``implicit_grad=True`` the first
n_iters - 1 iterations run without gradient, and the last one starts from the detached slots. Gradients
therefore reach the projections, GRU, MLP and marginal networks only through the last iteration, and the
slot initialization (learned mean, std or vector, or slots passed in) gets none.

Implementation: ``SlotAttention(fast=True)`` (the default) computes each iteration in the layout that is fast
for small sets (``SlotAttention._attend``: costs and plans as (B, m, n), projections applied to the m slots
instead of the n inputs); ``fast=False`` runs the formulas as written above (``_attend_plain``), the reference
that the tests compare it with. Both give the same values and gradients up to rounding.

Known limits: inputs must be float32 or float64 (the OT kernels' dtypes); "sa-emd" solves exact OT on
the CPU and is slow, as in the paper, and needs the extension built with LEMON (``check_available``).
"""
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import emd_cpp
from kernels import BACKENDS, check_int, emd_attention, sinkhorn
from kernels.mesh import mesh

from .mesh_variants import MeshVariant

__all__ = ["OTConfig", "SlotAttentionConfig", "SlotAttention", "COSTS", "ATTENTION_VARIANTS", "SLOT_INITS",
           "MESH_OBJECTIVES", "MARGINAL_INPUTS", "check_available"]

MESH_OBJECTIVES = ("entropy", "learned")
MARGINAL_INPUTS = ("normalized", "raw")


def _check_positive_float(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass
class OTConfig:
    """Options of the optimal-transport variants ("sa-sh", "sa-emd", "sa-mesh"); ignored by "sa".

    Attributes:
        n_sh_iters: Sinkhorn iterations (row then column rescaling) per plan.
        cost_scale: factor on the cost of every variant, "sa" included (the official ``scale_cost``).
        marginal_scale: total mass of each marginal (the official ``scale_marginals``); None is n_slots.
        tau: entropic temperature of Sinkhorn, exp(-C / tau). "sa" also divides its logits by tau.
        mesh_iters: MESH gradient steps on the cost (T in Eq. 11); 0 leaves only the noise.
        mesh_lr: MESH step size (lambda in Eq. 11) on the per-element normalized gradient.
        noise_scale: std of the noise added to the cost before MESH (1e-3: variance 1e-6 as in Sec. 4).
        reuse_uv: warm-start each MESH step's Sinkhorn from the previous step's potentials (App. D).
        straight_through: pass gradients from MESH's output cost to its input cost unchanged (Sec. 4.1).
        learned_marginals: learned marginals of App. A; False gives uniform ones of equal mass.
        marginal_input: what the input-marginal network h_a sees: "normalized" (LN(x), the keys' and values'
            input, as the official code) or "raw" (x itself). App. A writes h_a(x_i) without saying which.
        normalize_plan: divide each column of the plan by its sum before the weighted mean of values
            (True, as SA does) or use the raw plan (False, as the official code does).
        warm_start_grad: MESH's potentials carry the official code's gradient back through every MESH step
            (``kernels.mesh``'s ``warm_start_grad``); False treats them as constants.
        backend: OT backend (``kernels.sinkhorn``'s ``backend``): None picks Triton on CUDA and the
            fused C++ loops on CPU, or one of ``kernels.BACKENDS`` ("torch" the plain PyTorch path).
        learn_mesh_lr: "sa-mesh" only: the step size is a learned parameter starting at ``mesh_lr`` (the
            official code's ``learn_mesh_lr``). With ``straight_through`` it gets the first-order gradient
            -sum_t g_t / ||g_t|| (each step's gradient a constant, as in the official code).
        mesh_objective: "sa-mesh" only: "entropy" (Eq. 9) or "learned" (App. I: a scalar 2-layer MLP with
            32 hidden units applied to every entry of the plan and summed); "learned" needs
            ``straight_through=False``, since the MLP acts on MESH's output only through its gradient steps.
        similarity_alpha: "sa-mesh" only: alpha of App. B, Eq. 13, the weight of ||P' S - sinkhorn(C)||^2
            with S the column softmax of a learned network g on pairs of slots; 0 (default) turns it off.
            > 0 needs ``straight_through=False`` (g is learned through the gradient steps).

    The last three turn on ``slots.mesh_variants`` (plain autograd MESH steps, no fused kernel; the
    ``backend`` then applies to the final Sinkhorn only).
    """

    n_sh_iters: int = 5
    cost_scale: float = 1.0
    marginal_scale: float | None = None
    tau: float = 1.0
    mesh_iters: int = 4
    mesh_lr: float = 8.0
    noise_scale: float = 1e-3
    reuse_uv: bool = True
    straight_through: bool = True
    learned_marginals: bool = True
    marginal_input: str = "normalized"
    normalize_plan: bool = True
    warm_start_grad: bool = False
    backend: str | None = None
    learn_mesh_lr: bool = False
    mesh_objective: str = "entropy"
    similarity_alpha: float = 0.0

    def __post_init__(self):
        check_int(self.n_sh_iters, "OTConfig.n_sh_iters", 1)
        check_int(self.mesh_iters, "OTConfig.mesh_iters", 0)
        _check_positive_float("OTConfig.tau", self.tau)
        _check_positive_float("OTConfig.cost_scale", self.cost_scale)
        if self.marginal_scale is not None:
            _check_positive_float("OTConfig.marginal_scale", self.marginal_scale)
        _check_positive_float("OTConfig.mesh_lr", self.mesh_lr, allow_zero=True)
        _check_positive_float("OTConfig.noise_scale", self.noise_scale, allow_zero=True)
        _check_positive_float("OTConfig.similarity_alpha", self.similarity_alpha, allow_zero=True)
        for name in ("reuse_uv", "straight_through", "learned_marginals", "normalize_plan", "warm_start_grad",
                     "learn_mesh_lr"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"OTConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"OTConfig.backend must be None or one of {', '.join(map(repr, BACKENDS))}, "
                             f"got {self.backend!r}")
        if self.marginal_input not in MARGINAL_INPUTS:
            raise ValueError(f"OTConfig.marginal_input must be one of {MARGINAL_INPUTS}, got {self.marginal_input!r}")
        if self.mesh_objective not in MESH_OBJECTIVES:
            raise ValueError(f"OTConfig.mesh_objective must be one of {MESH_OBJECTIVES}, got {self.mesh_objective!r}")
        if self.learn_mesh_lr and self.mesh_lr == 0:
            raise ValueError("OTConfig.learn_mesh_lr needs mesh_lr > 0 (the learned step size starts there, "
                             "in log space)")
        if self.straight_through and (self.mesh_objective == "learned" or self.similarity_alpha > 0):
            raise ValueError("OTConfig.mesh_objective='learned' and similarity_alpha > 0 need straight_through=False: "
                             "their networks act on MESH's output only through its gradient steps")
        if self.warm_start_grad and self.mesh_variant():
            raise ValueError("OTConfig.warm_start_grad applies to the fused MESH; the appendix variants "
                             "(learn_mesh_lr, mesh_objective, similarity_alpha) run their own autograd steps")

    def mesh_variant(self) -> bool:
        """Whether an appendix variant of MESH (``slots.mesh_variants``) is on."""
        return self.learn_mesh_lr or self.mesh_objective != "entropy" or self.similarity_alpha > 0


@dataclass
class SlotAttentionConfig:
    """Options of :class:`SlotAttention`.

    Attributes:
        n_slots: number of slots m.
        dim: slot (and query/key/value) dimension.
        input_dim: feature dimension of the inputs.
        variant: "sa", "sa-sh", "sa-emd" or "sa-mesh" (keys of ``ATTENTION_VARIANTS``).
        cost: "l2", "l2sq", "cosine" or "dot" (keys of ``COSTS``).
        n_iters: slot-attention iterations, >= 1.
        mlp_hidden: hidden width of the residual slot MLP and of the marginal MLPs.
        init: "learned" (Gaussian with learned mean and log-std, sampled per call), "fixed" (N(0, I),
            nothing learned), "equal" (every slot the same learned vector; Sec. 4.1) or "per_slot" (one
            learned vector per slot, no sampling: the learned initialization of App. H and Locatello et
            al.'s App. B). Ignored when slots are passed to ``forward``.
        init_scale: factor on the initial slots drawn by ``init`` (> 0; 1 leaves them as drawn). The paper
            does not state the scale of the initial slots; where the slots themselves are compared with
            small targets (random objects at small sigma), a small scale skips the phase in which training
            only shrinks the slots. Ignored when slots are passed to ``forward``.
        implicit_grad: first-order implicit differentiation of Chang et al. (2022).
        eps: added to the plan before normalizing over inputs (1e-8 as Locatello et al.).
        ot: :class:`OTConfig` (a dict is converted, so a config read back from JSON works).
    """

    n_slots: int
    dim: int
    input_dim: int
    variant: str = "sa-mesh"
    cost: str = "l2"
    n_iters: int = 3
    mlp_hidden: int = 128
    init: str = "learned"
    init_scale: float = 1.0
    implicit_grad: bool = False
    eps: float = 1e-8
    ot: OTConfig = field(default_factory=OTConfig)

    def __post_init__(self):
        for name in ("n_slots", "dim", "input_dim", "n_iters", "mlp_hidden"):
            check_int(getattr(self, name), name, 1)
        for name, table in (("variant", ATTENTION_VARIANTS), ("cost", COSTS), ("init", SLOT_INITS)):
            if getattr(self, name) not in table:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {sorted(table)}")
        if not isinstance(self.implicit_grad, bool):
            raise ValueError(f"implicit_grad must be a bool, got {self.implicit_grad!r}")
        _check_positive_float("eps", self.eps, allow_zero=True)
        _check_positive_float("init_scale", self.init_scale)
        if isinstance(self.ot, dict):
            self.ot = OTConfig(**self.ot)
        if not isinstance(self.ot, OTConfig):
            raise ValueError(f"ot must be an OTConfig or a dict of its fields, got {type(self.ot).__name__}")
        if self.ot.mesh_variant() and self.variant != "sa-mesh":
            raise ValueError(f"OTConfig.learn_mesh_lr, mesh_objective and similarity_alpha are options of 'sa-mesh', "
                             f"not of {self.variant!r}")

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-serializable); ``SlotAttentionConfig(**d)`` restores it."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Costs: k (B, n, d) keys of the inputs, q (B, m, d) queries of the slots -> C (B, n, m).


def _l2_sq(k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    kk, qq = (k * k).sum(2), (q * q).sum(2)  # (B, n), (B, m)
    sq = torch.baddbmm(kk[:, :, None] + qq[:, None, :], k, q.transpose(1, 2), alpha=-2)
    return sq.clamp_min(0)  # (B, n, m); cancellation can make it slightly negative


class _L2Distance(torch.autograd.Function):
    """||k_i - q_j|| (B, n, m) in a few fused operations, with a hand-written backward.

    C = sqrt(max(|k|^2 + |q|^2 - 2 k.q, 1e-12)); the floor keeps the gradient finite where a key and a
    query coincide (it is zero there, as the clamp's). With w = g / C (0 where floored):
    dk_i = k_i sum_j w_ij - sum_j w_ij q_j and dq_j = q_j sum_i w_ij - sum_i w_ij k_i.
    """

    @staticmethod
    def forward(ctx, k, q):
        C = _l2_sq(k, q).clamp_min_(1e-12).sqrt_()
        ctx.save_for_backward(k, q, C)
        return C

    @staticmethod
    def backward(ctx, g):
        k, q, C = ctx.saved_tensors
        w = torch.where(C > 1e-6, g / C, 0.0)  # (B, n, m)
        gk = gq = None
        if ctx.needs_input_grad[0]:
            # (B, n, dim): the product into a fresh tensor, then the row-scaled keys added in place (a
            # baddbmm onto k * rowsum(w) copies that (B, n, dim) tensor first, and is several times slower)
            gk = torch.bmm(w, q.neg()).addcmul_(k, w.sum(2, keepdim=True))
        if ctx.needs_input_grad[1]:
            gq = torch.baddbmm(q * w.sum(1)[:, :, None], w.transpose(1, 2), k, alpha=-1)
        return gk, gq


def _l2(k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return _L2Distance.apply(k, q)


def _cosine(k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return 1 - torch.bmm(F.normalize(k, dim=2), F.normalize(q, dim=2).transpose(1, 2))


def _neg_dot(k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return -torch.bmm(k, q.transpose(1, 2)) / math.sqrt(k.shape[2])


COSTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l2": _l2,
    "l2sq": _l2_sq,
    "cosine": _cosine,
    "dot": _neg_dot,
}


# ---------------------------------------------------------------------------------------------------
# Attention plans: C (B, n, m), marginals a (B, n), b (B, m) (None for "sa"), the MESH noise (B, n, m)
# (None unless "sa-mesh") and the OTConfig -> plan (B, n, m), rows are inputs, columns are slots.


def _plan_sa(C, a, b, noise, ot: OTConfig) -> torch.Tensor:
    return torch.softmax(-C / ot.tau, dim=2)  # each input distributes mass 1 over the slots


# The OT plans run the kernels' autograd functions (C++ loops, Triton launches), which torch.compile cannot
# trace: under ``slots.compile_model`` they run eagerly between compiled graphs (``torch.compiler.disable``).


@torch.compiler.disable
def _plan_sinkhorn(C, a, b, noise, ot: OTConfig) -> torch.Tensor:
    P, _, _ = sinkhorn(C, a, b, n_iters=ot.n_sh_iters, tau=ot.tau, backend=ot.backend)
    return P


@torch.compiler.disable
def _plan_emd(C, a, b, noise, ot: OTConfig) -> torch.Tensor:
    return emd_attention(C, a, b, n_sh_iters=ot.n_sh_iters, tau=ot.tau, backend=ot.backend)


@torch.compiler.disable
def _plan_mesh(C, a, b, noise, ot: OTConfig) -> torch.Tensor:
    C2, u, v = mesh(C, a, b, n_mesh_iters=ot.mesh_iters, n_sh_iters=ot.n_sh_iters, lr=ot.mesh_lr, noise=noise,
                    noise_scale=ot.noise_scale, reuse_uv=ot.reuse_uv, tau=ot.tau,
                    straight_through=ot.straight_through, warm_start_grad=ot.warm_start_grad, backend=ot.backend)
    P, _, _ = sinkhorn(C2, a, b, n_iters=ot.n_sh_iters, tau=ot.tau, u=u, v=v, backend=ot.backend)
    return P


class _Variant(NamedTuple):
    plan: Callable[..., torch.Tensor]
    is_ot: bool  # uses marginals (and OTConfig.normalize_plan)
    needs_noise: bool
    needs_emd: bool = False  # the exact EMD solver, which only an extension built with LEMON has


ATTENTION_VARIANTS: dict[str, _Variant] = {
    "sa": _Variant(_plan_sa, is_ot=False, needs_noise=False),
    "sa-sh": _Variant(_plan_sinkhorn, is_ot=True, needs_noise=False),
    "sa-emd": _Variant(_plan_emd, is_ot=True, needs_noise=False, needs_emd=True),
    "sa-mesh": _Variant(_plan_mesh, is_ot=True, needs_noise=True),
}


def check_available(variant: str) -> None:
    """Raise ``emd_cpp.EMDUnavailableError`` (how to install LEMON and rebuild) if ``variant`` needs exact EMD
    and the extension was built without it; names that are not attention variants pass."""
    if variant in ATTENTION_VARIANTS and ATTENTION_VARIANTS[variant].needs_emd:
        emd_cpp.require_emd()


# ---------------------------------------------------------------------------------------------------
# Slot initializations: (module, B, device, dtype) -> slots (B, m, dim).


def _init_learned(module: "SlotAttention", B: int, device, dtype) -> torch.Tensor:
    m, d = module.config.n_slots, module.config.dim
    noise = torch.randn(B, m, d, device=device, dtype=dtype)
    return module.slots_mu + module.slots_log_sigma.exp() * noise


def _init_fixed(module: "SlotAttention", B: int, device, dtype) -> torch.Tensor:
    return torch.randn(B, module.config.n_slots, module.config.dim, device=device, dtype=dtype)


def _init_equal(module: "SlotAttention", B: int, device, dtype) -> torch.Tensor:
    return module.slots_mu.expand(B, module.config.n_slots, module.config.dim)


def _init_per_slot(module: "SlotAttention", B: int, device, dtype) -> torch.Tensor:
    return module.slots_init.expand(B, module.config.n_slots, module.config.dim)


SLOT_INITS: dict[str, Callable[..., torch.Tensor]] = {
    "learned": _init_learned,
    "fixed": _init_fixed,
    "equal": _init_equal,
    "per_slot": _init_per_slot,
}


class _SetScalarMLP(torch.autograd.Function):
    """relu(x W1^T + b1) . w2 for every element of a set, x (B, n, d) -> (B, n), without keeping the
    (B, n, hidden) layer: the input-marginal network h_a of App. A, with a hand-written backward.

    For image inputs (n = 4,096 per image) plain autograd writes, reads and keeps that (B, n, 128) layer
    several times per step, which costs more than the attention itself. Here rows go in blocks of ``ROWS``
    per torch thread (a block's hidden layer stays in cache; with several threads each parallel operation
    gets that much work); the backward recomputes each block's layer h and, with gh = relu'(h) * w2 * g,
    returns gx = gh W1, gW1 = gh^T x, gb1 = sum_rows gh, gw2 = relu(h)^T g. Where the whole hidden layer has
    at most ``KEEP`` entries (4 MiB in float32: the 64 x 105 inputs of Table 1 need 0.86 M), the forward keeps
    it for the backward instead of recomputing it, which saves one of the backward's two or three products.
    Reference: the modules of ``_scalar_mlp`` applied one by one (the tests compare values and gradients).
    """

    ROWS = 2048
    KEEP = 2**20

    @staticmethod
    def _blocks(n: int) -> range:
        return range(0, n, _SetScalarMLP.ROWS * torch.get_num_threads())

    @staticmethod
    def forward(ctx, x, w1, b1, w2):
        xf = x.reshape(-1, x.shape[-1])  # (B n, d)
        out = x.new_empty(xf.shape[0])
        keep = xf.shape[0] * w1.shape[0] <= _SetScalarMLP.KEEP
        act = x.new_empty(xf.shape[0], w1.shape[0]) if keep else None  # (B n, hidden): relu(h), kept
        blocks = _SetScalarMLP._blocks(xf.shape[0])
        for s in blocks:
            rows = slice(s, s + blocks.step)
            h = torch.addmm(b1, xf[rows], w1.t(), out=None if act is None else act[rows]).relu_()  # (rows, hidden)
            torch.mv(h, w2, out=out[rows])
        ctx.save_for_backward(x, w1, b1, w2, act)
        return out.view(x.shape[:-1])

    @staticmethod
    def backward(ctx, g):
        x, w1, b1, w2, kept = ctx.saved_tensors
        xf, gf = x.reshape(-1, x.shape[-1]), g.reshape(-1)
        gx = torch.empty_like(xf) if ctx.needs_input_grad[0] else None
        gw1, gb1, gw2 = torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2)
        blocks = _SetScalarMLP._blocks(xf.shape[0])
        for s in blocks:
            rows = slice(s, s + blocks.step)
            xs, gs = xf[rows], gf[rows]
            act = torch.addmm(b1, xs, w1.t()).relu_() if kept is None else kept[rows]  # (rows, hidden)
            gw2.addmv_(act.t(), gs)
            gh = torch.ops.aten.threshold_backward(torch.outer(gs, w2), act, 0)  # relu'(h) * w2 * g
            gw1.addmm_(gh.t(), xs)
            gb1.add_(gh.sum(0))
            if gx is not None:
                torch.mm(gh, w1, out=gx[rows])
        return (None if gx is None else gx.view(x.shape)), gw1, gb1, gw2


# the blocked loops and out= products of the hand-written autograd function run eagerly under torch.compile
_set_scalar_mlp = torch.compiler.disable(_SetScalarMLP.apply)


class _Inputs(NamedTuple):
    """The input side of :meth:`SlotAttention._attend`, computed once per forward call.

    xhat: (B, n, input_dim) LN(x) without its affine. k, v: (B, n, dim) keys and values, or None where the
    projection is applied on the slot side instead. key, value: the folded (weight (dim, input_dim), bias
    (dim,)) of to_k and to_v (``SlotAttention._folded``). feats_eps: (B, 1, .) eps times the sum over the
    inputs of what the plan averages (v, or xhat when v is None). logits: (B, n) the input-marginal
    network's outputs, or None.
    """

    xhat: torch.Tensor
    k: torch.Tensor | None
    v: torch.Tensor | None
    key: tuple[torch.Tensor, torch.Tensor]
    value: tuple[torch.Tensor, torch.Tensor]
    feats_eps: torch.Tensor
    logits: torch.Tensor | None


def _scalar_mlp(d_in: int, hidden: int) -> nn.Sequential:
    """h_a / h_b of App. A: R^d_in -> R, shared over the set elements."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 1, bias=False))


class SlotAttention(nn.Module):
    """Slot attention (Locatello et al., 2020) with SA / SA-SH / SA-EMD / SA-MESH cross-attention.

    Usage::

        sa = SlotAttention(SlotAttentionConfig(n_slots=5, dim=32, input_dim=32, variant="sa-mesh"))
        slots, attn = sa(x)                  # x (B, n, input_dim)
        slots, attn = sa(x, slots=previous)  # video: start from the previous frame's slots

    See the module docstring for the maths and the options. ``fast`` (default True) picks the implementation
    of each iteration's attention: :meth:`_attend`, laid out for speed, or False :meth:`_attend_plain`, the
    formulas as written (the reference of the tests and the "before" of the benchmarks); both give the same
    values and gradients up to rounding. It is an attribute, so ``sa.fast = False`` switches a built module.
    """

    def __init__(self, config: SlotAttentionConfig, fast: bool = True):
        super().__init__()
        if not isinstance(config, SlotAttentionConfig):
            raise ValueError(f"config must be a SlotAttentionConfig, got {type(config).__name__}")
        check_available(config.variant)
        self.config = config
        self.fast = fast
        self._variant = ATTENTION_VARIANTS[config.variant]
        self._cost = COSTS[config.cost]
        self._init = SLOT_INITS[config.init]
        d, d_in, hidden = config.dim, config.input_dim, config.mlp_hidden

        self.norm_inputs = nn.LayerNorm(d_in)
        self.norm_slots = nn.LayerNorm(d)
        self.norm_mlp = nn.LayerNorm(d)
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_k = nn.Linear(d_in, d, bias=False)
        self.to_v = nn.Linear(d_in, d, bias=False)
        self.gru = nn.GRUCell(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))

        if self._variant.is_ot and config.ot.learned_marginals:
            self.input_marginal = _scalar_mlp(d_in, hidden)
            self.slot_marginal = _scalar_mlp(d, hidden)
        self.mesh_variant = MeshVariant(config.ot, d, hidden) if config.ot.mesh_variant() else None
        if config.init in ("learned", "equal"):
            self.slots_mu = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, 1, d)))
        if config.init == "learned":
            self.slots_log_sigma = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, 1, d)))
        if config.init == "per_slot":
            self.slots_init = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, config.n_slots, d)))

    @property
    def is_ot(self) -> bool:
        """Whether the variant computes attention as optimal transport (SA-SH, SA-EMD, SA-MESH), and so has
        the marginals of :meth:`marginals`."""
        return self._variant.is_ot

    # -----------------------------------------------------------------------------------------------
    def _marginal_mass(self) -> float:
        """The total mass s of each marginal: OTConfig.marginal_scale, or n_slots."""
        scale = self.config.ot.marginal_scale
        return float(self.config.n_slots) if scale is None else float(scale)

    def _input_marginal(self, x: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        """a (B, n), summing to the marginal mass, from the marginal network's outputs h_a (B, n), or uniform
        when ``logits`` is None. x (B, n, .) gives shape, dtype and device."""
        mass = self._marginal_mass()
        if logits is None:
            return x.new_full(x.shape[:2], mass / x.shape[1])
        return mass * torch.softmax(logits, dim=1)

    def _slot_marginal(self, zn: torch.Tensor) -> torch.Tensor:
        """zn (B, m, dim) normalized slots -> b (B, m), summing to the marginal mass."""
        mass = self._marginal_mass()
        if self.config.ot.learned_marginals:
            return mass * torch.softmax(self.slot_marginal(zn).squeeze(2), dim=1)
        return zn.new_full(zn.shape[:2], mass / zn.shape[1])

    def marginals(self, x: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The OT marginals (App. A) for inputs and slots.

        Args:
            x: (B, n, input_dim) inputs. slots: (B, n_slots, dim) slots.

        Returns:
            a (B, n) on the inputs and b (B, n_slots) on the slots, each summing to the marginal mass
            (``OTConfig.marginal_scale``, n_slots by default).

        Raises:
            ValueError for the "sa" variant (it has no marginals) or bad shapes.
        """
        if not self._variant.is_ot:
            raise ValueError(f"variant {self.config.variant!r} has no OT marginals")
        self._check_inputs(x, slots)
        xn = self.norm_inputs(x)
        logits = None
        if self.config.ot.learned_marginals:
            seen = x if self.config.ot.marginal_input == "raw" else xn
            logits = self.input_marginal(seen).squeeze(2)  # (B, n)
        return self._input_marginal(xn, logits), self._slot_marginal(self.norm_slots(slots))

    def _folded(self, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight (out, input_dim) and bias (out,) of ``linear`` applied to LN(x), as a map of xhat.

        With LN(x) = gamma * xhat + beta, a linear map of LN(x) is W LN(x) + c = xhat (W gamma)^T +
        (W beta + c): the LayerNorm's affine is folded into the (small) weights.
        """
        ln = self.norm_inputs
        c = linear.weight @ ln.bias
        return linear.weight * ln.weight, c if linear.bias is None else c + linear.bias

    def _normalized_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """xhat (B, n, input_dim), LN(x) without its affine, and, with learned marginals, the marginal
        network's outputs h_a (B, n) (its first layer folded as :meth:`_folded` says)."""
        ln = self.norm_inputs
        # (B, n, input_dim), no affine: a unit weight and zero bias give the same bits, and torch's CPU kernel
        # is faster with an affine than without one (300 against 480 us at 64 x 105 x 32, one thread)
        xhat = F.layer_norm(x, ln.normalized_shape, x.new_ones(ln.normalized_shape), x.new_zeros(ln.normalized_shape),
                            ln.eps)
        logits = None
        if self._variant.is_ot and self.config.ot.learned_marginals:
            first, last = self.input_marginal[0], self.input_marginal[2]
            if self.config.ot.marginal_input == "raw":
                logits = _set_scalar_mlp(x, first.weight, first.bias, last.weight[0])  # (B, n)
            else:
                logits = _set_scalar_mlp(xhat, *self._folded(first), last.weight[0])  # (B, n)
        return xhat, logits

    def _input_projections(self, x: torch.Tensor):
        """k, v (B, n, dim) and, with learned marginals, the marginal network's outputs h_a (B, n).

        The LayerNorm's affine is folded into the weights (:meth:`_folded`). The values are those of applying
        the modules one by one, but when x needs no gradient (raw inputs, as in the random-objects task) no
        gradient of size (B, n, input_dim) is formed and pushed back through the LayerNorm: the gradients of
        W, gamma and beta come from xhat^T times each output's gradient.
        """
        xhat, logits = self._normalized_inputs(x)
        return F.linear(xhat, *self._folded(self.to_k)), F.linear(xhat, *self._folded(self.to_v)), logits

    def _fast_inputs(self, x: torch.Tensor) -> "_Inputs":
        """What the iterations of the fast path read of the inputs (see :class:`_Inputs`)."""
        cfg = self.config
        xhat, logits = self._normalized_inputs(x)
        key, value = self._folded(self.to_k), self._folded(self.to_v)
        slot_side = cfg.input_dim <= cfg.dim  # a product with xhat costs no more than one with k or v
        k = None if slot_side and cfg.cost == "dot" and not self._variant.is_ot else F.linear(xhat, *key)
        v = None if slot_side else F.linear(xhat, *value)
        feats = xhat if v is None else v  # (B, n, .): what the plan averages
        return _Inputs(xhat, k, v, key, value, cfg.eps * feats.sum(1, keepdim=True), logits)

    def _check_inputs(self, x, slots) -> None:
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[2] != cfg.input_dim:
            raise ValueError(f"x must have shape (B, n, input_dim={cfg.input_dim}), got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("x must have at least one input element (n >= 1)")
        if x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"x must be float32 or float64, got {x.dtype}")
        if slots is not None:
            if not isinstance(slots, torch.Tensor):
                raise ValueError(f"slots must be a torch.Tensor or None, got {type(slots).__name__}")
            want = (x.shape[0], cfg.n_slots, cfg.dim)
            if tuple(slots.shape) != want:
                raise ValueError(f"slots must have shape (B, n_slots, dim) = {want}, got {tuple(slots.shape)}")
            if slots.dtype != x.dtype or slots.device != x.device:
                raise ValueError(f"slots ({slots.dtype}, {slots.device}) must match x ({x.dtype}, {x.device})")

    def _plan(self, C, a, zn, noise):
        """The variant's plan (B, n, m) from the costs C (B, n, m) (before ``cost_scale``), the input marginal
        a (B, n) or None, the normalized slots zn (B, m, dim) (the slot marginal's input) and the noise."""
        cfg = self.config
        if cfg.ot.cost_scale != 1:
            C = C * cfg.ot.cost_scale
        b = self._slot_marginal(zn) if self._variant.is_ot else None  # (B, m)
        if self.mesh_variant is not None:  # App. B / App. I / learned step size
            return self.mesh_variant(C, a, b, noise, zn)  # (B, n, m)
        return self._variant.plan(C, a, b, noise, cfg.ot)  # (B, n, m)

    def _attend_plain(self, zn, q, inp, a, noise):
        """The slots' updates (B, m, dim) and the plan (B, n, m), written as the module docstring reads (rows
        are inputs): the reference of :meth:`_attend` (``fast=False``), with ``inp`` the pair (k, v)."""
        cfg = self.config
        k, v = inp
        plan = self._plan(self._cost(k, q), a, zn, noise)  # (B, n, m)
        if self._variant.is_ot and not cfg.ot.normalize_plan:
            weights = plan
        else:
            weights = plan + cfg.eps
            weights = weights / weights.sum(1, keepdim=True)  # (B, n, m): every column sums to 1
        return torch.bmm(weights.transpose(1, 2), v), plan  # (B, m, dim)

    def _attend(self, zn, q, inp: "_Inputs", a, noise):
        """:meth:`_attend_plain` in fewer and better-shaped operations (the same values up to rounding).

        The slot-attention tensors are small (64 x 105 x 5 in Table 1), so the time goes to per-operation
        overhead and to the layout of the operations rather than to arithmetic:
        * costs and SA's plan are computed transposed, (B, m, n), with each slot's row over the inputs
          contiguous: the product q k^T has 105 output columns instead of 5 (a fast matrix-product shape),
          and SA's softmax over the slots becomes a softmax over dim 1, which runs vectorized over the
          inputs (over a last dimension of size 5 it is several times slower). Every cost is symmetric in
          its two arguments, so cost(q, k) is the transpose of cost(k, q); the OT kernels take the
          (B, n, m) layout and get the transposed view (made contiguous once, inside the kernel call).
        * projections move to the slot side (m rows instead of n) where ``inp`` has no k or v: with
          k = xhat W_k'^T + c_k (:meth:`_folded`), SA's logits q.k_i = (W_k'^T q).xhat_i + q.c_k, and the
          weighted mean of the values is the weighted mean of xhat mapped by (W_v', c_v), since the weights
          of each slot sum to 1 (without normalization, the bias is weighted by the column sum instead).
          SA's scale (-cost_scale / tau on the scaled dot product) is folded into q (B, m, dim).
        * the normalization over the inputs is applied to the (B, m, .) result rather than to the plan:
          sum_i (P_ij + eps) f_i / sum_i (P_ij + eps) = (P^T f + eps sum_i f_i)_j / (sum_i P_ij + n eps)
          for the averaged features f (v or xhat), with ``inp.feats_eps`` = eps sum_i f_i (B, 1, .).

        Args:
            zn: (B, m, dim) normalized slots. q: (B, m, dim) queries. inp: :class:`_Inputs`.
            a: (B, n) or None. noise: (B, n, m) or None.

        Returns:
            updates (B, m, dim) and the plan (B, n, m) (a transposed view).
        """
        cfg = self.config
        if self._variant.is_ot:
            C_t = self._cost(q, inp.k)  # (B, m, n): row j holds slot j's costs to every input
            plan_t = self._plan(C_t.transpose(1, 2), a, zn, noise).transpose(1, 2)  # (B, m, n) view
        else:
            scale = cfg.ot.cost_scale / cfg.ot.tau
            if inp.k is None:  # the scaled dot product, keys folded into the queries
                q = q * (scale / math.sqrt(q.shape[2]))  # (B, m, dim)
                w, c = inp.key
                logits_t = torch.baddbmm((q @ c)[:, :, None], q @ w, inp.xhat.transpose(1, 2))  # (B, m, n)
            elif cfg.cost == "dot":
                logits_t = torch.bmm(q * (scale / math.sqrt(q.shape[2])), inp.k.transpose(1, 2))  # (B, m, n)
            else:
                logits_t = self._cost(q, inp.k) * -scale  # (B, m, n)
            plan_t = torch.softmax(logits_t, dim=1)  # (B, m, n): every input distributes mass 1 over the slots
        feats = inp.xhat if inp.v is None else inp.v  # (B, n, f)
        if self._variant.is_ot and not cfg.ot.normalize_plan:
            mean, mass = torch.bmm(plan_t, feats), plan_t.sum(2, keepdim=True)  # (B, m, f), (B, m, 1)
            if inp.v is not None:
                return mean, plan_t.transpose(1, 2)
            w, c = inp.value
            return torch.addcmul(F.linear(mean, w), mass, c), plan_t.transpose(1, 2)
        mass = plan_t.sum(2, keepdim=True) + feats.shape[1] * cfg.eps  # (B, m, 1)
        mean = torch.baddbmm(inp.feats_eps, plan_t, feats) / mass  # (B, m, f): weighted mean over the inputs
        return (mean if inp.v is not None else F.linear(mean, *inp.value)), plan_t.transpose(1, 2)

    def _iterate(self, slots, inp, a, noise):
        """One slot-attention iteration.

        Args:
            slots: (B, m, dim). inp: :class:`_Inputs` (fast path) or (k, v), each (B, n, dim) (plain path).
            a: (B, n) or None. noise: (B, n, m) or None.

        Returns:
            new slots (B, m, dim) and the plan (B, n, m).
        """
        B, m, d = slots.shape
        zn = self.norm_slots(slots)
        q = self.to_q(zn)  # (B, m, dim)
        attend = self._attend if self.fast else self._attend_plain
        updates, plan = attend(zn, q, inp, a, noise)  # (B, m, dim), (B, n, m)
        slots = self.gru(updates.reshape(B * m, d), slots.reshape(B * m, d)).reshape(B, m, d)
        slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, plan

    def forward(self, x: torch.Tensor, slots: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``n_iters`` slot-attention iterations.

        Args:
            x: (B, n, input_dim) inputs, float32 or float64.
            slots: optional (B, n_slots, dim) initial slots (overrides ``config.init``), e.g. the previous
                video frame's slots.

        Returns:
            slots (B, n_slots, dim) after the last iteration; attn (B, n, n_slots), the attention plan of
            the last iteration before normalization over inputs (rows are inputs, columns are slots):
            for "sa" each row sums to 1, for the OT variants rows sum to a and columns to b (2a and 2b for
            "sa-emd").

        Under ``torch.autocast`` slot attention still runs in x's dtype (autocast is switched off inside):
        the OT kernels take float32 / float64 only.
        """
        self._check_inputs(x, slots)
        with torch.autocast(x.device.type, enabled=False):
            return self._run(x, slots)

    def _run(self, x: torch.Tensor, slots: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` after the input checks: x (B, n, input_dim), slots (B, n_slots, dim) or None."""
        cfg = self.config
        B, n, _ = x.shape
        if self.fast:
            inp = self._fast_inputs(x)
            logits = inp.logits
        else:
            k, v, logits = self._input_projections(x)  # (B, n, dim) each: to_k, to_v of LN(x); (B, n) or None
            inp = k, v
        a = self._input_marginal(x, logits) if self._variant.is_ot else None  # (B, n)
        noise = torch.randn(B, n, cfg.n_slots, device=x.device, dtype=x.dtype) if self._variant.needs_noise else None
        if slots is None:
            slots = self._init(self, B, x.device, x.dtype)  # (B, n_slots, dim)
            if cfg.init_scale != 1:
                slots = slots * cfg.init_scale

        if cfg.implicit_grad:
            with torch.no_grad():
                for _ in range(cfg.n_iters - 1):
                    slots, _ = self._iterate(slots, inp, a, noise)
            slots = slots.detach()
        else:
            for _ in range(cfg.n_iters - 1):
                slots, _ = self._iterate(slots, inp, a, noise)
        return self._iterate(slots, inp, a, noise)
