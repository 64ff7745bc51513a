// Fused CPU loops for the unrolled Sinkhorn of slot attention and for MESH (paper Eq. 9-12, App. A, D).
//
// Each batch element is done start to finish by one thread with its matrices in cache, in the scaling form
// of kernels/torch_ot.py (derivation there): K = exp(S + v0 - r) with S = -C / tau and r the row maxima;
// iterations q_k = K y_{k-1}, x_k = a / q_k, s_k = K^T x_k, y_k = b / s_k; the backward as mat-vecs with K
// plus K times a sum of 2L rank-one terms.
//
// Status (status.hpp, one int8 per element): the forward functions check each element's inputs as they read
// them (kernels/_checks.py's rules) and write kInvalidCost, kInvalidMarginal, kMassMismatch,
// kInvalidWarmStart, kInvalidNoise or kCostOverflow for a bad one (not solved); kLogDomain marks an element
// whose scaling form failed its accuracy checks (finite scalings, no harmful underflow, small potentials),
// which kernels/cpp_ot.py redoes in the log domain. The outputs of an element whose status is not
// kOptimal are unspecified.
//
// Layouts (C-contiguous): C, noise, grad_P, grad_C, C_T (B, n, m); log_a (B, n), log_b (B, m), -inf at zero
// marginals; us (L, B, n) = u_1..u_L; vs (L + 1, B, m) = v_0..v_L. Per-element matrices are held transposed,
// (m, n), so that the long axis is innermost for both mat-vecs.
//
// Threads: elements are shared out to `threads` threads (the caller's included) with an atomic counter.
// Every element reads only its inputs and the buffers it wrote itself, so results do not depend on the
// number of threads or on which thread did an element, nor (the build has no run-time alias or alignment
// checks: emd_cpp/CMakeLists.txt) on where the buffers lie. Nothing here touches Python or throws except
// std::bad_alloc / std::system_error.
#pragma once

#include <cstdint>

namespace ot {

struct Dims {
  int64_t batch, n, m;
};

// MESH's scalars (kernels.MeshParams in Python, one name per quantity).
struct MeshParams {
  double tau, noise_scale, lr;
  int n_mesh_iters, n_sh_iters;
  bool reuse_uv;
};

// u_1..u_L and v_0..v_L of L Sinkhorn iterations warm-started from v0 (B, m), and, unless P is null,
// the plan P = exp(S + u_L + v_L) (B, n, m).
template <typename T>
void sinkhorn_forward(const T* C, const T* log_a, const T* log_b, const T* v0, Dims d, T tau, int n_iters,
                      double mass_rtol, T* us, T* vs, T* P, int8_t* status, int threads);

// Gradients of P = exp(S + u_L + v_L) (grad_P, or the entropy's when grad_P is null) and of the final
// potentials (grad_u (B, n), grad_v (B, m), each optional) through the L iterations: grad_C (B, n, m),
// grad_log_a (B, n), grad_log_b (B, m), grad_v0 (B, m). status: kOptimal or kLogDomain.
template <typename T>
void sinkhorn_backward(const T* C, const T* log_a, const T* log_b, const T* us, const T* vs, const T* grad_P,
                       const T* grad_u, const T* grad_v, Dims d, T tau, int n_iters, T* grad_C, T* grad_log_a,
                       T* grad_log_b, T* grad_v0, int8_t* status, int threads);

// MESH: C'_0 = C + noise_scale * noise, then n_mesh_iters steps C' <- C' - lr g / ||g||_F with
// g = dH(sinkhorn(C'))/dC'. Writes C_T (B, n, m) and the last step's u (B, n), v (B, m). Unless null,
// trace_C (n_mesh_iters, B, n, m) and trace_v0 (n_mesh_iters, B, m) receive each step's C' and warm start.
template <typename T>
void mesh_forward(const T* C, const T* noise, const T* log_a, const T* log_b, Dims d, const MeshParams& p,
                  double mass_rtol, T* C_T, T* u, T* v, T* trace_C, T* trace_v0, int8_t* status, int threads);

// The warm-start gradient of MESH (the official code's): grad_u (B, n) and grad_v (B, m) of the last step's
// potentials sent back through every step's Sinkhorn (each warm-started from the previous step's v) to the
// costs (each C'_t passes its gradient to C unchanged) and the log marginals. Reads the trace of
// mesh_forward; writes grad_C (B, n, m), grad_log_a (B, n), grad_log_b (B, m). status: kOptimal or
// kLogDomain.
template <typename T>
void mesh_backward(const T* trace_C, const T* trace_v0, const T* log_a, const T* log_b, const T* grad_u,
                   const T* grad_v, Dims d, const MeshParams& p, T* grad_C, T* grad_log_a, T* grad_log_b,
                   int8_t* status, int threads);

}  // namespace ot
