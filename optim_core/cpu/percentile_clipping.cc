#include "cpu/percentile_clipping.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "optd/core/options.h"

namespace optd::core::cpu {

float UpdateGnormHistory(float* gnorm_vec, int64_t step, int percentile, float sum_squares) {
  const int slot = static_cast<int>(step % kGnormHistory);
  if (step == 1) {
    std::fill(gnorm_vec, gnorm_vec + kGnormHistory, sum_squares);
  } else {
    gnorm_vec[slot] = sum_squares;
  }
  std::array<float, kGnormHistory> sorted;
  std::copy(gnorm_vec, gnorm_vec + kGnormHistory, sorted.begin());
  std::sort(sorted.begin(), sorted.end());
  const float current = std::sqrt(gnorm_vec[slot]);
  const float clip = std::sqrt(sorted[percentile]);
  return current > clip ? clip / current : 1.0f;
}

}  // namespace optd::core::cpu
