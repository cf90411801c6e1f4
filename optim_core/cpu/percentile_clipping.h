// Percentile clipping's per-tensor history and scale (spec, "Percentile clipping").
#pragma once

#include <cstdint>

namespace optd::core::cpu {

// Records `sum_squares` (sum of g^2 of this step's gradient) in `gnorm_vec` (kGnormHistory
// entries) for step number `step` (>= 1, already incremented), and returns the factor the
// gradient is multiplied by: sqrt of the k-th smallest recorded value over the current norm,
// or 1 when the current norm is not above it. `percentile` in [1, 100).
//
// Matches the reference (checked against the golden case fp32_pclip5_20000): at step 1 every
// slot is set; later only slot step % 100 is set (not accumulated).
float UpdateGnormHistory(float* gnorm_vec, int64_t step, int percentile, float sum_squares);

}  // namespace optd::core::cpu
