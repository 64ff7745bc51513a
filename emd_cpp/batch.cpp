#include "batch.hpp"

#include <algorithm>

#include "transport.hpp"

namespace emd {

BatchRun::BatchRun(const BatchArrays& arrays, int threads) : arrays_(arrays) {
  const int64_t helpers = std::max<int64_t>(1, std::min<int64_t>(threads, arrays.batch)) - 1;
  helpers_.reserve(static_cast<size_t>(helpers));
  try {
    for (int64_t t = 0; t < helpers; ++t) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ++running_;
      }
      try {
        helpers_.emplace_back(&BatchRun::helper, this);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        --running_;
        throw;
      }
    }
  } catch (...) {
    cancelled_.store(true);
    for (auto& thread : helpers_) thread.join();
    throw;
  }
}

BatchRun::~BatchRun() {
  cancelled_.store(true);
  for (auto& thread : helpers_) {
    if (thread.joinable()) thread.join();
  }
}

void BatchRun::record(std::exception_ptr error) {
  cancelled_.store(true);
  std::lock_guard<std::mutex> lock(mutex_);
  if (!error_) error_ = error;
}

bool BatchRun::poll(const std::function<bool()>& keep_going) {
  if (cancelled_.load()) return false;
  if (keep_going()) return true;
  cancelled_.store(true);
  return false;
}

void BatchRun::solve_until_done(const std::function<bool()>* keep_going, std::chrono::milliseconds interval) {
  auto& cache = SolverCache::instance();
  auto solver = cache.acquire(arrays_.n, arrays_.m);
  const int64_t plan_size = static_cast<int64_t>(arrays_.n) * arrays_.m;
  auto last_poll = std::chrono::steady_clock::now();
  while (!cancelled_.load(std::memory_order_relaxed)) {
    if (keep_going && std::chrono::steady_clock::now() - last_poll >= interval) {
      if (!poll(*keep_going)) break;
      last_poll = std::chrono::steady_clock::now();
    }
    const int64_t k = next_.fetch_add(1);
    if (k >= arrays_.batch) break;
    const Status status = solver->solve(arrays_.C + k * plan_size, arrays_.a + k * arrays_.n,
                                        arrays_.b + k * arrays_.m, arrays_.P + k * plan_size,
                                        arrays_.mass_rtol);
    arrays_.status[k] = static_cast<int8_t>(status);
    cache.count_problem();
  }
  cache.release(std::move(solver));
}

void BatchRun::helper() {
  try {
    solve_until_done(nullptr, std::chrono::milliseconds(0));
  } catch (...) {
    record(std::current_exception());
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --running_;
  }
  finished_.notify_all();
}

std::exception_ptr BatchRun::run(const std::function<bool()>& keep_going, std::chrono::milliseconds interval) {
  try {
    solve_until_done(&keep_going, interval);
  } catch (...) {
    record(std::current_exception());
  }
  bool polling = !cancelled_.load();
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (finished_.wait_for(lock, interval, [this] { return running_ == 0; })) break;
    }
    if (polling) polling = poll(keep_going);
  }
  for (auto& thread : helpers_) thread.join();
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

}  // namespace emd
