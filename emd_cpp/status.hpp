// Outcome of one problem of a batch, shared by the exact EMD solver and the Sinkhorn / MESH loops, and
// mirrored in Python as emd_cpp.Status. kernels/_checks.py turns every code but kOptimal and kLogDomain into
// the error message that names the problem and the batch element.
#pragma once

#include <cstdint>

namespace emd {

enum class Status : int8_t {
  kOptimal = 0,           // solved (EMD: an exact optimum of the integer problem; Sinkhorn / MESH: done)
  kInfeasible = 1,        // LEMON found no feasible flow (not expected for balanced supplies)
  kUnbounded = 2,         // LEMON reported an unbounded problem (not expected for finite costs)
  kInvalidCost = 3,       // a cost is NaN or Inf
  kInvalidMarginal = 4,   // a or b has a negative or non-finite entry, or a total that is 0 or overflows
  kMassMismatch = 5,      // |sum a - sum b| > mass_rtol * max(sum a, sum b)
  kNotSolved = 6,         // the batch was interrupted before this problem was taken up
  kInvalidWarmStart = 7,  // the warm-start v is NaN or +Inf somewhere, or -Inf everywhere
  kInvalidNoise = 8,      // MESH's noise is NaN or Inf somewhere
  kCostOverflow = 9,      // max |C| / tau exceeds the dtype's largest value / 64
  kLogDomain = 10,        // valid, but the scaling form is inaccurate here: the log-domain path redoes it
};

}  // namespace emd
