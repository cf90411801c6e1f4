// Counters shared by a CUDA engine and its groups (which may outlive each other's calls on other
// threads): exact byte sums over live groups and monotonic traffic counters.
// Thread safety: every field is atomic.
#pragma once

#include <atomic>
#include <cstdint>

namespace optd::core::internal::cuda {

struct EngineCounters {
  std::atomic<int64_t> weight_bytes_device{0};
  std::atomic<int64_t> state_bytes_device{0};
  std::atomic<int64_t> state_bytes_host{0};
  std::atomic<int64_t> paged_bytes_to_device{0};
  std::atomic<int64_t> paged_bytes_to_host{0};
  std::atomic<int64_t> evictions{0};
  std::atomic<int64_t> page_wait_nanos{0};
  std::atomic<int64_t> nonfinite_gradient_elements{0};
};

}  // namespace optd::core::internal::cuda
