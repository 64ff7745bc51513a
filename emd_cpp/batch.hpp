// A batch of independent transport problems solved by the calling thread and helper threads.
//
// The helpers are started per batch (tens of microseconds, small next to one solve) and all threads
// share an atomic index into the batch; what is expensive to build (the graph and LEMON's arrays)
// comes from SolverCache and outlives the batch. Starting threads per batch keeps the module free of
// process-wide threads, which would not survive fork() and would need care at interpreter exit.
// The calling thread works too, so a helper that the OS schedules late (a busy machine) delays
// nothing, and a batch run with one thread starts none.
// Nothing here touches Python: the caller passes a `keep_going` callback, called on the calling
// thread about every `interval`; when it returns false the batch is cancelled, and it stops after
// the problems already being solved (at most one per thread).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace emd {

struct BatchArrays {
  const double* C;  // (batch, n, m)
  const double* a;  // (batch, n)
  const double* b;  // (batch, m)
  double* P;        // (batch, n, m), zero-filled by the caller
  int8_t* status;   // (batch,), Status values; entries never taken up keep their initial value
  int64_t batch;
  int n, m;
  double mass_rtol;  // allowed relative difference of sum a and sum b
};

class BatchRun {
 public:
  // Starts min(threads, batch) - 1 helper threads; throws (after stopping any it started) if it
  // cannot.
  BatchRun(const BatchArrays& arrays, int threads);
  ~BatchRun();
  BatchRun(const BatchRun&) = delete;
  BatchRun& operator=(const BatchRun&) = delete;

  // Solves problems on the calling thread until none are left, then waits for the helpers, calling
  // keep_going() about every `interval` throughout (and no more once it has returned false).
  // Returns the first exception any thread raised, or null.
  std::exception_ptr run(const std::function<bool()>& keep_going, std::chrono::milliseconds interval);

 private:
  void solve_until_done(const std::function<bool()>* keep_going, std::chrono::milliseconds interval);
  void helper();
  bool poll(const std::function<bool()>& keep_going);
  void record(std::exception_ptr error);

  BatchArrays arrays_;
  std::atomic<int64_t> next_{0};
  std::atomic<bool> cancelled_{false};
  std::mutex mutex_;
  std::condition_variable finished_;
  int running_ = 0;  // helpers still working
  std::exception_ptr error_;
  std::vector<std::thread> helpers_;
};

}  // namespace emd
