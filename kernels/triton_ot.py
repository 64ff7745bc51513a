"""Triton kernels for batched log-domain Sinkhorn and MESH (the CUDA backend ``backend="triton"``).

What it computes (conventions of ``kernels``; Eq. 9-12, App. A/D): C (B, n, m) costs; log_a (B, n), log_b
(B, m) log marginals (-inf at zero entries); S = -C / tau. Iteration k = 1..L:
    u_k = log_a - LSE_j(S_ij + v_{k-1,j}),   v_k = log_b - LSE_i(S_ij + u_{k,i}),
from the warm start v_0, plan P = exp(S + u_L + v_L). MESH: C'_0 = C + noise_scale * noise; T times
C'_{t+1} = C'_t - lr * g / max(||g||_F, tiny), g = dH(P(C'_t))/dC'_t through the L iterations.

Kernels (private ``@triton.jit``), one program per batch element (grid = (B,)):
    _sinkhorn_fwd_kernel   L sweeps over tiles of BLOCK_N rows: the row update of a tile is complete in
                           the tile (BLOCK_M >= m), the column log-sum-exp streams over the sweep.
    _sinkhorn_bwd_kernel   the reverse sweep (below): 1 terminal pass + L reverse passes over C for the
                           adjoint vectors, one pass that writes grad_C. Upstream: grad_P, or the entropy's
                           (computed from log P inside the passes), plus optional grad_u, grad_v (HAS_UV).
    _mesh_kernel           a whole MESH call in one launch: per step L forward passes, 1 + L backward passes,
                           a norm pass and an update pass (2L + 3 passes over C'); with TRACE, one more pass
                           records C'_t and the warm start for the warm-start backward.
MESH's warm-start backward chains these Sinkhorn kernels (``kernels.torch_ot.chain_mesh_bwd``).

Backward. With R^k_ij = exp(S_ij + v_{k-1,j} + u_k,i - log a_i), Q^k_ij = exp(S_ij + u_k,i + v_k,j - log b_j)
and Gbar = grad_P * P (or -P (log P + 1)):
    vbar_L = sum_i Gbar_ij (+ grad v_L);   ubar_k = [k = L] (sum_j Gbar_ij + grad u_L) - sum_j vbar_k,j Q^k_ij;
    vbar_{k-1} = -sum_i ubar_k,i R^k_ij;   grad_S = Gbar - sum_k (vbar_k,j Q^k_ij + ubar_k,i R^k_ij);
    grad_C = -grad_S / tau;  grad_log_a = sum_k ubar_k;  grad_log_b = sum_{k>=1} vbar_k;  grad_v0 = vbar_0.
Zero-mass rows / columns get R / Q = 0 directly (no -inf - (-inf)); their gradients are finite.

Launch: BLOCK_M = next power of two >= m; BLOCK_N so that a tile holds at most 4096 (float32) / 2048
(float64) elements; scalars tau, lr, tiny in a small tensor of the input dtype.

Known limits: tested under TRITON_INTERPRET=1 on CPU tensors and compiled for sm_90 in the tests; not run on
a GPU, so speed, block sizes and num_warps are untuned. One program per batch element walks n serially.
"""
import torch
import triton
import triton.language as tl

from .backends import Backend, MeshTrace
from .torch_ot import chain_mesh_bwd

__all__ = ["sinkhorn_fwd", "sinkhorn_bwd", "mesh_fwd", "mesh_bwd", "BACKEND"]


# ---------------------------------------------------------------------------------------------------------
# Building blocks (inlined into the kernels).  Index conventions: `pid` batch element, rows i in
# [r0, r0 + BLOCK_N), columns j in [0, BLOCK_M); buffers are contiguous:
#   C (B, n, m): pid*n*m + i*m + j     per-iteration vectors (K, B, n) / (K, B, m): k*B*n + pid*n + i.
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _load_s_tile(C_ptr, pid, r0, n, m, tau, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """S tile (BLOCK_N, BLOCK_M) = -C / tau, 0 outside the matrix; also the offsets, masks and the C tile."""
    rows = r0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    cols = tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    rmask = rows < n
    cmask = cols < m
    offs = pid.to(tl.int64) * n * m + rows[:, None] * m + cols[None, :]  # (BLOCK_N, BLOCK_M)
    mask = rmask[:, None] & cmask[None, :]
    c = tl.load(C_ptr + offs, mask=mask, other=0.0)
    return -c / tau, offs, mask, rows, rmask, c


@triton.jit
def _vec_m(ptr, k, pid, B, m, fill, BLOCK_M: tl.constexpr):
    """Row k of a (K, B, m) buffer for batch element pid, (BLOCK_M,), `fill` in the padding."""
    cols = tl.arange(0, BLOCK_M)
    return tl.load(ptr + (k * B + pid).to(tl.int64) * m + cols, mask=cols < m, other=fill)


@triton.jit
def _store_vec_m(ptr, k, pid, B, m, x, BLOCK_M: tl.constexpr):
    cols = tl.arange(0, BLOCK_M)
    tl.store(ptr + (k * B + pid).to(tl.int64) * m + cols, x, mask=cols < m)


@triton.jit
def _vec_n(ptr, k, pid, B, n, rows, rmask, fill):
    """Entries `rows` of row k of a (K, B, n) buffer for batch element pid, `fill` outside."""
    return tl.load(ptr + (k * B + pid).to(tl.int64) * n + rows, mask=rmask, other=fill)


@triton.jit
def _store_vec_n(ptr, k, pid, B, n, rows, rmask, x):
    tl.store(ptr + (k * B + pid).to(tl.int64) * n + rows, x, mask=rmask)


@triton.jit
def _row_lse(x):
    """Log-sum-exp over axis 1 of a tile whose padding is -inf; -inf for all -inf rows (no NaN)."""
    mx = tl.max(x, 1)
    mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
    return mx_safe + tl.log(tl.sum(tl.exp(x - mx_safe[:, None]), 1))


@triton.jit
def _col_lse_update(run_max, run_sum, x):
    """Streaming column LSE: fold a tile x (BLOCK_N, BLOCK_M) into (running max, sum of exp(x - max))."""
    new_max = tl.maximum(run_max, tl.max(x, 0))
    safe = tl.where(new_max == float("-inf"), 0.0, new_max)
    run_sum = run_sum * tl.exp(run_max - safe) + tl.sum(tl.exp(x - safe[None, :]), 0)
    return new_max, run_sum


@triton.jit
def _col_lse_final(run_max, run_sum):
    safe = tl.where(run_max == float("-inf"), 0.0, run_max)
    return safe + tl.log(run_sum)  # log(0) = -inf for an all -inf column


# ---------------------------------------------------------------------------------------------------------
# Forward: L fused sweeps.  Per sweep: reads n*m (C) + n (log a) elements, writes n (u_k); then m (v_k).
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _forward_sweeps(C_ptr, la_ptr, lb_ptr, us_ptr, vs_ptr, v, pid, B, n, m, n_iters, tau,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Run n_iters Sinkhorn iterations from v = v_0 (BLOCK_M,), -inf in the padding; record u_k, v_k."""
    cols = tl.arange(0, BLOCK_M)
    lb = tl.load(lb_ptr + pid.to(tl.int64) * m + cols, mask=cols < m, other=float("-inf"))  # (BLOCK_M,)
    _store_vec_m(vs_ptr, 0, pid, B, m, v, BLOCK_M)
    for k in range(n_iters):
        run_max = tl.full([BLOCK_M], float("-inf"), v.dtype)
        run_sum = tl.zeros([BLOCK_M], v.dtype)
        for r0 in range(0, n, BLOCK_N):
            s, offs, mask, rows, rmask, c = _load_s_tile(C_ptr, pid, r0, n, m, tau, BLOCK_N, BLOCK_M)
            la = tl.load(la_ptr + pid.to(tl.int64) * n + rows, mask=rmask, other=float("-inf"))  # (BLOCK_N,)
            u = la - _row_lse(s + v[None, :])  # (BLOCK_N,): -inf on padded rows and zero-mass rows
            _store_vec_n(us_ptr, k, pid, B, n, rows, rmask, u)
            run_max, run_sum = _col_lse_update(run_max, run_sum, s + u[:, None])
        v = lb - _col_lse_final(run_max, run_sum)  # (BLOCK_M,): -inf on padded and zero-mass columns
        _store_vec_m(vs_ptr, k + 1, pid, B, m, v, BLOCK_M)
    return v


# ---------------------------------------------------------------------------------------------------------
# Backward building blocks.
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _upstream_tile(s, u_last, v_last, G_ptr, offs, mask, HAS_G: tl.constexpr):
    """Gbar = dL/dlog P on a tile: grad_P * P, or -P (log P + 1) for the entropy (HAS_G False)."""
    log_p = s + u_last[:, None] + v_last[None, :]  # (BLOCK_N, BLOCK_M), -inf on padding/zero-mass
    p = tl.exp(log_p)
    if HAS_G:
        g = tl.load(G_ptr + offs, mask=mask, other=0.0)
        gbar = g * p
    else:
        gbar = -p * (tl.where(log_p == float("-inf"), 0.0, log_p) + 1.0)
    return tl.where(mask, gbar, 0.0)


@triton.jit
def _softmax_tiles(s, u_k, v_prev, v_k, la, lb):
    """R^k (row softmax, uses v_{k-1}) and Q^k (column softmax, uses v_k) on a tile, 0 at zero mass."""
    a_zero = la == float("-inf")
    b_zero = lb == float("-inf")
    du = tl.where(a_zero, float("-inf"), u_k - tl.where(a_zero, 0.0, la))  # (BLOCK_N,)
    dv = tl.where(b_zero, float("-inf"), v_k - tl.where(b_zero, 0.0, lb))  # (BLOCK_M,)
    r = tl.exp(s + v_prev[None, :] + du[:, None])
    q = tl.exp(s + u_k[:, None] + dv[None, :])
    return r, q


@triton.jit
def _terminal_sweep(C_ptr, G_ptr, gu_ptr, gv_ptr, us_ptr, vs_ptr, ubar_ptr, pid, B, n, m, n_iters, tau,
                    HAS_G: tl.constexpr, HAS_UV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Row and column sums of Gbar (plus the seeds grad_u, grad_v with HAS_UV): stores the row sums in
    ubar[L-1], returns vbar_L (BLOCK_M,).

    Reads n*m (C) [+ n*m (grad_P)] + n elements, writes n.
    """
    v_last = _vec_m(vs_ptr, n_iters, pid, B, m, float("-inf"), BLOCK_M)
    vbar = tl.zeros([BLOCK_M], v_last.dtype)
    for r0 in range(0, n, BLOCK_N):
        s, offs, mask, rows, rmask, c = _load_s_tile(C_ptr, pid, r0, n, m, tau, BLOCK_N, BLOCK_M)
        u_last = _vec_n(us_ptr, n_iters - 1, pid, B, n, rows, rmask, float("-inf"))
        gbar = _upstream_tile(s, u_last, v_last, G_ptr, offs, mask, HAS_G)
        ubar = tl.sum(gbar, 1)
        if HAS_UV:
            ubar += _vec_n(gu_ptr, 0, pid, B, n, rows, rmask, 0.0)
        _store_vec_n(ubar_ptr, n_iters - 1, pid, B, n, rows, rmask, ubar)
        vbar += tl.sum(gbar, 0)
    if HAS_UV:
        vbar += _vec_m(gv_ptr, 0, pid, B, m, 0.0, BLOCK_M)
    return vbar


@triton.jit
def _reverse_sweep(C_ptr, la_ptr, lb, us_ptr, vs_ptr, ubar_ptr, vbar, k, pid, B, n, m, tau,
                   LAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Reverse of iteration k (0-based index into us): vbar = vbar_k -> stores ubar_k, returns vbar_{k-1}.

    Reads n*m (C) + 3n elements, writes n.  LAST: iteration L, whose ubar starts from the terminal row sums.
    """
    v_k = _vec_m(vs_ptr, k + 1, pid, B, m, float("-inf"), BLOCK_M)
    v_prev = _vec_m(vs_ptr, k, pid, B, m, float("-inf"), BLOCK_M)
    vbar_prev = tl.zeros([BLOCK_M], v_k.dtype)
    for r0 in range(0, n, BLOCK_N):
        s, offs, mask, rows, rmask, c = _load_s_tile(C_ptr, pid, r0, n, m, tau, BLOCK_N, BLOCK_M)
        la = tl.load(la_ptr + pid.to(tl.int64) * n + rows, mask=rmask, other=float("-inf"))
        u_k = _vec_n(us_ptr, k, pid, B, n, rows, rmask, float("-inf"))
        r, q = _softmax_tiles(s, u_k, v_prev, v_k, la, lb)
        ubar = -tl.sum(vbar[None, :] * q, 1)  # (BLOCK_N,)
        if LAST:
            ubar += _vec_n(ubar_ptr, k, pid, B, n, rows, rmask, 0.0)
        _store_vec_n(ubar_ptr, k, pid, B, n, rows, rmask, ubar)
        vbar_prev -= tl.sum(ubar[:, None] * r, 0)
    return vbar_prev


@triton.jit
def _adjoint_sweeps(C_ptr, la_ptr, lb_ptr, G_ptr, gu_ptr, gv_ptr, us_ptr, vs_ptr, ubar_ptr, vbar_ptr, pid, B, n,
                    m, n_iters, tau, HAS_G: tl.constexpr, HAS_UV: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_M: tl.constexpr):
    """All adjoint vectors: ubar_k into ubar[k-1] (L, B, n), vbar_k into vbar[k] (L+1, B, m).

    1 + L passes over C.  Returns grad_log_b = sum_{k>=1} vbar_k (BLOCK_M,).
    """
    cols = tl.arange(0, BLOCK_M)
    lb = tl.load(lb_ptr + pid.to(tl.int64) * m + cols, mask=cols < m, other=float("-inf"))
    vbar = _terminal_sweep(C_ptr, G_ptr, gu_ptr, gv_ptr, us_ptr, vs_ptr, ubar_ptr, pid, B, n, m, n_iters, tau,
                           HAS_G, HAS_UV, BLOCK_N, BLOCK_M)
    tl.debug_barrier()
    _store_vec_m(vbar_ptr, n_iters, pid, B, m, vbar, BLOCK_M)
    grad_lb = vbar
    vbar = _reverse_sweep(C_ptr, la_ptr, lb, us_ptr, vs_ptr, ubar_ptr, vbar, n_iters - 1, pid, B, n, m, tau,
                          True, BLOCK_N, BLOCK_M)
    _store_vec_m(vbar_ptr, n_iters - 1, pid, B, m, vbar, BLOCK_M)
    for kk in range(1, n_iters):
        k = n_iters - 1 - kk
        grad_lb += vbar
        vbar = _reverse_sweep(C_ptr, la_ptr, lb, us_ptr, vs_ptr, ubar_ptr, vbar, k, pid, B, n, m, tau,
                              False, BLOCK_N, BLOCK_M)
        _store_vec_m(vbar_ptr, k, pid, B, m, vbar, BLOCK_M)
    tl.debug_barrier()
    return grad_lb


@triton.jit
def _grad_s_tile(C_ptr, la_ptr, lb, G_ptr, us_ptr, vs_ptr, ubar_ptr, vbar_ptr, pid, B, n, m, n_iters, tau,
                 r0, HAS_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """dL/dS on one tile: Gbar - sum_k (vbar_k Q^k + ubar_k R^k); also sum_k ubar_k on its rows.

    Reads n*m (C) [+ n*m (grad_P)] + (2L + 1) n elements per full pass; the m-vectors are tiny.
    """
    s, offs, mask, rows, rmask, c = _load_s_tile(C_ptr, pid, r0, n, m, tau, BLOCK_N, BLOCK_M)
    la = tl.load(la_ptr + pid.to(tl.int64) * n + rows, mask=rmask, other=float("-inf"))
    u_last = _vec_n(us_ptr, n_iters - 1, pid, B, n, rows, rmask, float("-inf"))
    v_last = _vec_m(vs_ptr, n_iters, pid, B, m, float("-inf"), BLOCK_M)
    gs = _upstream_tile(s, u_last, v_last, G_ptr, offs, mask, HAS_G)  # (BLOCK_N, BLOCK_M)
    grad_la = tl.zeros([BLOCK_N], gs.dtype)
    for k in range(n_iters):
        u_k = _vec_n(us_ptr, k, pid, B, n, rows, rmask, float("-inf"))
        ubar = _vec_n(ubar_ptr, k, pid, B, n, rows, rmask, 0.0)
        v_prev = _vec_m(vs_ptr, k, pid, B, m, float("-inf"), BLOCK_M)
        v_k = _vec_m(vs_ptr, k + 1, pid, B, m, float("-inf"), BLOCK_M)
        vbar = _vec_m(vbar_ptr, k + 1, pid, B, m, 0.0, BLOCK_M)
        r, q = _softmax_tiles(s, u_k, v_prev, v_k, la, lb)
        gs -= vbar[None, :] * q + ubar[:, None] * r
        grad_la += ubar
    return gs, grad_la, c, offs, mask, rows, rmask


# ---------------------------------------------------------------------------------------------------------
# Kernels.
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _sinkhorn_fwd_kernel(C_ptr, la_ptr, lb_ptr, v0_ptr, par_ptr, us_ptr, vs_ptr, B, n, m, n_iters,
                         BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """grid (B,).  Reads L * (n*m + n) + m + n elements, writes L * (n + m) + m."""
    pid = tl.program_id(0)
    tau = tl.load(par_ptr)
    v0 = _vec_m(v0_ptr, 0, pid, B, m, float("-inf"), BLOCK_M)  # (BLOCK_M,)
    _forward_sweeps(C_ptr, la_ptr, lb_ptr, us_ptr, vs_ptr, v0, pid, B, n, m, n_iters, tau, BLOCK_N, BLOCK_M)


@triton.jit
def _sinkhorn_bwd_kernel(C_ptr, la_ptr, lb_ptr, par_ptr, us_ptr, vs_ptr, G_ptr, gu_ptr, gv_ptr, ubar_ptr, vbar_ptr,
                         gC_ptr, gla_ptr, glb_ptr, B, n, m, n_iters,
                         HAS_G: tl.constexpr, HAS_UV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """grid (B,).  L + 2 passes over C (plus 2 over grad_P when given); writes n*m (grad_C) once."""
    pid = tl.program_id(0)
    tau = tl.load(par_ptr)
    grad_lb = _adjoint_sweeps(C_ptr, la_ptr, lb_ptr, G_ptr, gu_ptr, gv_ptr, us_ptr, vs_ptr, ubar_ptr, vbar_ptr, pid,
                              B, n, m, n_iters, tau, HAS_G, HAS_UV, BLOCK_N, BLOCK_M)
    _store_vec_m(glb_ptr, 0, pid, B, m, grad_lb, BLOCK_M)
    cols = tl.arange(0, BLOCK_M)
    lb = tl.load(lb_ptr + pid.to(tl.int64) * m + cols, mask=cols < m, other=float("-inf"))
    # reads n*m (C) [+ n*m (grad_P)] + (2L + 1) n, writes n*m (grad_C) + n (grad_log_a)
    for r0 in range(0, n, BLOCK_N):
        gs, grad_la, c, offs, mask, rows, rmask = _grad_s_tile(
            C_ptr, la_ptr, lb, G_ptr, us_ptr, vs_ptr, ubar_ptr, vbar_ptr, pid, B, n, m, n_iters, tau, r0,
            HAS_G, BLOCK_N, BLOCK_M)
        tl.store(gC_ptr + offs, -gs / tau, mask=mask)
        _store_vec_n(gla_ptr, 0, pid, B, n, rows, rmask, grad_la)


@triton.jit
def _mesh_kernel(Cp_ptr, la_ptr, lb_ptr, par_ptr, us_ptr, vs_ptr, ubar_ptr, vbar_ptr, trC_ptr, trV_ptr, B, n, m,
                 n_mesh_iters, n_iters, reuse_uv, TRACE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    """grid (B,).  The whole MESH loop on C' (updated in place).  Per step: L forward passes, 1 + L adjoint
    passes, 1 norm pass (reads n*m), 1 update pass (reads and writes n*m): 2L + 3 reads of C', 1 write."""
    pid = tl.program_id(0)
    tau = tl.load(par_ptr)
    lr = tl.load(par_ptr + 1)
    tiny = tl.load(par_ptr + 2)
    cols = tl.arange(0, BLOCK_M)
    cmask = cols < m
    lb = tl.load(lb_ptr + pid.to(tl.int64) * m + cols, mask=cmask, other=float("-inf"))
    zero_m = tl.zeros([BLOCK_M], tau.dtype)
    for t in range(n_mesh_iters):
        v0 = tl.where(cmask, zero_m, float("-inf"))
        if reuse_uv != 0:
            if t > 0:
                v0 = _vec_m(vs_ptr, n_iters, pid, B, m, float("-inf"), BLOCK_M)
        if TRACE:  # this step's C' and warm start, for the warm-start backward: reads and writes n*m
            _store_vec_m(trV_ptr, t, pid, B, m, v0, BLOCK_M)
            for r0 in range(0, n, BLOCK_N):
                s, offs, mask, rows, rmask, c = _load_s_tile(Cp_ptr, pid, r0, n, m, tau, BLOCK_N, BLOCK_M)
                step_base = (t * B + pid).to(tl.int64) * n * m  # element pid of step t in (T, B, n, m)
                tl.store(trC_ptr + step_base + (offs - pid.to(tl.int64) * n * m), c, mask=mask)
        tl.debug_barrier()
        _forward_sweeps(Cp_ptr, la_ptr, lb_ptr, us_ptr, vs_ptr, v0, pid, B, n, m, n_iters, tau,
                        BLOCK_N, BLOCK_M)
        tl.debug_barrier()
        _adjoint_sweeps(Cp_ptr, la_ptr, lb_ptr, Cp_ptr, Cp_ptr, Cp_ptr, us_ptr, vs_ptr, ubar_ptr, vbar_ptr, pid, B,
                        n, m, n_iters, tau, False, False, BLOCK_N, BLOCK_M)
        # Norm pass: streaming scaled sum of squares per column (as in BLAS nrm2), so ||g||^2 neither
        # overflows nor underflows.  Reads n*m + (2L + 1) n elements.
        run_max = tl.zeros([BLOCK_M], tau.dtype)
        run_sum = tl.zeros([BLOCK_M], tau.dtype)
        for r0 in range(0, n, BLOCK_N):
            gs, grad_la, c, offs, mask, rows, rmask = _grad_s_tile(
                Cp_ptr, la_ptr, lb, Cp_ptr, us_ptr, vs_ptr, ubar_ptr, vbar_ptr, pid, B, n, m, n_iters, tau,
                r0, False, BLOCK_N, BLOCK_M)
            g = tl.abs(gs / tau)
            new_max = tl.maximum(run_max, tl.max(g, 0))
            pos = new_max > 0
            safe = tl.where(pos, new_max, 1.0)
            ratio = run_max / safe
            run_sum = run_sum * ratio * ratio + tl.sum((g / safe[None, :]) * (g / safe[None, :]), 0)
            run_max = new_max
        top = tl.max(run_max, 0)
        top_safe = tl.where(top > 0, top, 1.0)
        rel = run_max / top_safe
        norm = top * tl.sqrt(tl.sum(run_sum * rel * rel, 0))
        norm = tl.maximum(norm, tiny)  # lr / tiny would overflow: divide g, as in the reference
        # Update pass: recompute g tile by tile and write C'_{t+1} = C'_t - lr g / ||g|| in place (each tile
        # reads only its own entries of C').  Reads n*m + (2L + 1) n, writes n*m.
        for r0 in range(0, n, BLOCK_N):
            gs, grad_la, c, offs, mask, rows, rmask = _grad_s_tile(
                Cp_ptr, la_ptr, lb, Cp_ptr, us_ptr, vs_ptr, ubar_ptr, vbar_ptr, pid, B, n, m, n_iters, tau,
                r0, False, BLOCK_N, BLOCK_M)
            # every thread has read its entries of the tile before any thread overwrites them
            tl.debug_barrier()
            tl.store(Cp_ptr + offs, c + lr * (gs / tau) / norm, mask=mask)
        tl.debug_barrier()


# ---------------------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------------------
def _blocks(n, m, dtype, block_n=None):
    """(BLOCK_N, BLOCK_M, num_warps): BLOCK_M covers all m columns, a tile holds <= 4096 fp32 / 2048 fp64."""
    block_m = max(triton.next_power_of_2(m), 2)
    if block_n is None:
        budget = 4096 if dtype == torch.float32 else 2048
        block_n = max(2, min(triton.next_power_of_2(n), budget // block_m))
    elif not isinstance(block_n, int) or block_n < 2 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 2, got {block_n!r}")
    # at most 16 fp32 / 8 fp64 elements per thread: no register spills when compiled for sm_90
    num_warps = 8 if block_n * block_m >= 2048 else 4
    return block_n, block_m, num_warps


def _check(C, log_a, log_b, tau):
    if not isinstance(C, torch.Tensor) or C.dim() != 3:
        raise ValueError(f"C must be a (B, n, m) tensor, got {getattr(C, 'shape', type(C))}")
    if C.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"C must be float32 or float64, got {C.dtype}")
    B, n, m = C.shape
    if n < 1 or m < 1:
        raise ValueError(f"C must have n >= 1 rows and m >= 1 columns, got {tuple(C.shape)}")
    for name, t, shape in (("log_a", log_a, (B, n)), ("log_b", log_b, (B, m))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match C {tuple(C.shape)}, got {tuple(t.shape)}")
    for name, t in (("C", C), ("log_a", log_a), ("log_b", log_b)):
        if t.dtype != C.dtype or t.device != C.device:
            raise ValueError(f"{name} must share C's dtype and device ({C.dtype}, {C.device}), "
                             f"got {t.dtype}, {t.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if not (isinstance(tau, (int, float)) and tau > 0 and tau != float("inf")):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    return B, n, m


def _check_vec(name, t, shape, C):
    if t is None or tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {None if t is None else tuple(t.shape)}")
    if t.dtype != C.dtype or t.device != C.device or not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous with C's dtype and device ({C.dtype}, {C.device})")


def _params(C, *values):
    return torch.tensor(values, dtype=C.dtype, device=C.device)


def launch_sinkhorn_fwd(C, log_a, log_b, tau, n_iters, v0, block_n=None):
    """Launch `_sinkhorn_fwd_kernel`; see :func:`sinkhorn_fwd`.  ``block_n`` overrides the row tile (tests)."""
    B, n, m = _check(C, log_a, log_b, tau)
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"n_iters must be an int >= 1, got {n_iters!r}")
    _check_vec("v0", v0, (B, m), C)
    us = torch.empty((n_iters, B, n), dtype=C.dtype, device=C.device)  # (L, B, n): u_1..u_L
    vs = torch.empty((n_iters + 1, B, m), dtype=C.dtype, device=C.device)  # (L+1, B, m): v_0..v_L
    if B == 0:
        vs.copy_(v0.expand_as(vs))
        return us, vs
    block_n, block_m, num_warps = _blocks(n, m, C.dtype, block_n)
    _sinkhorn_fwd_kernel[(B,)](C, log_a, log_b, v0, _params(C, tau), us, vs, B, n, m, n_iters,
                               BLOCK_N=block_n, BLOCK_M=block_m, num_warps=num_warps)
    return us, vs


def launch_sinkhorn_bwd(C, log_a, log_b, tau, us, vs, grad_P, grad_u=None, grad_v=None, block_n=None):
    """Launch `_sinkhorn_bwd_kernel`; see :func:`sinkhorn_bwd`.  ``block_n`` overrides the row tile (tests)."""
    B, n, m = _check(C, log_a, log_b, tau)
    if us.dim() != 3 or us.shape[0] < 1:
        raise ValueError(f"us must be (n_iters, B, n) with n_iters >= 1, got {tuple(us.shape)}")
    n_iters = us.shape[0]
    _check_vec("us", us, (n_iters, B, n), C)
    _check_vec("vs", vs, (n_iters + 1, B, m), C)
    if grad_P is not None:
        _check_vec("grad_P", grad_P, (B, n, m), C)
    has_uv = grad_u is not None or grad_v is not None
    if has_uv:
        grad_u = torch.zeros_like(log_a) if grad_u is None else grad_u
        grad_v = torch.zeros_like(log_b) if grad_v is None else grad_v
        _check_vec("grad_u", grad_u, (B, n), C)
        _check_vec("grad_v", grad_v, (B, m), C)
    grad_C = torch.empty_like(C)  # (B, n, m)
    grad_la = torch.empty_like(log_a)  # (B, n)
    grad_lb = torch.empty_like(log_b)  # (B, m)
    vbar = torch.empty_like(vs)  # (L+1, B, m): vbar_0..vbar_L; vbar_0 is grad_v0
    if B == 0:
        return grad_C, grad_la, grad_lb, vbar[0]
    ubar = torch.empty_like(us)  # (L, B, n) scratch: ubar_1..ubar_L
    block_n, block_m, num_warps = _blocks(n, m, C.dtype, block_n)
    _sinkhorn_bwd_kernel[(B,)](C, log_a, log_b, _params(C, tau), us, vs, C if grad_P is None else grad_P,
                               grad_u if has_uv else log_a, grad_v if has_uv else log_b,
                               ubar, vbar, grad_C, grad_la, grad_lb, B, n, m, n_iters,
                               HAS_G=grad_P is not None, HAS_UV=has_uv, BLOCK_N=block_n, BLOCK_M=block_m,
                               num_warps=num_warps)
    return grad_C, grad_la, grad_lb, vbar[0]


def launch_mesh_fwd(C, log_a, log_b, noise, params, trace=False, block_n=None):
    """Launch `_mesh_kernel` once for the whole MESH loop; see :func:`mesh_fwd`."""
    B, n, m = _check(C, log_a, log_b, params.tau)
    _check_vec("noise", noise, (B, n, m), C)
    T, L = params.n_mesh_iters, params.n_sh_iters
    for name, x in (("n_mesh_iters", T), ("n_sh_iters", L)):
        if not isinstance(x, int) or x < 1:
            raise ValueError(f"{name} must be an int >= 1, got {x!r}")
    for name, x in (("lr", params.lr), ("noise_scale", params.noise_scale)):
        if not isinstance(x, (int, float)) or not (abs(x) < float("inf")):
            raise ValueError(f"{name} must be a finite number, got {x!r}")
    C_t = C + params.noise_scale * noise  # (B, n, m): C'_0, then updated in place by the kernel
    us = torch.empty((L, B, n), dtype=C.dtype, device=C.device)  # (L, B, n)
    vs = torch.empty((L + 1, B, m), dtype=C.dtype, device=C.device)  # (L+1, B, m)
    tr = MeshTrace(C.new_empty(T, B, n, m), C.new_empty(T, B, m)) if trace else None
    if B == 0:
        return C_t, us[0].clone(), vs[0].clone(), tr
    block_n, block_m, num_warps = _blocks(n, m, C.dtype, block_n)
    _mesh_kernel[(B,)](C_t, log_a, log_b, _params(C, params.tau, params.lr, torch.finfo(C.dtype).tiny), us, vs,
                       torch.empty_like(us), torch.empty_like(vs), tr.C if trace else C_t, tr.v0 if trace else vs,
                       B, n, m, T, L, int(bool(params.reuse_uv)), TRACE=bool(trace),
                       BLOCK_N=block_n, BLOCK_M=block_m, num_warps=num_warps)
    return C_t, us[-1].clone(), vs[-1].clone(), tr


# ---------------------------------------------------------------------------------------------------------
# Backend contract.
# ---------------------------------------------------------------------------------------------------------
def sinkhorn_fwd(C, log_a, log_b, v0, tau, n_iters, want_plan=False):
    """Unrolled log-domain Sinkhorn, recording every iterate.

    Args:
        C: (B, n, m) costs.  log_a: (B, n), log_b: (B, m) log marginals (-inf for zero entries).
        v0: (B, m) warm start (zeros when cold).  tau: float > 0.  n_iters: int L >= 1.

    Returns:
        us (L, B, n) = u_1..u_L, vs (L + 1, B, m) = v_0..v_L, the plan exp(-C/tau + u_L + v_L) if
        ``want_plan`` (else None), and None (no status: values are checked before).
    """
    us, vs = launch_sinkhorn_fwd(C, log_a, log_b, tau, n_iters, v0)
    P = torch.div(C, -tau).add_(us[-1][:, :, None]).add_(vs[-1][:, None, :]).exp_() if want_plan else None
    return us, vs, P, None


def sinkhorn_bwd(C, log_a, log_b, tau, us, vs, grad_P, grad_u=None, grad_v=None):
    """Backward of P = exp(-C/tau + u_L + v_L) and of (u_L, v_L) through the iterations of :func:`sinkhorn_fwd`.

    Args:
        C: (B, n, m), log_a: (B, n), log_b: (B, m), tau: as given to the forward.
        us: (L, B, n), vs: (L + 1, B, m) from :func:`sinkhorn_fwd`.
        grad_P: (B, n, m) upstream gradient, or None for that of sum_batch H(P), H = -sum P log P.
        grad_u: (B, n), grad_v: (B, m) upstream gradients of u_L, v_L, or None.

    Returns:
        grad_C (B, n, m), grad_log_a (B, n), grad_log_b (B, m), grad_v0 (B, m); finite, 0 at zero marginals.
    """
    return launch_sinkhorn_bwd(C, log_a, log_b, tau, us, vs, grad_P, grad_u, grad_v)


def mesh_fwd(C, log_a, log_b, noise, params, trace=False):
    """MESH (Eq. 9-12) in one kernel launch, no autograd.

    Args:
        C: (B, n, m) costs; log_a (B, n), log_b (B, m) log marginals; noise: (B, n, m) standard normal;
        params: ``kernels.MeshParams``; trace: also record every step's C' and warm start.

    Returns:
        C_T (B, n, m), u (B, n), v (B, m) = u_L, v_L of the last step's Sinkhorn, None (no status), and the
        ``MeshTrace`` or None.
    """
    C_t, u, v, tr = launch_mesh_fwd(C, log_a, log_b, noise, params, trace)
    return C_t, u, v, None, tr


def mesh_bwd(trace, log_a, log_b, params, grad_u, grad_v):
    """MESH's warm-start gradient (``kernels.torch_ot.chain_mesh_bwd``) with these kernels' Sinkhorn."""
    return chain_mesh_bwd(sinkhorn_fwd, sinkhorn_bwd, trace, log_a, log_b, params, grad_u, grad_v)


BACKEND = Backend(sinkhorn_fwd, sinkhorn_bwd, mesh_fwd, mesh_bwd, validates=False, device=None)
