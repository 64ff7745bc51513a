// Python binding of the batched exact EMD solver (see transport.hpp for the exactness argument and
// batch.hpp for the threading) and of the fused CPU Sinkhorn / MESH loops (sinkhorn.hpp). The public,
// validated entry points are kernels.exact.emd and kernels.sinkhorn / kernels.mesh (backend "cpp").
// The EMD part needs LEMON and is compiled only with SA_MESH_HAVE_LEMON (CMakeLists.txt); HAS_EMD says
// which build this is, and Status and the Sinkhorn / MESH loops exist in both.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "sinkhorn.hpp"
#include "status.hpp"
#ifdef SA_MESH_HAVE_LEMON
#include "batch.hpp"
#include "transport.hpp"
#endif

namespace py = pybind11;

namespace {

#ifdef SA_MESH_HAVE_LEMON
using Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

// How often the calling thread (between its own problems, then while it waits for the helpers) takes
// the GIL back to let Python handle signals (Ctrl-C).
constexpr std::chrono::milliseconds kSignalPoll{20};

py::tuple solve_batch(const Array& C, const Array& a, const Array& b, int num_threads, double mass_rtol) {
  if (C.ndim() != 3) throw py::value_error("C must have shape (B, n, m)");
  const int64_t batch = C.shape(0), n = C.shape(1), m = C.shape(2);
  if (a.ndim() != 2 || a.shape(0) != batch || a.shape(1) != n) {
    throw py::value_error("a must have shape (B, n) matching C");
  }
  if (b.ndim() != 2 || b.shape(0) != batch || b.shape(1) != m) {
    throw py::value_error("b must have shape (B, m) matching C");
  }
  if (!emd::shape_fits(n, m)) {
    throw py::value_error("n and m must be >= 1 with n * m + 2 (n + m) below 2^31 (LEMON uses int arc ids)");
  }
  if (num_threads < 1) throw py::value_error("num_threads must be >= 1");
  if (!(mass_rtol >= 0)) throw py::value_error("mass_rtol must be >= 0");

  Array P({batch, n, m});
  std::memset(P.mutable_data(), 0, sizeof(double) * static_cast<size_t>(P.size()));
  py::array_t<int8_t> status(batch);
  std::memset(status.mutable_data(), static_cast<int>(emd::Status::kNotSolved), static_cast<size_t>(batch));
  if (batch == 0) return py::make_tuple(P, status);

  const emd::BatchArrays arrays{C.data(), a.data(), b.data(), P.mutable_data(), status.mutable_data(),
                                batch, static_cast<int>(n), static_cast<int>(m), mass_rtol};
  bool interrupted = false;
  std::exception_ptr error;
  {
    py::gil_scoped_release no_gil;
    emd::BatchRun batch_run(arrays, num_threads);
    error = batch_run.run(
        [&interrupted] {
          py::gil_scoped_acquire gil;
          if (PyErr_CheckSignals() == 0) return true;
          interrupted = true;  // the handler raised (KeyboardInterrupt): stop the batch
          return false;
        },
        kSignalPoll);
  }
  if (interrupted) throw py::error_already_set();
  if (error) std::rethrow_exception(error);
  return py::make_tuple(P, status);
}
#endif  // SA_MESH_HAVE_LEMON

// --- Sinkhorn / MESH (sinkhorn.hpp). Values are checked per element by the loops (the status output); the
// checks here are of shapes, so that a wrong call fails with a message, not a crash.

template <typename T>
using OTArray = py::array_t<T, py::array::c_style | py::array::forcecast>;
using StatusArray = py::array_t<int8_t>;

void expect_shape(const py::array& x, std::initializer_list<int64_t> shape, const char* name) {
  bool same = x.ndim() == static_cast<py::ssize_t>(shape.size());
  int axis = 0;
  for (int64_t s : shape) same = same && x.shape(axis++) == s;
  if (!same) throw py::value_error(std::string(name) + " has the wrong shape for this call");
}

ot::Dims dims_of(const py::array& C) {
  if (C.ndim() != 3) throw py::value_error("C must have shape (B, n, m)");
  return {C.shape(0), C.shape(1), C.shape(2)};
}

void check_counts(int threads, int n_iters) {
  if (threads < 1) throw py::value_error("threads must be >= 1");
  if (n_iters < 1) throw py::value_error("n_iters must be >= 1");
}

// kernels.MeshParams (or any object with its fields) -> the C++ bundle.
ot::MeshParams mesh_params(const py::object& p) {
  ot::MeshParams out{p.attr("tau").cast<double>(), p.attr("noise_scale").cast<double>(), p.attr("lr").cast<double>(),
                     p.attr("n_mesh_iters").cast<int>(), p.attr("n_sh_iters").cast<int>(),
                     p.attr("reuse_uv").cast<bool>()};
  if (out.n_mesh_iters < 1) throw py::value_error("n_mesh_iters must be >= 1");
  if (out.n_sh_iters < 1) throw py::value_error("n_sh_iters must be >= 1");
  return out;
}

template <typename T>
const T* data_or_null(const std::optional<OTArray<T>>& x, std::initializer_list<int64_t> shape, const char* name) {
  if (!x) return nullptr;
  expect_shape(*x, shape, name);
  return x->data();
}

template <typename T>
py::tuple ot_sinkhorn_fwd(const OTArray<T>& C, const OTArray<T>& log_a, const OTArray<T>& log_b, const OTArray<T>& v0,
                          double tau, int n_iters, int threads, bool want_plan, double mass_rtol) {
  const ot::Dims d = dims_of(C);
  check_counts(threads, n_iters);
  expect_shape(log_a, {d.batch, d.n}, "log_a");
  expect_shape(log_b, {d.batch, d.m}, "log_b");
  expect_shape(v0, {d.batch, d.m}, "v0");
  OTArray<T> us({static_cast<int64_t>(n_iters), d.batch, d.n}), vs({static_cast<int64_t>(n_iters) + 1, d.batch, d.m});
  OTArray<T> P(want_plan ? std::vector<int64_t>{d.batch, d.n, d.m} : std::vector<int64_t>{0});
  StatusArray status(d.batch);
  {
    py::gil_scoped_release no_gil;
    ot::sinkhorn_forward<T>(C.data(), log_a.data(), log_b.data(), v0.data(), d, static_cast<T>(tau), n_iters,
                            mass_rtol, us.mutable_data(), vs.mutable_data(), want_plan ? P.mutable_data() : nullptr,
                            status.mutable_data(), threads);
  }
  return py::make_tuple(us, vs, want_plan ? py::object(P) : py::none(), status);
}

template <typename T>
py::tuple ot_sinkhorn_bwd(const OTArray<T>& C, const OTArray<T>& log_a, const OTArray<T>& log_b, const OTArray<T>& us,
                          const OTArray<T>& vs, const std::optional<OTArray<T>>& grad_P,
                          const std::optional<OTArray<T>>& grad_u, const std::optional<OTArray<T>>& grad_v, double tau,
                          int threads) {
  const ot::Dims d = dims_of(C);
  if (us.ndim() != 3) throw py::value_error("us must have shape (L, B, n)");
  const int n_iters = static_cast<int>(us.shape(0));
  check_counts(threads, n_iters);
  expect_shape(log_a, {d.batch, d.n}, "log_a");
  expect_shape(log_b, {d.batch, d.m}, "log_b");
  expect_shape(us, {n_iters, d.batch, d.n}, "us");
  expect_shape(vs, {n_iters + 1, d.batch, d.m}, "vs");
  const T* gP = data_or_null<T>(grad_P, {d.batch, d.n, d.m}, "grad_P");
  const T* gu = data_or_null<T>(grad_u, {d.batch, d.n}, "grad_u");
  const T* gv = data_or_null<T>(grad_v, {d.batch, d.m}, "grad_v");
  OTArray<T> grad_C({d.batch, d.n, d.m}), ga({d.batch, d.n}), gb({d.batch, d.m}), gv0({d.batch, d.m});
  StatusArray status(d.batch);
  {
    py::gil_scoped_release no_gil;
    ot::sinkhorn_backward<T>(C.data(), log_a.data(), log_b.data(), us.data(), vs.data(), gP, gu, gv, d,
                             static_cast<T>(tau), n_iters, grad_C.mutable_data(), ga.mutable_data(), gb.mutable_data(),
                             gv0.mutable_data(), status.mutable_data(), threads);
  }
  return py::make_tuple(grad_C, ga, gb, gv0, status);
}

template <typename T>
py::tuple ot_mesh_fwd(const OTArray<T>& C, const OTArray<T>& noise, const OTArray<T>& log_a, const OTArray<T>& log_b,
                      const py::object& params, bool trace, int threads, double mass_rtol) {
  const ot::Dims d = dims_of(C);
  const ot::MeshParams p = mesh_params(params);
  check_counts(threads, p.n_sh_iters);
  expect_shape(noise, {d.batch, d.n, d.m}, "noise");
  expect_shape(log_a, {d.batch, d.n}, "log_a");
  expect_shape(log_b, {d.batch, d.m}, "log_b");
  const int64_t T_ = trace ? p.n_mesh_iters : 0;
  OTArray<T> C_T({d.batch, d.n, d.m}), u({d.batch, d.n}), v({d.batch, d.m});
  OTArray<T> trace_C({T_, d.batch, d.n, d.m}), trace_v0({T_, d.batch, d.m});
  StatusArray status(d.batch);
  {
    py::gil_scoped_release no_gil;
    ot::mesh_forward<T>(C.data(), noise.data(), log_a.data(), log_b.data(), d, p, mass_rtol, C_T.mutable_data(),
                        u.mutable_data(), v.mutable_data(), trace ? trace_C.mutable_data() : nullptr,
                        trace ? trace_v0.mutable_data() : nullptr, status.mutable_data(), threads);
  }
  if (!trace) return py::make_tuple(C_T, u, v, status, py::none());
  return py::make_tuple(C_T, u, v, status, py::make_tuple(trace_C, trace_v0));
}

template <typename T>
py::tuple ot_mesh_bwd(const OTArray<T>& trace_C, const OTArray<T>& trace_v0, const OTArray<T>& log_a,
                      const OTArray<T>& log_b, const OTArray<T>& grad_u, const OTArray<T>& grad_v,
                      const py::object& params, int threads) {
  const ot::MeshParams p = mesh_params(params);
  if (trace_C.ndim() != 4) throw py::value_error("trace_C must have shape (n_mesh_iters, B, n, m)");
  const ot::Dims d{trace_C.shape(1), trace_C.shape(2), trace_C.shape(3)};
  check_counts(threads, p.n_sh_iters);
  expect_shape(trace_C, {p.n_mesh_iters, d.batch, d.n, d.m}, "trace_C");
  expect_shape(trace_v0, {p.n_mesh_iters, d.batch, d.m}, "trace_v0");
  expect_shape(log_a, {d.batch, d.n}, "log_a");
  expect_shape(log_b, {d.batch, d.m}, "log_b");
  expect_shape(grad_u, {d.batch, d.n}, "grad_u");
  expect_shape(grad_v, {d.batch, d.m}, "grad_v");
  OTArray<T> grad_C({d.batch, d.n, d.m}), ga({d.batch, d.n}), gb({d.batch, d.m});
  StatusArray status(d.batch);
  {
    py::gil_scoped_release no_gil;
    ot::mesh_backward<T>(trace_C.data(), trace_v0.data(), log_a.data(), log_b.data(), grad_u.data(), grad_v.data(), d,
                         p, grad_C.mutable_data(), ga.mutable_data(), gb.mutable_data(), status.mutable_data(),
                         threads);
  }
  return py::make_tuple(grad_C, ga, gb, status);
}

template <typename T>
void bind_ot(py::module_& m) {
  m.def("sinkhorn_fwd", &ot_sinkhorn_fwd<T>, py::arg("C"), py::arg("log_a"), py::arg("log_b"), py::arg("v0"),
        py::arg("tau"), py::arg("n_iters"), py::arg("threads"), py::arg("want_plan") = false,
        py::arg("mass_rtol") = 1e-4,
        "(us (L, B, n), vs (L + 1, B, m), P (B, n, m) or None, status (B,) int8): kernels.torch_ot.sinkhorn_fwd's\n"
        "scaling form per element in cache, and with want_plan the plan exp(-C / tau + u_L + v_L). Outputs of\n"
        "elements whose status is not OPTIMAL are unspecified (LOG_DOMAIN: redo in the log domain).");
  m.def("sinkhorn_bwd", &ot_sinkhorn_bwd<T>, py::arg("C"), py::arg("log_a"), py::arg("log_b"), py::arg("us"),
        py::arg("vs"), py::arg("grad_P"), py::arg("grad_u"), py::arg("grad_v"), py::arg("tau"), py::arg("threads"),
        "(grad_C, grad_log_a, grad_log_b, grad_v0, status): kernels.torch_ot.sinkhorn_bwd's scaling form;\n"
        "grad_P None is the gradient of the summed entropy; grad_u (B, n), grad_v (B, m) (or None) seed the final\n"
        "potentials.");
  m.def("mesh_fwd", &ot_mesh_fwd<T>, py::arg("C"), py::arg("noise"), py::arg("log_a"), py::arg("log_b"),
        py::arg("params"), py::arg("trace"), py::arg("threads"), py::arg("mass_rtol") = 1e-4,
        "(C_T (B, n, m), u (B, n), v (B, m), status (B,) int8, trace): the MESH loop of kernels.torch_ot.mesh_fwd\n"
        "with params a kernels.MeshParams; trace (C' (T, B, n, m), warm starts (T, B, m)) of every step, or None.");
  m.def("mesh_bwd", &ot_mesh_bwd<T>, py::arg("trace_C"), py::arg("trace_v0"), py::arg("log_a"), py::arg("log_b"),
        py::arg("grad_u"), py::arg("grad_v"), py::arg("params"), py::arg("threads"),
        "(grad_C (B, n, m), grad_log_a (B, n), grad_log_b (B, m), status (B,) int8): the warm-start gradient of\n"
        "MESH, from grad_u, grad_v of the last step's potentials back through every step's Sinkhorn.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() =
      "Batched exact optimal transport on LEMON's network simplex (private; use kernels.emd), and fused CPU\n"
      "Sinkhorn / MESH loops (private; use kernels.sinkhorn / kernels.mesh with backend='cpp').";
  bind_ot<float>(m);
  bind_ot<double>(m);

  py::enum_<emd::Status>(m, "Status", "Outcome of one problem of a batch (EMD, Sinkhorn, MESH).")
      .value("OPTIMAL", emd::Status::kOptimal, "solved (EMD: exact optimum of the integer-scaled problem)")
      .value("INFEASIBLE", emd::Status::kInfeasible, "LEMON found no feasible flow")
      .value("UNBOUNDED", emd::Status::kUnbounded, "LEMON reported an unbounded problem")
      .value("INVALID_COST", emd::Status::kInvalidCost, "a cost is NaN or Inf")
      .value("INVALID_MARGINAL", emd::Status::kInvalidMarginal,
             "a or b has a negative or non-finite entry, or a total mass that is 0 or overflows")
      .value("MASS_MISMATCH", emd::Status::kMassMismatch,
             "|sum a - sum b| > mass_rtol * max(sum a, sum b)")
      .value("NOT_SOLVED", emd::Status::kNotSolved, "the batch was interrupted first")
      .value("INVALID_WARM_START", emd::Status::kInvalidWarmStart, "the warm start v is NaN or +Inf, or -Inf everywhere")
      .value("INVALID_NOISE", emd::Status::kInvalidNoise, "MESH's noise is NaN or Inf somewhere")
      .value("COST_OVERFLOW", emd::Status::kCostOverflow, "max |C| / tau exceeds the dtype's largest value / 64")
      .value("LOG_DOMAIN", emd::Status::kLogDomain, "valid, but to be redone in the log domain (not an error)");

#ifdef SA_MESH_HAVE_LEMON
  m.attr("HAS_EMD") = true;
  m.attr("SUPPLY_TOTAL") = emd::kSupplyTotal;

  m.def("cost_bits", &emd::cost_bits, py::arg("nodes"),
        "Bits K of the integer cost grid for a graph with `nodes` = n + m nodes: costs are rounded to\n"
        "multiples of (max C - min C) / 2**K.");

  m.def(
      "cache_stats",
      [] {
        const auto stats = emd::SolverCache::instance().stats();
        return py::make_tuple(stats.graphs_built, stats.solvers_built, stats.problems_solved);
      },
      "(graphs_built, solvers_built, problems_solved) since import: graphs and solver instances\n"
      "constructed (reuse keeps these from growing) and problems taken up by a worker.");

  m.def("solve_batch", &solve_batch, py::arg("C"), py::arg("a"), py::arg("b"), py::arg("num_threads"),
        py::arg("mass_rtol") = 1e-4,
        "Solve B transport problems exactly on `num_threads` threads with the GIL released.\n\n"
        "Args:\n"
        "    C: (B, n, m) costs; a: (B, n) and b: (B, m) marginals (converted to C-contiguous\n"
        "        float64). Each problem is checked before it is solved: finite costs; finite,\n"
        "        non-negative marginals with positive finite totals that agree to mass_rtol.\n"
        "    num_threads: worker threads, >= 1 (at most B are started).\n"
        "    mass_rtol: allowed |sum a - sum b| / max(sum a, sum b).\n\n"
        "Returns:\n"
        "    (P, status): P (B, n, m) float64 plans, zero where status is not OPTIMAL; status (B,)\n"
        "    int8 Status codes.\n\n"
        "Raises KeyboardInterrupt (or whatever a signal handler raises) if a signal arrives during\n"
        "the solve; problems already being solved finish first.");
#else
  m.attr("HAS_EMD") = false;  // built without LEMON: no solve_batch, cost_bits, cache_stats, SUPPLY_TOTAL
#endif
}
