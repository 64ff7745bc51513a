#include "transport.hpp"

#include <algorithm>
#include <climits>
#include <cmath>

namespace emd {
namespace {

// Read-only LEMON map over a flat array indexed by the graph's node or arc id.
struct ArrayMap {
  using Value = int64_t;
  const int64_t* data;
  template <typename Item>
  int64_t operator[](const Item& item) const {
    return data[Graph::id(item)];
  }
};

int ceil_log2(int64_t x) {
  int k = 0;
  while ((int64_t{1} << k) < x) ++k;
  return k;
}

// Scales the non-negative weights w (len,) with total `total` > 0 to integers summing to exactly
// kSupplyTotal, each within a few units of w_i * kSupplyTotal / total, times `sign`.
void scale_marginal(const double* w, int len, double total, int64_t sign, int64_t* out) {
  const double units = static_cast<double>(kSupplyTotal);
  int64_t sum = 0;
  for (int i = 0; i < len; ++i) {
    out[i] = std::llround(w[i] / total * units);  // w / total <= 1 (about): no overflow for tiny totals
    sum += out[i];
  }
  // Each entry is off by at most 0.5 + w_i / total units from w_i / total * S, and the rounded
  // total is off by at most len / 2 units, so |deficit| <= len + 1. Spread it one unit per entry
  // and pass; entries with zero weight never receive mass, and no entry goes below zero.
  int64_t deficit = kSupplyTotal - sum;
  while (deficit != 0) {
    for (int i = 0; i < len && deficit != 0; ++i) {
      if (deficit > 0 && w[i] > 0) {
        ++out[i];
        --deficit;
      } else if (deficit < 0 && out[i] > 0) {
        --out[i];
        ++deficit;
      }
    }
  }
  for (int i = 0; i < len; ++i) out[i] *= sign;
}

// Sum of a marginal, or -1 if an entry is negative or not finite or the sum is not positive.
double checked_mass(const double* w, int len) {
  double total = 0.0;
  for (int i = 0; i < len; ++i) {
    if (!(w[i] >= 0.0) || !std::isfinite(w[i])) return -1.0;
    total += w[i];
  }
  return (total > 0.0 && std::isfinite(total)) ? total : -1.0;
}

}  // namespace

int cost_bits(int64_t nodes) { return std::min(52, 60 - ceil_log2(nodes)); }

bool shape_fits(int64_t n, int64_t m) {
  if (n < 1 || m < 1 || n > INT_MAX || m > INT_MAX) return false;
  // Arc ids, artificial arcs included, and the node count are ints inside LEMON.
  return n * m + 2 * (n + m) + 1 < INT_MAX;
}

std::shared_ptr<const Graph> make_bipartite_graph(int sources, int targets) {
  std::vector<std::pair<int, int>> arcs;
  arcs.reserve(static_cast<size_t>(sources) * targets);
  for (int s = 0; s < sources; ++s) {
    for (int t = 0; t < targets; ++t) arcs.emplace_back(s, sources + t);
  }
  auto graph = std::make_shared<Graph>();
  graph->build(sources + targets, arcs.begin(), arcs.end());  // sorted by source: id = s * targets + t
  return graph;
}

Layout layout_for(int n, int m) {
  using Simplex = lemon::NetworkSimplex<Graph, int64_t, int64_t>;
  const bool transposed = n > m;
  const int small = transposed ? m : n, large = transposed ? n : m;
  const auto rule = large >= 100 * static_cast<int64_t>(small) ? Simplex::CANDIDATE_LIST : Simplex::BLOCK_SEARCH;
  return {transposed, small, large, rule};
}

TransportSolver::TransportSolver(std::shared_ptr<const Graph> graph, int n, int m)
    : n_(n),
      m_(m),
      layout_(layout_for(n, m)),
      graph_(std::move(graph)),
      simplex_(*graph_),
      supply_(static_cast<size_t>(n) + m),
      cost_(static_cast<size_t>(n) * m) {}

Status TransportSolver::solve(const double* C, const double* a, const double* b, double* P,
                              double mass_rtol) {
  const int64_t arcs = static_cast<int64_t>(n_) * m_;
  double lo = C[0], hi = C[0];
  for (int64_t e = 0; e < arcs; ++e) {
    if (!std::isfinite(C[e])) return Status::kInvalidCost;
    lo = std::min(lo, C[e]);
    hi = std::max(hi, C[e]);
  }
  const double mass_a = checked_mass(a, n_);
  const double mass_b = checked_mass(b, m_);
  if (mass_a < 0 || mass_b < 0) return Status::kInvalidMarginal;
  if (std::abs(mass_a - mass_b) > mass_rtol * std::max(mass_a, mass_b)) return Status::kMassMismatch;

  // Supplies first: a then -b, or b then -a when the columns supply.
  if (layout_.transposed) {
    scale_marginal(b, m_, mass_b, +1, supply_.data());
    scale_marginal(a, n_, mass_a, -1, supply_.data() + m_);
  } else {
    scale_marginal(a, n_, mass_a, +1, supply_.data());
    scale_marginal(b, m_, mass_b, -1, supply_.data() + n_);
  }

  // Halves keep hi - lo finite for any finite costs.
  const double half_lo = 0.5 * lo;
  const double half_range = 0.5 * hi - half_lo;
  const int bits = cost_bits(static_cast<int64_t>(n_) + m_);
  const int64_t top = int64_t{1} << bits;
  // The arc of entry (i, j) has id i * m + j, or j * n + i when the columns supply.
  const int64_t row_stride = layout_.transposed ? 1 : m_, col_stride = layout_.transposed ? n_ : 1;
  auto arc_of = [&](int i, int j) { return i * row_stride + j * col_stride; };
  if (half_range > 0) {
    for (int i = 0; i < n_; ++i) {
      for (int j = 0; j < m_; ++j) {
        const double unit = (0.5 * C[i * int64_t{m_} + j] - half_lo) / half_range;  // in [0, 1]
        cost_[arc_of(i, j)] = std::min(top, std::max<int64_t>(0, std::llround(std::ldexp(unit, bits))));
      }
    }
  } else {
    std::fill(cost_.begin(), cost_.end(), 0);
  }

  simplex_.resetParams();
  simplex_.supplyMap(ArrayMap{supply_.data()});
  simplex_.costMap(ArrayMap{cost_.data()});
  switch (simplex_.run(layout_.pivot_rule)) {
    case Simplex::OPTIMAL:
      break;
    case Simplex::INFEASIBLE:
      return Status::kInfeasible;
    default:
      return Status::kUnbounded;
  }

  // flow / S is exact (S is a power of two and flow <= S); one rounding when scaling by the mass.
  const double mass = 0.5 * mass_a + 0.5 * mass_b;
  const double inv_total = 1.0 / static_cast<double>(kSupplyTotal);
  for (int i = 0; i < n_; ++i) {
    for (int j = 0; j < m_; ++j) {
      const auto flow = simplex_.flow(Graph::arc(static_cast<int>(arc_of(i, j))));
      P[i * int64_t{m_} + j] = static_cast<double>(flow) * inv_total * mass;
    }
  }
  return Status::kOptimal;
}

SolverCache& SolverCache::instance() {
  // Leaked on purpose: worker threads may still return solvers while the interpreter shuts down.
  static SolverCache* cache = new SolverCache();
  return *cache;
}

std::unique_ptr<TransportSolver> SolverCache::acquire(int n, int m) {
  std::shared_ptr<const Graph> graph;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find({n, m});
    if (it != entries_.end()) {
      it->second.last_used = ++clock_;
      if (!it->second.idle.empty()) {
        auto solver = std::move(it->second.idle.back());
        it->second.idle.pop_back();
        idle_arcs_ -= static_cast<int64_t>(n) * m;
        return solver;
      }
      graph = it->second.graph;
    }
  }
  if (!graph) {
    // Built outside the lock; if two threads race, the first one to register it wins below.
    const Layout layout = layout_for(n, m);
    auto fresh = make_bipartite_graph(layout.sources, layout.targets);
    std::lock_guard<std::mutex> lock(mutex_);
    auto& entry = entries_[{n, m}];
    if (!entry.graph) {
      entry.graph = std::move(fresh);
      ++graphs_built_;
    }
    entry.last_used = ++clock_;
    graph = entry.graph;
    while (entries_.size() > kMaxShapes) evict_oldest();
  }
  auto solver = std::make_unique<TransportSolver>(std::move(graph), n, m);
  std::lock_guard<std::mutex> lock(mutex_);
  ++solvers_built_;
  return solver;
}

SolverCache::Stats SolverCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {graphs_built_, solvers_built_, problems_solved_.load()};
}

void SolverCache::evict_oldest() {
  auto oldest = std::min_element(entries_.begin(), entries_.end(), [](const auto& x, const auto& y) {
    return x.second.last_used < y.second.last_used;
  });
  const int64_t arcs = static_cast<int64_t>(oldest->first.first) * oldest->first.second;
  idle_arcs_ -= arcs * static_cast<int64_t>(oldest->second.idle.size());
  entries_.erase(oldest);  // solvers in use keep their graph alive through their shared_ptr
}

void SolverCache::release(std::unique_ptr<TransportSolver> solver) {
  const int64_t arcs = static_cast<int64_t>(solver->rows()) * solver->cols();
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find({solver->rows(), solver->cols()});
  if (it == entries_.end() || idle_arcs_ + arcs > kMaxIdleArcs) return;  // the solver is freed
  it->second.idle.push_back(std::move(solver));
  idle_arcs_ += arcs;
}

}  // namespace emd
