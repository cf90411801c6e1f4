// The device memory of percentile clipping for one group: each tensor's gradient-norm history
// (gnorm_vec, kGnormHistory floats) and scale, and the per-block sums of g^2 of a step.
//
// Thread safety: not thread-safe; owned and serialized by one group.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/cuda_resources.h"
#include "optd/core/options.h"

namespace optd::core::internal::cuda {

class ClipBuffers {
 public:
  // History and scales of `block_offset.size() - 1` tensors, zeroed on `stream`; tensor t's
  // blocks of 256 are [block_offset[t], block_offset[t + 1]) among the group's.
  static absl::StatusOr<ClipBuffers> Create(std::vector<int64_t> block_offset,
                                            cudaStream_t stream);
  // The partial sums, allocated on first need and kept.
  absl::Status EnsurePartials();
  // Zeroes every tensor's history on `stream`.
  absl::Status ClearHistory(cudaStream_t stream);
  int64_t device_bytes() const { return clip_.bytes() + partials_.bytes(); }

  int num_tensors() const { return static_cast<int>(block_offset_.size()) - 1; }
  int64_t num_blocks(int t) const { return block_offset_[t + 1] - block_offset_[t]; }
  float* gnorm_vec(int t) const {
    return clip_.as<float>() + static_cast<size_t>(t) * kGnormHistory;
  }
  float* scale(int t) const {
    return clip_.as<float>() + static_cast<size_t>(num_tensors()) * (kGnormHistory + 1) + t;
  }
  // The partial sums of tensor t from element `offset` (a multiple of 256); null before
  // EnsurePartials.
  float* partials(int t, int64_t offset) const {
    if (!partials_) return nullptr;
    return partials_.as<float>() + block_offset_[t] + offset / kBlockSize;
  }

 private:
  std::vector<int64_t> block_offset_;
  DeviceBuffer clip_;      // gnorm_vec[T][100], (unused)[T], scale[T]
  DeviceBuffer partials_;  // sum(g^2) per block, when clipping
};

}  // namespace optd::core::internal::cuda
