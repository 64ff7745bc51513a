#include "sinkhorn.hpp"

#include "status.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <system_error>
#include <thread>
#include <vector>

// Each per-element function below is compiled twice on x86-64 with GCC: for x86-64-v3 (AVX2, FMA) and for
// the baseline, picked at load time by the CPU (target_clones); the helpers are forced inline into them
// so that they are compiled for the same target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define OT_CLONES
#endif
#define OT_INLINE inline __attribute__((always_inline))

namespace ot {
namespace {

using emd::Status;

template <typename T>
struct Num {
  static constexpr T tiny = std::numeric_limits<T>::min();
  static constexpr T eps = std::numeric_limits<T>::epsilon();
  static constexpr T inf = std::numeric_limits<T>::infinity();
  static constexpr T neg = -std::numeric_limits<T>::max() / 8;  // finite stand-in for -inf potentials
};

// Buffers of one thread, sized once per call. Matrices are (m, n): row j is slot j.
template <typename T>
struct Work {
  std::vector<T> Kt, logKt, G, Cp;  // (m, n); Cp is MESH's C'
  std::vector<T> q, x, xa, tx;      // (L, n): q_k, x_k, x_k / a, second halves of the rank-one terms
  std::vector<T> s, yb, ty;         // (L, m): s_k, y_k / b, first halves of the rank-one terms
  std::vector<T> y;                 // (L + 1, m): y_0..y_L
  std::vector<T> r, a, gu, Ky, row, lx, ga;  // (n)
  std::vector<T> b, gv, v0, v0f, ly, gb;     // (m)
  Work(const Dims& d, int L)
      : Kt(d.n * d.m), logKt(d.n * d.m), G(d.n * d.m), Cp(d.n * d.m),
        q(L * d.n), x(L * d.n), xa(L * d.n), tx(L * d.n),
        s(L * d.m), yb(L * d.m), ty(L * d.m), y((L + 1) * d.m),
        r(d.n), a(d.n), gu(d.n), Ky(d.n), row(d.n), lx(d.n), ga(d.n),
        b(d.m), gv(d.m), v0(d.m), v0f(d.m), ly(d.m), gb(d.m) {}
};

// fn(element, work) for every element of the batch, on up to `threads` threads (the caller's included).
// All buffers are allocated here, before any thread starts; if the OS refuses a thread, the threads
// already running and the caller share the work.
template <typename T, typename Fn>
void for_each_element(const Dims& d, int L, int threads, Fn fn) {
  if (d.batch == 0) return;
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(threads, d.batch));
  std::vector<Work<T>> works;
  works.reserve(static_cast<size_t>(wanted));
  for (int64_t t = 0; t < wanted; ++t) works.emplace_back(d, L);
  std::atomic<int64_t> next{0};
  auto loop = [&](Work<T>& work) {
    for (int64_t e; (e = next.fetch_add(1, std::memory_order_relaxed)) < d.batch;) fn(e, work);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < wanted; ++t) {
    try {
      pool.emplace_back(loop, std::ref(works[t]));
    } catch (const std::system_error&) {
      break;
    }
  }
  loop(works[0]);
  for (auto& thread : pool) thread.join();
}

// log of the smallest positive marginal entry (+inf if there is none).
template <typename T>
OT_INLINE T log_min_mass(const T* log_a, int64_t n, const T* log_b, int64_t m) {
  T lo = Num<T>::inf;
  for (int64_t i = 0; i < n; ++i) if (log_a[i] > -Num<T>::inf) lo = std::min(lo, log_a[i]);
  for (int64_t j = 0; j < m; ++j) if (log_b[j] > -Num<T>::inf) lo = std::min(lo, log_b[j]);
  return lo;
}

// torch_ot._scaling_ok: all scalings finite, and the mass that underflow can lose, at most
// tiny * max(1, max x) * max(1, max y) * max(n, m), below eps times the smallest positive marginal.
template <typename T>
OT_INLINE bool scaling_ok(const T* x, int64_t nx, const T* y, int64_t ny, int64_t n, int64_t m, T lmm) {
  // Scalings are >= 0, +inf or NaN; "v <= largest finite" fails exactly for the last two.
  T xmax = 1, ymax = 1;
  int bad = 0;
#pragma omp simd reduction(max : xmax) reduction(| : bad)
  for (int64_t i = 0; i < nx; ++i) {
    bad |= !(x[i] <= std::numeric_limits<T>::max());
    xmax = x[i] > xmax ? x[i] : xmax;
  }
#pragma omp simd reduction(max : ymax) reduction(| : bad)
  for (int64_t j = 0; j < ny; ++j) {
    bad |= !(y[j] <= std::numeric_limits<T>::max());
    ymax = y[j] > ymax ? y[j] : ymax;
  }
  if (bad) return false;
  const T bound = std::log(Num<T>::eps) - std::log(Num<T>::tiny) - std::log(static_cast<T>(std::max(n, m)));
  return std::log(xmax) + std::log(ymax) - lmm <= bound;
}

// Largest |p| over entries p > -inf (NaN is skipped, +inf counts); torch_ot._magnitude_ok's measure.
template <typename T>
OT_INLINE T magnitude(const T* p, int64_t count) {
  T big = 0;
#pragma omp simd reduction(max : big)
  for (int64_t i = 0; i < count; ++i) {
    const T a = p[i] > -Num<T>::inf ? std::abs(p[i]) : T(0);
    big = a > big ? a : big;
  }
  return big;
}

template <typename T>
OT_INLINE bool magnitude_ok(T big) {
  return big * Num<T>::eps <= static_cast<T>(1.0 / 8192);
}

// The value checks of kernels/_checks.py for one element, in the order of its messages, so that the public
// functions need no pass of their own over the inputs: C finite; log marginals neither NaN nor +inf, each
// marginal with a positive finite sum, the sums within mass_rtol; v0 (if given) neither NaN nor +inf and not
// -inf everywhere; noise (if given) finite; |C| / tau <= max / 64.
template <typename T>
OT_INLINE Status input_status(const T* C, const T* noise, int64_t nm, const T* la, int64_t n, const T* lb, int64_t m,
                              const T* v0, T tau, double mass_rtol) {
  const T big = std::numeric_limits<T>::max();
  T cmax = 0;
  int bad = 0;
#pragma omp simd reduction(max : cmax) reduction(| : bad)
  for (int64_t i = 0; i < nm; ++i) {
    const T c = std::abs(C[i]);
    bad |= !(c <= big);
    cmax = c > cmax ? c : cmax;
  }
  if (bad) return Status::kInvalidCost;
  double sa = 0, sb = 0;
  for (int64_t i = 0; i < n; ++i) {
    bad |= !(la[i] < Num<T>::inf);
    sa += std::exp(static_cast<double>(la[i]));
  }
  for (int64_t j = 0; j < m; ++j) {
    bad |= !(lb[j] < Num<T>::inf);
    sb += std::exp(static_cast<double>(lb[j]));
  }
  if (bad || !(sa > 0) || !(sb > 0) || !std::isfinite(sa) || !std::isfinite(sb)) return Status::kInvalidMarginal;
  if (std::abs(sa - sb) > mass_rtol * std::max(sa, sb)) return Status::kMassMismatch;
  if (v0 != nullptr) {
    bool any_finite = false;
    for (int64_t j = 0; j < m; ++j) {
      if (!(v0[j] < Num<T>::inf)) return Status::kInvalidWarmStart;
      any_finite |= v0[j] > -Num<T>::inf;
    }
    if (!any_finite) return Status::kInvalidWarmStart;
  }
  if (noise != nullptr) {
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < nm; ++i) bad |= !(std::abs(noise[i]) <= big);
    if (bad) return Status::kInvalidNoise;
  }
  if (cmax / tau > big / 64) return Status::kCostOverflow;
  return Status::kOptimal;
}

// exp for the entries of K and P (arguments <= ~0). float: a polynomial that the compiler vectorizes
// (Cephes' expf: exp(x) = 2^k exp(x - k ln 2), |x - k ln 2| <= ln 2 / 2, about 1 ulp; 0 below -87.3,
// where expf is at most tiny, and for -inf; +inf above 88.3, where it is near overflow). double: std::exp.
OT_INLINE float exp_entry(float x) {
  const bool over = x > 88.3f;
  const float keep = x < -87.3f ? 0.0f : 1.0f;
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  // adding 1.5 * 2^23 rounds x / ln 2 to the integer k, which lands in the low mantissa bits of t
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float k = t - shifter;
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;  // ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  int32_t ti;
  std::memcpy(&ti, &t, sizeof(ti));
  const int32_t bits = (ti - 0x4B400000 + 127) * (1 << 23);  // 2^k as a float's bits
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return over ? Num<float>::inf : keep * (p * scale);
}

OT_INLINE double exp_entry(double x) { return std::exp(x); }

// log for scalings and sums clamped to [tiny, max] (never 0, NaN or a subnormal here). float: Cephes'
// logf on the exponent and mantissa taken from the bits (about 1 ulp), vectorizable. double: std::log.
OT_INLINE float log_entry(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const int32_t mbits = (bits & 0x007fffff) | 0x3f800000;
  float mant;  // in [1, 2)
  std::memcpy(&mant, &mbits, sizeof(mant));
  const bool high = mant > 1.41421356f;  // use [sqrt(1/2), sqrt(2)) for the polynomial
  const float e = static_cast<float>((bits >> 23) - 127 + (high ? 1 : 0));
  const float f = (high ? mant * 0.5f : mant) - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return f + y + 0.693359375f * e;
}

OT_INLINE double log_entry(double x) { return std::log(x); }

// logKt (m, n) holds S + v0 (transposed); shifts it by the row maxima r (n) and writes K = exp(logKt).
template <typename T>
OT_INLINE void build_K(T* logKt, T* Kt, T* r, int64_t n, int64_t m) {
  std::copy(logKt, logKt + n, r);
  for (int64_t j = 1; j < m; ++j) {
    const T* lk = logKt + j * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) r[i] = std::max(r[i], lk[i]);
  }
  for (int64_t j = 0; j < m; ++j) {
    T* lk = logKt + j * n;
    T* k = Kt + j * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      lk[i] -= r[i];
      k[i] = exp_entry(lk[i]);
    }
  }
}

template <typename T>
OT_INLINE T dot(const T* u, const T* w, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += u[i] * w[i];
  return acc;
}

// out (n) = K y for K = Kt^T, y (m).
template <typename T>
OT_INLINE void K_times(const T* Kt, const T* y, T* out, int64_t n, int64_t m) {
  std::fill(out, out + n, T(0));
  for (int64_t j = 0; j < m; ++j) {
    const T yj = y[j];
    const T* k = Kt + j * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] += k[i] * yj;
  }
}

// L scaling iterations on K: q_k = K y_{k-1} (clamped to tiny), x_k = a / q_k, s_k = K^T x_k,
// y_k = b / max(s_k, tiny), from y_0 = 1. Fills w.q, w.x, w.s (row k-1 for iteration k) and w.y.
template <typename T>
OT_INLINE void iterate(Work<T>& w, int64_t n, int64_t m, int L) {
  std::fill(w.y.begin(), w.y.begin() + m, T(1));
  for (int k = 0; k < L; ++k) {
    T* q = w.q.data() + k * n;
    T* x = w.x.data() + k * n;
    K_times(w.Kt.data(), w.y.data() + k * m, q, n, m);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      q[i] = std::max(q[i], Num<T>::tiny);
      x[i] = w.a[i] / q[i];
    }
    T* s = w.s.data() + k * m;
    T* y = w.y.data() + (k + 1) * m;
    for (int64_t j = 0; j < m; ++j) {
      s[j] = dot(w.Kt.data() + j * n, x, n);
      y[j] = w.b[j] / std::max(s[j], Num<T>::tiny);
    }
  }
}

// Reverse sweep with P^k = K * x_k y_k^T and R^k = K * x_k y_{k-1}^T (torch_ot._scaled_backward).
// On entry w.G holds the direct term of gS (transposed), w.gu, w.gv the direct gradients of u_L, v_L;
// x_k is row k-1 of w.x, y_k row k of w.y, x_k / a and y_k / b rows k-1 of w.xa and w.yb. On exit w.G
// is gS^T; with need_marg, w.ga, w.gb hold grad log a, grad log b and w.gv grad v_0.
template <typename T>
OT_INLINE void backward(Work<T>& w, int64_t n, int64_t m, int L, bool need_marg) {
  const T* Kt = w.Kt.data();
  if (need_marg) {
    std::fill(w.ga.begin(), w.ga.end(), T(0));
    std::fill(w.gb.begin(), w.gb.end(), T(0));
  }
  for (int k = L; k >= 1; --k) {
    if (need_marg) {
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) w.gb[j] += w.gv[j];
    }
    T* t = w.ty.data() + (k - 1) * m;
    const T* yb = w.yb.data() + (k - 1) * m;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) t[j] = w.gv[j] * yb[j];
    K_times(Kt, t, w.Ky.data(), n, m);
    const T* x = w.x.data() + (k - 1) * n;
    const T* xa = w.xa.data() + (k - 1) * n;
    T* t2 = w.tx.data() + (k - 1) * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      w.gu[i] -= x[i] * w.Ky[i];
      t2[i] = w.gu[i] * xa[i];
    }
    if (need_marg) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) w.ga[i] += w.gu[i];
    }
    if (k > 1 || need_marg) {
      const T* yprev = w.y.data() + (k - 1) * m;
      for (int64_t j = 0; j < m; ++j) w.gv[j] = -yprev[j] * dot(Kt + j * n, t2, n);
    }
    std::fill(w.gu.begin(), w.gu.end(), T(0));
  }
  // gS^T -= K^T * M with M[j, i] = sum_k x_k[i] t_k[j] + t2_k[i] y_{k-1}[j]
  T* row = w.row.data();
  for (int64_t j = 0; j < m; ++j) {
    std::fill(row, row + n, T(0));
    for (int k = 1; k <= L; ++k) {
      const T c1 = w.ty[(k - 1) * m + j], c2 = w.y[(k - 1) * m + j];
      const T* x = w.x.data() + (k - 1) * n;
      const T* t2 = w.tx.data() + (k - 1) * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) row[i] += x[i] * c1 + t2[i] * c2;
    }
    const T* k = Kt + j * n;
    T* g = w.G.data() + j * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) g[i] -= k[i] * row[i];
  }
}

// Row sums (n) and column sums (m) of G (m, n) into w.gu, w.gv.
template <typename T>
OT_INLINE void marginal_sums(Work<T>& w, int64_t n, int64_t m) {
  std::fill(w.gu.begin(), w.gu.end(), T(0));
  for (int64_t j = 0; j < m; ++j) {
    const T* g = w.G.data() + j * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) w.gu[i] += g[i];
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += g[i];
    w.gv[j] = acc;
  }
}

// logKt = (v0f + S)^T for S = -C / tau, C (n, m) of one element; also the marginals a, b.
template <typename T>
OT_INLINE void load_element(Work<T>& w, const T* C, const T* la, const T* lb, int64_t n, int64_t m, T tau) {
  const T alpha = T(-1) / tau;
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) w.v0f[j] = std::max(w.v0[j], Num<T>::neg);
  for (int64_t i = 0; i < n; ++i)
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) w.logKt[j * n + i] = w.v0f[j] + alpha * C[i * m + j];
  for (int64_t i = 0; i < n; ++i) w.a[i] = std::exp(la[i]);
  for (int64_t j = 0; j < m; ++j) w.b[j] = std::exp(lb[j]);
}

template <typename T>
OT_CLONES void sinkhorn_forward_element(const T* C, const T* log_a, const T* log_b, const T* v0, Dims d, T tau, int L,
                                        double mass_rtol, T* us, T* vs, T* P, int8_t* status, int64_t e,
                                        Work<T>& w) {
  const int64_t B = d.batch, n = d.n, m = d.m;
  const T* la = log_a + e * n;
  const T* lb = log_b + e * m;
  const Status valid = input_status(C + e * n * m, static_cast<const T*>(nullptr), n * m, la, n, lb, m, v0 + e * m,
                                    tau, mass_rtol);
  status[e] = static_cast<int8_t>(valid);
  if (valid != Status::kOptimal) return;
  std::copy(v0 + e * m, v0 + (e + 1) * m, w.v0.begin());
  load_element(w, C + e * n * m, la, lb, n, m, tau);
  build_K(w.logKt.data(), w.Kt.data(), w.r.data(), n, m);
  iterate(w, n, m, L);
  bool good = scaling_ok(w.x.data(), L * n, w.y.data(), (L + 1) * m, n, m, log_min_mass(la, n, lb, m));
  T big = magnitude(w.v0.data(), m);
  std::copy(w.v0.begin(), w.v0.end(), vs + e * m);
  for (int k = 0; k < L; ++k) {
    T* u = us + (k * B + e) * n;
    T* v = vs + ((k + 1) * B + e) * m;
    const T* q = w.q.data() + k * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) u[i] = la[i] - w.r[i] - log_entry(q[i]);
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) v[j] = w.v0f[j] + lb[j] - log_entry(std::max(w.s[k * m + j], Num<T>::tiny));
    big = std::max({big, magnitude(u, n), magnitude(v, m)});
  }
  const bool ok = good && magnitude_ok(big);
  status[e] = static_cast<int8_t>(ok ? Status::kOptimal : Status::kLogDomain);
  if (!ok || P == nullptr) return;
  // the plan exp(S + u_L + v_L), computed transposed in the scratch matrix and stored as (n, m)
  const T* Ce = C + e * n * m;
  const T* uL = us + ((L - 1) * B + e) * n;
  const T* vL = vs + (L * B + e) * m;
  T* Pe = P + e * n * m;
  for (int64_t j = 0; j < m; ++j) {
    T* lp = w.logKt.data() + j * n;
    const T vj = std::max(vL[j], Num<T>::neg);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) lp[i] = std::max(uL[i], Num<T>::neg) + (T(-1) / tau) * Ce[i * m + j] + vj;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) lp[i] = exp_entry(lp[i]);
    for (int64_t i = 0; i < n; ++i) Pe[i * m + j] = lp[i];
  }
}

}  // namespace

template <typename T>
void sinkhorn_forward(const T* C, const T* log_a, const T* log_b, const T* v0, Dims d, T tau, int L, double mass_rtol,
                      T* us, T* vs, T* P, int8_t* status, int threads) {
  for_each_element<T>(d, L, threads, [&](int64_t e, Work<T>& w) {
    sinkhorn_forward_element<T>(C, log_a, log_b, v0, d, tau, L, mass_rtol, us, vs, P, status, e, w);
  });
}

namespace {

template <typename T>
OT_CLONES void sinkhorn_backward_element(const T* C, const T* log_a, const T* log_b, const T* us, const T* vs,
                                         const T* grad_P, const T* grad_u, const T* grad_v, Dims d, T tau, int L,
                                         T* grad_C, T* grad_log_a, T* grad_log_b, T* grad_v0, int8_t* status,
                                         int64_t e, Work<T>& w) {
  const int64_t B = d.batch, n = d.n, m = d.m;
  const T alpha = T(-1) / tau;
  const T neg = Num<T>::neg;
  const T* Ce = C + e * n * m;
  const T* la = log_a + e * n;
  const T* lb = log_b + e * m;
  T big = 0;
  for (int k = 0; k < L; ++k) big = std::max(big, magnitude(us + (k * B + e) * n, n));
  for (int k = 0; k <= L; ++k) big = std::max(big, magnitude(vs + (k * B + e) * m, m));
  const T* uL = us + ((L - 1) * B + e) * n;
  const T* vL = vs + (L * B + e) * m;
  // K = P = exp(S + u_L + v_L); the direct term G = P * grad_P, or P (log P + 1) for the entropy
  T* uLf = w.r.data();  // u_L and v_L with -inf replaced by a finite stand-in
  T* vLf = w.v0f.data();
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) uLf[i] = std::max(uL[i], neg);
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) vLf[j] = std::max(vL[j], neg);
  for (int64_t j = 0; j < m; ++j) {
    T* lp = w.logKt.data() + j * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) lp[i] = uLf[i] + alpha * Ce[i * m + j] + vLf[j];
    T* p = w.Kt.data() + j * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) p[i] = exp_entry(lp[i]);
    T* g = w.G.data() + j * n;
    if (grad_P) {
      const T* gp = grad_P + e * n * m + j;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) g[i] = p[i] * gp[i * m];
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) g[i] = (lp[i] + 1) * p[i];
    }
  }
  marginal_sums(w, n, m);
  // the gradients of u_L and v_L join the plan's (the entropy's seed has the opposite sign, flipped at the end)
  const T sign = grad_P ? T(1) : T(-1);
  if (grad_u) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) w.gu[i] += sign * grad_u[e * n + i];
  }
  if (grad_v) {
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) w.gv[j] += sign * grad_v[e * m + j];
  }
  // P^k = P * x_k y_k^T with x_k = exp(u_k - u_L) (k = 1..L), y_k = exp(v_k - v_L) (k = 0..L-1)
  for (int k = 1; k <= L; ++k) {
    const T* u = us + ((k - 1) * B + e) * n;
    T* x = w.x.data() + (k - 1) * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) x[i] = exp_entry(std::max(u[i], neg) - uLf[i]);
  }
  for (int k = 0; k < L; ++k) {
    const T* v = vs + (k * B + e) * m;
    for (int64_t j = 0; j < m; ++j) w.y[k * m + j] = std::exp(std::max(v[j], neg) - vLf[j]);
  }
  if (!(scaling_ok(w.x.data(), L * n, w.y.data(), L * m, n, m, log_min_mass(la, n, lb, m)) &&
        magnitude_ok(big))) {
    status[e] = static_cast<int8_t>(Status::kLogDomain);
    return;
  }
  // 1 / a and 1 / b, 0 where the marginal is 0 (no mass, no gradient)
  for (int64_t i = 0; i < n; ++i) w.a[i] = la[i] > -Num<T>::inf ? std::exp(-la[i]) : T(0);
  for (int64_t j = 0; j < m; ++j) w.b[j] = lb[j] > -Num<T>::inf ? std::exp(-lb[j]) : T(0);
  for (int k = 1; k <= L; ++k) {
    const T* x = w.x.data() + (k - 1) * n;
    T* xa = w.xa.data() + (k - 1) * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) xa[i] = x[i] * w.a[i];
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) w.yb[(k - 1) * m + j] = (k < L ? w.y[k * m + j] : T(1)) * w.b[j];
  }
  backward(w, n, m, L, true);
  // gC = -gS / tau, and the entropy's seed had the opposite sign of grad_P * P
  const T scale = sign * alpha;
  T* gC = grad_C + e * n * m;
  for (int64_t i = 0; i < n; ++i)
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) gC[i * m + j] = w.G[j * n + i] * scale;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) grad_log_a[e * n + i] = sign * w.ga[i];
  for (int64_t j = 0; j < m; ++j) {
    grad_log_b[e * m + j] = sign * w.gb[j];
    grad_v0[e * m + j] = sign * w.gv[j];
  }
  status[e] = static_cast<int8_t>(Status::kOptimal);
}

}  // namespace

template <typename T>
void sinkhorn_backward(const T* C, const T* log_a, const T* log_b, const T* us, const T* vs, const T* grad_P,
                       const T* grad_u, const T* grad_v, Dims d, T tau, int L, T* grad_C, T* grad_log_a,
                       T* grad_log_b, T* grad_v0, int8_t* status, int threads) {
  for_each_element<T>(d, L, threads, [&](int64_t e, Work<T>& w) {
    sinkhorn_backward_element<T>(C, log_a, log_b, us, vs, grad_P, grad_u, grad_v, d, tau, L, grad_C, grad_log_a,
                                 grad_log_b, grad_v0, status, e, w);
  });
}

namespace {

template <typename T>
OT_CLONES void mesh_forward_element(const T* C, const T* noise, const T* log_a, const T* log_b, Dims d,
                                    const MeshParams& p, double mass_rtol, T* C_T, T* u_out, T* v_out, T* trace_C,
                                    T* trace_v0, int8_t* status, int64_t e, Work<T>& w) {
  const int64_t B = d.batch, n = d.n, m = d.m;
  const int L = p.n_sh_iters;
  const T tau = static_cast<T>(p.tau), lr = static_cast<T>(p.lr), noise_scale = static_cast<T>(p.noise_scale);
  const T alpha = T(-1) / tau;
  const T* Ce = C + e * n * m;
  const T* Ne = noise + e * n * m;
  const T* la = log_a + e * n;
  const T* lb = log_b + e * m;
  const Status valid = input_status(Ce, Ne, n * m, la, n, lb, m, static_cast<const T*>(nullptr), tau, mass_rtol);
  status[e] = static_cast<int8_t>(valid);
  if (valid != Status::kOptimal) return;
  const T lmm = log_min_mass(la, n, lb, m);
  for (int64_t i = 0; i < n; ++i)
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) w.Cp[j * n + i] = Ce[i * m + j] + noise_scale * Ne[i * m + j];
  for (int64_t i = 0; i < n; ++i) w.a[i] = std::exp(la[i]);
  for (int64_t j = 0; j < m; ++j) w.b[j] = std::exp(lb[j]);
  std::fill(w.v0.begin(), w.v0.end(), T(0));
  T* uL = u_out + e * n;
  T* vL = v_out + e * m;
  for (int step = 0; step < p.n_mesh_iters; ++step) {
    if (trace_C != nullptr) {  // what the warm-start backward needs: this step's C' and warm start
      T* tc = trace_C + (step * B + e) * n * m;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < m; ++j) tc[i * m + j] = w.Cp[j * n + i];
      std::copy(w.v0.begin(), w.v0.end(), trace_v0 + (step * B + e) * m);
    }
    for (int64_t j = 0; j < m; ++j) {
      w.v0f[j] = std::max(w.v0[j], Num<T>::neg);
      const T* c = w.Cp.data() + j * n;
      T* lk = w.logKt.data() + j * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) lk[i] = w.v0f[j] + alpha * c[i];
    }
    build_K(w.logKt.data(), w.Kt.data(), w.r.data(), n, m);
    iterate(w, n, m, L);
    const bool scaled = scaling_ok(w.x.data(), L * n, w.y.data(), (L + 1) * m, n, m, lmm);
    const T* qL = w.q.data() + (L - 1) * n;
    const T* sL = w.s.data() + (L - 1) * m;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) uL[i] = la[i] - w.r[i] - log_entry(qL[i]);
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) vL[j] = w.v0f[j] + lb[j] - log_entry(std::max(sL[j], Num<T>::tiny));
    if (!scaled || !magnitude_ok(std::max({magnitude(uL, n), magnitude(w.v0.data(), m), magnitude(vL, m)}))) {
      status[e] = static_cast<int8_t>(Status::kLogDomain);
      return;
    }
    // seed D = +P (log P + 1) with P = K x_L y_L^T, log P = log K + log x_L + log y_L
    const T* xL = w.x.data() + (L - 1) * n;
    const T* yL = w.y.data() + L * m;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) w.lx[i] = log_entry(std::max(xL[i], Num<T>::tiny)) + 1;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) w.ly[j] = log_entry(std::max(yL[j], Num<T>::tiny));
    for (int64_t j = 0; j < m; ++j) {
      const T* lk = w.logKt.data() + j * n;
      const T* k = w.Kt.data() + j * n;
      T* g = w.G.data() + j * n;
      const T ly = w.ly[j], yj = yL[j];
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) g[i] = (lk[i] + w.lx[i] + ly) * (k[i] * xL[i] * yj);
    }
    marginal_sums(w, n, m);
#pragma omp simd
    for (int64_t i = 0; i < L * n; ++i) w.xa[i] = T(1) / w.q[i];
#pragma omp simd
    for (int64_t j = 0; j < L * m; ++j) w.yb[j] = T(1) / std::max(w.s[j], Num<T>::tiny);
    backward(w, n, m, L, false);
    // g = dH/dC' = D^T / tau;  C' <- C' - lr g / max(||g||, tiny)
    const T sq = dot(w.G.data(), w.G.data(), n * m);
    const T inv = T(1) / std::max(std::sqrt(sq) / tau, Num<T>::tiny);
    const T coef = (-lr / tau) * inv;
    T* cp = w.Cp.data();
    const T* g = w.G.data();
    if (std::isfinite(coef)) {
#pragma omp simd
      for (int64_t i = 0; i < n * m; ++i) cp[i] += g[i] * coef;
    } else {  // a (numerically) zero gradient: normalize first
#pragma omp simd
      for (int64_t i = 0; i < n * m; ++i) cp[i] += (g[i] * inv) * (-lr / tau);
    }
    if (p.reuse_uv) std::copy(vL, vL + m, w.v0.begin());
  }
  T* out = C_T + e * n * m;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) out[i * m + j] = w.Cp[j * n + i];
}

// Reverse of the MESH steps for the gradients of the last step's potentials: step t's Sinkhorn (from the
// recorded C'_t and warm start v_t) is swept backward with seeds (grad u_L, grad v_L) on the last step and
// (0, grad of the next step's warm start) before it; each step's dL/dC'_t is dL/dC's share.
template <typename T>
OT_CLONES void mesh_backward_element(const T* trace_C, const T* trace_v0, const T* log_a, const T* log_b,
                                     const T* grad_u, const T* grad_v, Dims d, const MeshParams& p, T* grad_C,
                                     T* grad_log_a, T* grad_log_b, int8_t* status, int64_t e, Work<T>& w) {
  const int64_t B = d.batch, n = d.n, m = d.m;
  const int L = p.n_sh_iters;
  const T alpha = T(-1) / static_cast<T>(p.tau);
  const T* la = log_a + e * n;
  const T* lb = log_b + e * m;
  const T lmm = log_min_mass(la, n, lb, m);
  T* gla = grad_log_a + e * n;
  T* glb = grad_log_b + e * m;
  std::fill(gla, gla + n, T(0));
  std::fill(glb, glb + m, T(0));
  std::fill(w.Cp.begin(), w.Cp.end(), T(0));  // sum over steps of dL/dS'_t, transposed
  T* inv_a = w.lx.data();  // 1 / a, 0 where a is 0 (no mass, no gradient)
  T* seed_v = w.ly.data();  // gradient of the current step's v_L
  for (int64_t i = 0; i < n; ++i) {
    w.a[i] = std::exp(la[i]);
    inv_a[i] = la[i] > -Num<T>::inf ? std::exp(-la[i]) : T(0);
  }
  for (int64_t j = 0; j < m; ++j) {
    w.b[j] = std::exp(lb[j]);
    seed_v[j] = grad_v[e * m + j];
  }
  const int last = p.n_mesh_iters - 1;
  for (int step = last; step >= (p.reuse_uv ? 0 : last); --step) {
    const T* Cs = trace_C + (step * B + e) * n * m;
    const T* v0 = trace_v0 + (step * B + e) * m;
    for (int64_t j = 0; j < m; ++j) {
      w.v0[j] = v0[j];
      w.v0f[j] = std::max(v0[j], Num<T>::neg);
    }
    for (int64_t i = 0; i < n; ++i)
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) w.logKt[j * n + i] = w.v0f[j] + alpha * Cs[i * m + j];
    build_K(w.logKt.data(), w.Kt.data(), w.r.data(), n, m);
    iterate(w, n, m, L);
    // the forward step's checks: scalings, and the sizes of v_0, u_L, v_L
    T big = magnitude(w.v0.data(), m);
    for (int64_t i = 0; i < n; ++i) big = std::max(big, std::abs(la[i] - w.r[i] - log_entry(w.q[(L - 1) * n + i])));
    for (int64_t j = 0; j < m; ++j) {
      const T v = w.v0f[j] + lb[j] - log_entry(std::max(w.s[(L - 1) * m + j], Num<T>::tiny));
      if (v > -Num<T>::inf) big = std::max(big, std::abs(v));
    }
    if (!scaling_ok(w.x.data(), L * n, w.y.data(), (L + 1) * m, n, m, lmm) || !magnitude_ok(big)) {
      status[e] = static_cast<int8_t>(Status::kLogDomain);
      return;
    }
    for (int k = 1; k <= L; ++k) {
      const T* x = w.x.data() + (k - 1) * n;
      T* xa = w.xa.data() + (k - 1) * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) xa[i] = x[i] * inv_a[i];
      for (int64_t j = 0; j < m; ++j)
        w.yb[(k - 1) * m + j] = lb[j] > -Num<T>::inf ? w.y[k * m + j] * std::exp(-lb[j]) : T(0);
    }
    std::fill(w.G.begin(), w.G.end(), T(0));  // no direct term: only the potentials are seeded
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) w.gu[i] = step == last ? grad_u[e * n + i] : T(0);
    std::copy(seed_v, seed_v + m, w.gv.begin());
    backward(w, n, m, L, true);
#pragma omp simd
    for (int64_t i = 0; i < n * m; ++i) w.Cp[i] += w.G[i];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) gla[i] += w.ga[i];
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) glb[j] += w.gb[j];
    std::copy(w.gv.begin(), w.gv.end(), seed_v);  // the gradient of this step's warm start
  }
  T* gC = grad_C + e * n * m;
  for (int64_t i = 0; i < n; ++i)
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) gC[i * m + j] = alpha * w.Cp[j * n + i];  // dL/dC' = -dL/dS' / tau
  status[e] = static_cast<int8_t>(Status::kOptimal);
}

}  // namespace

template <typename T>
void mesh_forward(const T* C, const T* noise, const T* log_a, const T* log_b, Dims d, const MeshParams& p,
                  double mass_rtol, T* C_T, T* u, T* v, T* trace_C, T* trace_v0, int8_t* status, int threads) {
  for_each_element<T>(d, p.n_sh_iters, threads, [&](int64_t e, Work<T>& w) {
    mesh_forward_element<T>(C, noise, log_a, log_b, d, p, mass_rtol, C_T, u, v, trace_C, trace_v0, status, e, w);
  });
}

template <typename T>
void mesh_backward(const T* trace_C, const T* trace_v0, const T* log_a, const T* log_b, const T* grad_u,
                   const T* grad_v, Dims d, const MeshParams& p, T* grad_C, T* grad_log_a, T* grad_log_b,
                   int8_t* status, int threads) {
  for_each_element<T>(d, p.n_sh_iters, threads, [&](int64_t e, Work<T>& w) {
    mesh_backward_element<T>(trace_C, trace_v0, log_a, log_b, grad_u, grad_v, d, p, grad_C, grad_log_a, grad_log_b,
                             status, e, w);
  });
}

#define OT_INSTANTIATE(T)                                                                                     \
  template void sinkhorn_forward<T>(const T*, const T*, const T*, const T*, Dims, T, int, double, T*, T*, T*,       \
                                    int8_t*, int);                                                              \
  template void sinkhorn_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, const T*,          \
                                     const T*, Dims, T, int, T*, T*, T*, T*, int8_t*, int);                       \
  template void mesh_forward<T>(const T*, const T*, const T*, const T*, Dims, const MeshParams&, double, T*, T*,   \
                                T*, T*, T*, int8_t*, int);                                                      \
  template void mesh_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, Dims,                \
                                 const MeshParams&, T*, T*, T*, int8_t*, int);
OT_INSTANTIATE(float)
OT_INSTANTIATE(double)
#undef OT_INSTANTIATE

}  // namespace ot
