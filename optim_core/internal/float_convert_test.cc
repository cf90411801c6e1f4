#include "internal/float_convert.h"

#include <cmath>
#include <limits>
#include <random>

#include "gtest/gtest.h"

namespace optd::core::internal {
namespace {

// Slow, obviously correct fp32 -> fp16 with round to nearest even, through double.
uint16_t HalfByDouble(float f) {
  const uint32_t sign = (FloatBits(f) >> 16) & 0x8000u;
  if (std::isnan(f)) return 0x7e00u | sign;
  double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to infinity
  // Quantum of the binade (subnormals share the smallest one, 2^-24).
  int e = a == 0 ? -24 : std::ilogb(a) - 10;
  if (e < -24) e = -24;
  const double q = std::ldexp(1.0, e);
  const double n = std::nearbyint(a / q);  // ties to even under the default rounding mode
  const double r = n * q;
  // Re-encode r.
  if (r == 0) return static_cast<uint16_t>(sign);
  int exp = std::ilogb(r);
  if (exp < -14) {  // subnormal
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r / std::ldexp(1.0, -24)));
  }
  const uint32_t mant = static_cast<uint32_t>((r / std::ldexp(1.0, exp) - 1.0) * 1024.0);
  return static_cast<uint16_t>(sign | ((exp + 15) << 10) | mant);
}

TEST(FloatConvertTest, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    if (nan) {
      EXPECT_TRUE(std::isnan(f)) << h;
      continue;
    }
    EXPECT_EQ(FloatToHalf(f), h) << h;
  }
}

TEST(FloatConvertTest, HalfValuesAreExact) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7c00)));
}

TEST(FloatConvertTest, FloatToHalfRoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // overflow to infinity
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie at the bottom: to zero
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::quiet_NaN()) & 0x7e00, 0x7e00);

  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const float f = BitsToFloat(bits(rng));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToHalf(f), HalfByDouble(f)) << f;
  }
  std::uniform_real_distribution<float> near(-70000.0f, 70000.0f);
  for (int i = 0; i < 200000; ++i) {
    const float f = near(rng) * (i % 2 ? 1.0f : 1e-4f);
    ASSERT_EQ(FloatToHalf(f), HalfByDouble(f)) << f;
  }
}

TEST(FloatConvertTest, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(BFloat16ToFloat(0x3f80), 1.0f);
  // Halfway between 0x3f80 and 0x3f81: to even (0x3f80); between 0x3f81 and 0x3f82: 0x3f82.
  EXPECT_EQ(FloatToBFloat16(BitsToFloat(0x3f808000u)), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(BitsToFloat(0x3f818000u)), 0x3f82);
  EXPECT_EQ(FloatToBFloat16(BitsToFloat(0x3f808001u)), 0x3f81);
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(FloatToBFloat16(BitsToFloat(0x7f7fffffu)), 0x7f80);  // max float rounds up to inf
  const uint16_t nan = FloatToBFloat16(BitsToFloat(0x7f800001u));  // a NaN must stay NaN
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(nan)));
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = BFloat16ToFloat(static_cast<uint16_t>(h));
    if (!std::isnan(f)) {
      EXPECT_EQ(FloatToBFloat16(f), h) << h;
    }
  }
}

}  // namespace
}  // namespace optd::core::internal
