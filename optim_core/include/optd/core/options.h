// Hyperparameters of PagedAdamW8bit, with the reference's defaults and validation rules
// (see docs/algorithm.md, "Hyperparameters, and what is rejected").
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace optd::core {

// Block size of the 8-bit blockwise states: one absmax per this many consecutive elements.
inline constexpr int64_t kBlockSize = 256;
// Length of the percentile-clipping history (gnorm_vec).
inline constexpr int kGnormHistory = 100;

struct AdamWOptions {
  float lr = 1e-3f;                  // > 0
  float beta1 = 0.9f;                // in [0, 1)
  float beta2 = 0.999f;              // in [0, 1)
  float eps = 1e-8f;                 // >= 0
  float weight_decay = 1e-2f;        // >= 0, decoupled, applied after the Adam update
  bool amsgrad = false;              // true is rejected
  int optim_bits = 32;               // accepted for signature compatibility; only 32 allowed
  int64_t min_8bit_size = 4096;      // numel < this keeps fp32 states (32-bit path); >= 0
  int percentile_clipping = 100;     // 100 = off; [1, 100]
  bool block_wise = true;            // false is rejected
};

// OK, or InvalidArgument whose message names the offending field, e.g.
// "lr must be > 0, got -1" or "PagedAdamW8bit does not support amsgrad=True".
[[nodiscard]] absl::Status ValidateOptions(const AdamWOptions& options);

}  // namespace optd::core
