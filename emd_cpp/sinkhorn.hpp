// Fused CPU loops for the unrolled Sinkhorn of slot attention and for MESH (paper Eq. 9-12, App. A, D).
//
// Why. At slot-attention sizes, e.g. (B, n, m) = (64, 105, 5), one batch element is 525 numbers, and
// PyTorch (eager or compiled) spends its time on hundreds of passes over the whole batch, each one an
// operator call. Here each batch element is done start to finish by one thread with all its matrices
// in L1/L2 cache: one exp per entry per MESH step, then only multiply-adds.
//
// What. The scaling form of kernels/torch_ot.py, with the same backend contract, the same maths and
// the same accuracy checks (see that file's docstring for the derivation): K = exp(S + v0 - r) with
// S = -C / tau and r the row maxima; Sinkhorn iterations q_k = K y_{k-1}, x_k = a / q_k,
// s_k = K^T x_k, y_k = b / s_k; the backward as mat-vecs with K plus K times a sum of 2L rank-one
// terms. Each element reports whether its checks passed (finite scalings, no harmful underflow, small
// potentials); the Python wrapper (kernels/cpp_ot.py) recomputes failing elements in the log domain
// with kernels/torch_ot.py. An element that fails stops early; its outputs are then unspecified.
//
// Layouts (all C-contiguous): C, noise, grad_P, grad_C, C_T (B, n, m); log_a (B, n), log_b (B, m);
// us (L, B, n) = u_1..u_L; vs (L + 1, B, m) = v_0..v_L; ok (B,) 1 = passed. log marginals may be
// -inf (zero marginals). The forward functions also check each element's inputs (valid (B,), 1 = the
// values pass the checks of kernels/_checks.py; an invalid element is not solved and has ok = 0). Inside, each element's matrices are held transposed, (m, n), so the long
// axis is innermost for both mat-vecs.
//
// Threads: elements are shared out to `threads` threads (the caller's thread included) with an atomic
// counter; nothing here touches Python or throws except std::bad_alloc / std::system_error.
#pragma once

#include <cstdint>

namespace ot {

struct Dims {
  int64_t batch, n, m;
};

// u_1..u_L and v_0..v_L of L Sinkhorn iterations warm-started from v0 (B, m), and, unless P is null,
// the plan P = exp(S + u_L + v_L) (B, n, m) of the elements that passed their checks.
template <typename T>
void sinkhorn_forward(const T* C, const T* log_a, const T* log_b, const T* v0, Dims d, T tau, int iters,
                      double mass_rtol, T* us, T* vs, T* P, uint8_t* ok, uint8_t* valid, int threads);

// Gradients of P = exp(S + u_L + v_L) through the L iterations: grad_C (B, n, m), grad_log_a (B, n),
// grad_log_b (B, m), grad_v0 (B, m). grad_P == nullptr means the gradient of sum_batch H(P).
template <typename T>
void sinkhorn_backward(const T* C, const T* log_a, const T* log_b, const T* us, const T* vs, const T* grad_P,
                       Dims d, T tau, int iters, T* grad_C, T* grad_log_a, T* grad_log_b, T* grad_v0,
                       uint8_t* ok, int threads);

// MESH: C'_0 = C + noise_scale * noise, then `steps` steps C' <- C' - lr g / ||g||_F with
// g = dH(sinkhorn(C'))/dC'. Writes C_T (B, n, m) and the last step's u (B, n), v (B, m); steps >= 1.
template <typename T>
void mesh_forward(const T* C, const T* noise, const T* log_a, const T* log_b, Dims d, T tau, T noise_scale,
                  int steps, int iters, T lr, bool reuse_uv, double mass_rtol, T* C_T, T* u, T* v, uint8_t* ok,
                  uint8_t* valid, int threads);

}  // namespace ot
