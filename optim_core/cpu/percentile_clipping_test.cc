#include "cpu/percentile_clipping.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "optd/core/options.h"

namespace optd::core::cpu {
namespace {

TEST(PercentileClippingTest, FirstStepFillsEverySlot) {
  std::vector<float> h(kGnormHistory, 0.0f);
  EXPECT_EQ(UpdateGnormHistory(h.data(), 1, 5, 4.0f), 1.0f);
  for (float x : h) EXPECT_EQ(x, 4.0f);
}

TEST(PercentileClippingTest, LaterStepsSetSlotStepMod100) {
  std::vector<float> h(kGnormHistory, 0.0f);
  UpdateGnormHistory(h.data(), 1, 5, 4.0f);
  UpdateGnormHistory(h.data(), 2, 5, 9.0f);
  EXPECT_EQ(h[2], 9.0f);  // set, not accumulated
  EXPECT_EQ(h[1], 4.0f);
  UpdateGnormHistory(h.data(), 102, 5, 1.0f);
  EXPECT_EQ(h[2], 1.0f);  // wraps
}

TEST(PercentileClippingTest, ScalesDownAboveThePercentile) {
  std::vector<float> h(kGnormHistory, 0.0f);
  UpdateGnormHistory(h.data(), 1, 5, 4.0f);  // all slots 4: clip = sqrt(4) = 2
  // Current sum 16: norm 4 > clip 2, so the gradient is scaled by 2 / 4.
  EXPECT_FLOAT_EQ(UpdateGnormHistory(h.data(), 2, 5, 16.0f), 0.5f);
  // Below the percentile: no scaling.
  EXPECT_EQ(UpdateGnormHistory(h.data(), 3, 5, 1.0f), 1.0f);
}

TEST(PercentileClippingTest, UsesTheKthSmallest) {
  std::vector<float> h(kGnormHistory);
  for (int i = 0; i < kGnormHistory; ++i) h[i] = static_cast<float>(100 + i);
  // Step 250 writes slot 50; sorted[10] is then 110 (slot 50's old 150 is replaced by 10000).
  const float scale = UpdateGnormHistory(h.data(), 250, 10, 10000.0f);
  EXPECT_FLOAT_EQ(scale, std::sqrt(110.0f) / 100.0f);
}

}  // namespace
}  // namespace optd::core::cpu
