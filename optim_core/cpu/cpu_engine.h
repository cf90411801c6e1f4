// The CPU engine: parameter groups in host memory, updated by a persistent thread pool.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "cpu/thread_pool.h"
#include "optd/core/engine.h"

namespace optd::core::cpu {

// What the engine and its groups share; groups keep it alive, so a group may outlive the engine.
// Thread safety: the counters are atomic; the pool serializes its jobs.
struct EngineShared {
  explicit EngineShared(int num_threads) : pool(num_threads) {}
  ThreadPool pool;
  std::atomic<int64_t> weight_bytes{0};
  std::atomic<int64_t> state_bytes{0};
  std::atomic<int64_t> nonfinite_gradient_elements{0};
};

// Thread safety: thread-safe.
class CpuEngine final : public Engine {
 public:
  explicit CpuEngine(const EngineOptions& options);

  Backend backend() const override { return Backend::kCpu; }
  absl::StatusOr<std::unique_ptr<ParamGroup>> CreateGroup(const GroupSpec& spec) override;
  EngineStats Stats() const override;

 private:
  std::shared_ptr<EngineShared> shared_;
};

// InvalidArgument for a negative num_threads.
absl::StatusOr<std::unique_ptr<Engine>> CreateCpuEngine(const EngineOptions& options);

}  // namespace optd::core::cpu
