#include "optd/core/options.h"

#include <cmath>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace optd::core {
namespace {

// Expects InvalidArgument whose message contains `field`.
void ExpectRejected(const AdamWOptions& o, const std::string& field) {
  const absl::Status s = ValidateOptions(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_NE(std::string(s.message()).find(field), std::string::npos) << s.message();
}

TEST(OptionsTest, DefaultsAreValid) { EXPECT_TRUE(ValidateOptions(AdamWOptions{}).ok()); }

TEST(OptionsTest, RejectsAmsgrad) {
  AdamWOptions o;
  o.amsgrad = true;
  ExpectRejected(o, "PagedAdamW8bit does not support amsgrad=True");
}

TEST(OptionsTest, RejectsOptimBitsOtherThan32) {
  for (int bits : {8, 16, 0, -32}) {
    AdamWOptions o;
    o.optim_bits = bits;
    ExpectRejected(o, "optim_bits");
  }
}

TEST(OptionsTest, RejectsBlockWiseFalse) {
  AdamWOptions o;
  o.block_wise = false;
  ExpectRejected(o, "block_wise");
}

TEST(OptionsTest, RejectsNonPositiveLr) {
  for (float lr : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                   std::numeric_limits<float>::infinity()}) {
    AdamWOptions o;
    o.lr = lr;
    ExpectRejected(o, "lr must be > 0");
  }
  AdamWOptions o;
  o.lr = -1;
  EXPECT_EQ(ValidateOptions(o).message(), "lr must be > 0, got -1");
}

TEST(OptionsTest, RejectsBetasOutsideUnitInterval) {
  for (float b : {-0.1f, 1.0f, 1.5f, std::numeric_limits<float>::quiet_NaN()}) {
    AdamWOptions o1;
    o1.beta1 = b;
    ExpectRejected(o1, "beta1");
    AdamWOptions o2;
    o2.beta2 = b;
    ExpectRejected(o2, "beta2");
  }
  AdamWOptions zero;
  zero.beta1 = 0.0f;
  zero.beta2 = 0.0f;
  EXPECT_TRUE(ValidateOptions(zero).ok());
}

TEST(OptionsTest, RejectsNegativeEps) {
  AdamWOptions o;
  o.eps = -1e-8f;
  ExpectRejected(o, "eps");
  o.eps = 0.0f;
  EXPECT_TRUE(ValidateOptions(o).ok());
}

TEST(OptionsTest, RejectsNegativeWeightDecay) {
  AdamWOptions o;
  o.weight_decay = -0.01f;
  ExpectRejected(o, "weight_decay");
  o.weight_decay = 0.0f;
  EXPECT_TRUE(ValidateOptions(o).ok());
}

TEST(OptionsTest, RejectsPercentileClippingOutsideRange) {
  for (int p : {0, -5, 101, 1000}) {
    AdamWOptions o;
    o.percentile_clipping = p;
    ExpectRejected(o, "percentile_clipping");
  }
  for (int p : {1, 5, 99, 100}) {
    AdamWOptions o;
    o.percentile_clipping = p;
    EXPECT_TRUE(ValidateOptions(o).ok()) << p;
  }
}

TEST(OptionsTest, RejectsNegativeMin8BitSize) {
  AdamWOptions o;
  o.min_8bit_size = -1;
  ExpectRejected(o, "min_8bit_size");
}

}  // namespace
}  // namespace optd::core
