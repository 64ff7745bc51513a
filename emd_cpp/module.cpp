// Python binding of the batched exact EMD solver (see transport.hpp for the exactness argument and
// batch.hpp for the threading) and of the fused CPU Sinkhorn / MESH loops (sinkhorn.hpp). The public,
// validated entry points are kernels.exact.emd and kernels.sinkhorn / kernels.mesh (backend "cpp").
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

#include "batch.hpp"
#include "sinkhorn.hpp"
#include "transport.hpp"

namespace py = pybind11;

namespace {

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

// --- Sinkhorn / MESH (sinkhorn.hpp). Values are checked per element by the loops (the `valid` output);
// the checks here are of shapes, so that a wrong call fails with a message, not a crash.

template <typename T>
using OTArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

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

void check_counts(int threads, int iters) {
  if (threads < 1) throw py::value_error("threads must be >= 1");
  if (iters < 1) throw py::value_error("n_iters must be >= 1");
}

template <typename T>
py::tuple ot_sinkhorn_fwd(const OTArray<T>& C, const OTArray<T>& log_a, const OTArray<T>& log_b, const OTArray<T>& v0,
                          double tau, int iters, int threads, bool want_plan, double mass_rtol) {
  const ot::Dims d = dims_of(C);
  check_counts(threads, iters);
  expect_shape(log_a, {d.batch, d.n}, "log_a");
  expect_shape(log_b, {d.batch, d.m}, "log_b");
  expect_shape(v0, {d.batch, d.m}, "v0");
  OTArray<T> us({static_cast<int64_t>(iters), d.batch, d.n}), vs({static_cast<int64_t>(iters) + 1, d.batch, d.m});
  OTArray<T> P(want_plan ? std::vector<int64_t>{d.batch, d.n, d.m} : std::vector<int64_t>{0});
  py::array_t<uint8_t> ok(d.batch), valid(d.batch);
  {
    py::gil_scoped_release no_gil;
    ot::sinkhorn_forward<T>(C.data(), log_a.data(), log_b.data(), v0.data(), d, static_cast<T>(tau), iters, mass_rtol,
                            us.mutable_data(), vs.mutable_data(), want_plan ? P.mutable_data() : nullptr,
                            ok.mutable_data(), valid.mutable_data(), threads);
  }
  if (!want_plan) return py::make_tuple(us, vs, py::none(), ok, valid);
  return py::make_tuple(us, vs, P, ok, valid);
}

template <typename T>
py::tuple ot_sinkhorn_bwd(const OTArray<T>& C, const OTArray<T>& log_a, const OTArray<T>& log_b, const OTArray<T>& us,
                          const OTArray<T>& vs, const std::optional<OTArray<T>>& grad_P, double tau, int threads) {
  const ot::Dims d = dims_of(C);
  if (us.ndim() != 3) throw py::value_error("us must have shape (L, B, n)");
  const int iters = static_cast<int>(us.shape(0));
  check_counts(threads, iters);
  expect_shape(log_a, {d.batch, d.n}, "log_a");
  expect_shape(log_b, {d.batch, d.m}, "log_b");
  expect_shape(us, {iters, d.batch, d.n}, "us");
  expect_shape(vs, {iters + 1, d.batch, d.m}, "vs");
  if (grad_P) expect_shape(*grad_P, {d.batch, d.n, d.m}, "grad_P");
  OTArray<T> grad_C({d.batch, d.n, d.m}), ga({d.batch, d.n}), gb({d.batch, d.m}), gv0({d.batch, d.m});
  py::array_t<uint8_t> ok(d.batch);
  {
    py::gil_scoped_release no_gil;
    ot::sinkhorn_backward<T>(C.data(), log_a.data(), log_b.data(), us.data(), vs.data(),
                             grad_P ? grad_P->data() : nullptr, d, static_cast<T>(tau), iters, grad_C.mutable_data(),
                             ga.mutable_data(), gb.mutable_data(), gv0.mutable_data(), ok.mutable_data(), threads);
  }
  return py::make_tuple(grad_C, ga, gb, gv0, ok);
}

template <typename T>
py::tuple ot_mesh_fwd(const OTArray<T>& C, const OTArray<T>& noise, const OTArray<T>& log_a, const OTArray<T>& log_b,
                      double tau, double noise_scale, int steps, int iters, double lr, bool reuse_uv, int threads,
                      double mass_rtol) {
  const ot::Dims d = dims_of(C);
  check_counts(threads, iters);
  if (steps < 1) throw py::value_error("n_mesh_iters must be >= 1");
  expect_shape(noise, {d.batch, d.n, d.m}, "noise");
  expect_shape(log_a, {d.batch, d.n}, "log_a");
  expect_shape(log_b, {d.batch, d.m}, "log_b");
  OTArray<T> C_T({d.batch, d.n, d.m}), u({d.batch, d.n}), v({d.batch, d.m});
  py::array_t<uint8_t> ok(d.batch), valid(d.batch);
  {
    py::gil_scoped_release no_gil;
    ot::mesh_forward<T>(C.data(), noise.data(), log_a.data(), log_b.data(), d, static_cast<T>(tau),
                        static_cast<T>(noise_scale), steps, iters, static_cast<T>(lr), reuse_uv, mass_rtol,
                        C_T.mutable_data(), u.mutable_data(), v.mutable_data(), ok.mutable_data(),
                        valid.mutable_data(), threads);
  }
  return py::make_tuple(C_T, u, v, ok, valid);
}

template <typename T>
void bind_ot(py::module_& m) {
  m.def("sinkhorn_fwd", &ot_sinkhorn_fwd<T>, py::arg("C"), py::arg("log_a"), py::arg("log_b"), py::arg("v0"),
        py::arg("tau"), py::arg("n_iters"), py::arg("threads"), py::arg("want_plan") = false,
        py::arg("mass_rtol") = 1e-4,
        "(us (L, B, n), vs (L + 1, B, m), P (B, n, m) or None, ok (B,), valid (B,) uint8):\n"
        "kernels.torch_ot.sinkhorn_fwd's scaling form, per element in cache, and with want_plan the plan\n"
        "exp(-C / tau + u_L + v_L). ok = 0 marks elements whose accuracy checks failed, valid = 0 those whose\n"
        "inputs fail kernels/_checks.py's value checks (not solved); their outputs are unspecified.");
  m.def("sinkhorn_bwd", &ot_sinkhorn_bwd<T>, py::arg("C"), py::arg("log_a"), py::arg("log_b"), py::arg("us"),
        py::arg("vs"), py::arg("grad_P"), py::arg("tau"), py::arg("threads"),
        "(grad_C, grad_log_a, grad_log_b, grad_v0, ok): kernels.torch_ot.sinkhorn_bwd's scaling form;\n"
        "grad_P None is the gradient of the summed entropy.");
  m.def("mesh_fwd", &ot_mesh_fwd<T>, py::arg("C"), py::arg("noise"), py::arg("log_a"), py::arg("log_b"),
        py::arg("tau"), py::arg("noise_scale"), py::arg("n_mesh_iters"), py::arg("n_iters"), py::arg("lr"),
        py::arg("reuse_uv"), py::arg("threads"), py::arg("mass_rtol") = 1e-4,
        "(C_T (B, n, m), u (B, n), v (B, m), ok (B,), valid (B,) uint8): the MESH loop of\n"
        "kernels.torch_ot.mesh_fwd; ok and valid as in sinkhorn_fwd (valid also asks for finite noise).");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() =
      "Batched exact optimal transport on LEMON's network simplex (private; use kernels.emd), and fused CPU\n"
      "Sinkhorn / MESH loops (private; use kernels.sinkhorn / kernels.mesh with backend='cpp').";
  bind_ot<float>(m);
  bind_ot<double>(m);

  py::enum_<emd::Status>(m, "Status", "Outcome of one problem in a batch (POT's ot/lp style).")
      .value("OPTIMAL", emd::Status::kOptimal, "exact optimum of the integer-scaled problem")
      .value("INFEASIBLE", emd::Status::kInfeasible, "LEMON found no feasible flow")
      .value("UNBOUNDED", emd::Status::kUnbounded, "LEMON reported an unbounded problem")
      .value("INVALID_COST", emd::Status::kInvalidCost, "a cost is NaN or Inf")
      .value("INVALID_MARGINAL", emd::Status::kInvalidMarginal,
             "a or b has a negative or non-finite entry, or a total mass that is 0 or overflows")
      .value("MASS_MISMATCH", emd::Status::kMassMismatch,
             "|sum a - sum b| > mass_rtol * max(sum a, sum b)")
      .value("NOT_SOLVED", emd::Status::kNotSolved, "the batch was interrupted first");

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
}
