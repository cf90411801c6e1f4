// A small persistent pool of worker threads that runs "task 0..n-1" jobs, the caller helping.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace optd::core::cpu {

// Thread safety: Run may be called from several threads; their jobs run one after another.
class ThreadPool {
 public:
  // `num_threads` counts the calling thread: 1 means no workers; 0 means all hardware threads.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) once for every i in [0, num_tasks), spread over the workers and the caller, and
  // returns when all calls have returned. Tasks are claimed one at a time, so uneven tasks
  // balance. Allocates nothing.
  void Run(int64_t num_tasks, absl::FunctionRef<void(int64_t)> fn);

 private:
  void WorkerLoop();
  void Drain();

  std::mutex run_mu_;  // one job at a time

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  uint64_t generation_ = 0;  // GUARDED_BY(mu_): bumped per job
  int busy_workers_ = 0;     // GUARDED_BY(mu_)
  bool stop_ = false;        // GUARDED_BY(mu_)

  // The current job; written under mu_ before generation_ is bumped.
  absl::FunctionRef<void(int64_t)>* fn_ = nullptr;
  int64_t num_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};

  std::vector<std::thread> workers_;
};

}  // namespace optd::core::cpu
