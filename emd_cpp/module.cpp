// Python binding of the batched exact EMD solver (see transport.hpp for the exactness argument and
// batch.hpp for the threading). The public, validated entry point is kernels.exact.emd.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <functional>

#include "batch.hpp"
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

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Batched exact optimal transport on LEMON's network simplex (private; use kernels.emd).";

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
