// The optimizer state of one tensor as plain typed arrays, in the reference's state_dict layout.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace optd::core {

// What bitsandbytes' state_dict holds per parameter (qmap1/qmap2 are the constant tables of
// quant_maps.h and are not repeated here; exporters add them).
struct TensorState {
  int64_t step = 0;                 // updates applied so far (the reference's state["step"])
  bool eight_bit = true;            // false: the 32-bit path (numel < min_8bit_size)
  std::vector<uint8_t> state1;      // 8-bit: codes into kSignedQuantMap, numel entries
  std::vector<uint8_t> state2;      // 8-bit: codes into kUnsignedQuantMap, numel entries
  std::vector<float> absmax1;       // 8-bit: ceil(numel / 256) block scales
  std::vector<float> absmax2;
  std::vector<float> state1_f32;    // 32-bit path: m, numel entries
  std::vector<float> state2_f32;    // 32-bit path: v, numel entries
  std::vector<float> gnorm_vec;     // 100 entries when percentile clipping is on, else empty
};

// OK when `state` has the shapes a tensor of `numel` elements needs (eight_bit decides which
// arrays), else InvalidArgument naming the array, e.g. "absmax1 has 3 entries, expected 40".
// `clipping` says whether gnorm_vec must be present.
[[nodiscard]] absl::Status ValidateTensorState(const TensorState& state, int64_t numel,
                                               bool clipping);

}  // namespace optd::core
