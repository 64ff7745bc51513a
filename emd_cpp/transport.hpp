// Exact discrete optimal transport on LEMON's network simplex, one problem at a time, plus a cache
// that keeps one bipartite graph per shape and hands out solver instances (one per worker thread).
//
// Exactness. NetworkSimplex is run with 64-bit integer flows and 64-bit integer costs, so every pivot
// is exact and the algorithm terminates at an optimal basis (LEMON keeps strongly feasible trees,
// which rules out cycling). Float inputs are mapped to integers as follows:
//   - supplies: each marginal w is scaled to the common integer total S = 2^52 with llround, and the
//     difference between S and the sum of the rounded entries (at most len + 1 units) is spread one
//     unit at a time over the entries, so both sides sum to exactly S ("rounding repair"); the plan
//     is flow / S * M with M = (sum a + sum b) / 2, so its rows sum to a_i M / sum(a) and its
//     columns to b_j M / sum(b), to within 2 (len + 1) 2^-52 M in L1.
//   - costs: shifted by min C and rounded to a grid of 2^K steps over [min C, max C], with
//     K = min(52, 60 - ceil(log2(n + m))). Rounding moves each cost by at most h / 2 with
//     h = (max C - min C) 2^-K, so the returned plan costs at most h * M more than the optimum
//     under the true costs (for the rounded marginals).
//   - overflow: LEMON's artificial cost for integer costs is ART = 2^62, node potentials stay in
//     [-(N-1) Cmax, ART + (N-1) Cmax] (N = n + m nodes, Cmax = 2^K), and every reduced cost or
//     potential update it forms is bounded by ART + (2N - 1) Cmax <= 2^62 + 2^61 < 2^63.
#pragma once

#include <lemon/network_simplex.h>
#include <lemon/static_graph.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "status.hpp"

namespace emd {

constexpr int64_t kSupplyTotal = int64_t{1} << 52;

// Number of bits of the integer cost grid for a graph with `nodes` nodes (see the header comment).
int cost_bits(int64_t nodes);

// Largest n * m the solver accepts: LEMON indexes arcs (n m real + 2 (n + m) artificial) with int.
bool shape_fits(int64_t n, int64_t m);

using Graph = lemon::StaticDigraph;

// Complete bipartite digraph from `sources` supply nodes (ids 0..sources-1) to `targets` demand
// nodes (ids sources..sources+targets-1); the arc from source s to target t has id s * targets + t.
std::shared_ptr<const Graph> make_bipartite_graph(int sources, int targets);

// How a (n, m) problem is laid out for LEMON, chosen from timings on this project's shapes:
//   - the smaller side supplies and the larger side demands: LEMON's initial pivots then give every
//     node of the larger side its cheapest arc, a good start (up to 2x fewer pivots for n >> m);
//   - CANDIDATE_LIST pivoting for very elongated problems (larger / smaller side >= 100, e.g.
//     (4096, 11): 2x faster than BLOCK_SEARCH), BLOCK_SEARCH (LEMON's default) otherwise.
struct Layout {
  bool transposed;  // columns supply (n > m)
  int sources, targets;
  lemon::NetworkSimplex<Graph, int64_t, int64_t>::PivotRule pivot_rule;
};
Layout layout_for(int n, int m);

class TransportSolver {
 public:
  // `graph` must be make_bipartite_graph(layout_for(n, m).sources, layout_for(n, m).targets).
  TransportSolver(std::shared_ptr<const Graph> graph, int n, int m);
  TransportSolver(const TransportSolver&) = delete;
  TransportSolver& operator=(const TransportSolver&) = delete;

  int rows() const { return n_; }
  int cols() const { return m_; }

  // C: (n, m) row-major costs, a: (n,), b: (m,), P: (n, m) output plan; all float64. The inputs
  // are checked first (costs, then a, then b, then the masses). P is written in full when the
  // status is kOptimal and left untouched otherwise.
  Status solve(const double* C, const double* a, const double* b, double* P, double mass_rtol);

 private:
  using Simplex = lemon::NetworkSimplex<Graph, int64_t, int64_t>;

  int n_, m_;
  Layout layout_;
  std::shared_ptr<const Graph> graph_;  // the simplex keeps a reference into it
  Simplex simplex_;
  std::vector<int64_t> supply_;  // (n + m,): supplies (+) then demands (-), in integer units
  std::vector<int64_t> cost_;    // (n m,): quantized costs in arc-id order
};

// Keeps the graph of each recently used (n, m) (at most kMaxShapes) and the idle solvers built on it,
// so that a batch (and every later call with the same shape) constructs graph and solver arrays
// only once per worker. Idle solvers are kept up to kMaxIdleArcs arcs in all (about 60 bytes per
// arc), so a one-off huge problem does not pin gigabytes. Thread-safe; a solver is used by one
// thread at a time.
class SolverCache {
 public:
  static SolverCache& instance();

  std::unique_ptr<TransportSolver> acquire(int n, int m);
  void release(std::unique_ptr<TransportSolver> solver);

  struct Stats {
    uint64_t graphs_built, solvers_built, problems_solved;
  };
  // Counters since the module was loaded: graphs and solvers constructed, problems taken up.
  Stats stats() const;
  void count_problem() { problems_solved_.fetch_add(1, std::memory_order_relaxed); }

 private:
  struct Entry {
    std::shared_ptr<const Graph> graph;
    std::vector<std::unique_ptr<TransportSolver>> idle;
    uint64_t last_used = 0;
  };
  static constexpr size_t kMaxShapes = 8;
  static constexpr int64_t kMaxIdleArcs = int64_t{1} << 25;

  void evict_oldest();  // mutex_ held

  mutable std::mutex mutex_;
  uint64_t graphs_built_ = 0;
  uint64_t solvers_built_ = 0;
  std::atomic<uint64_t> problems_solved_{0};
  std::map<std::pair<int, int>, Entry> entries_;
  uint64_t clock_ = 0;
  int64_t idle_arcs_ = 0;  // arcs of all idle solvers
};

}  // namespace emd
