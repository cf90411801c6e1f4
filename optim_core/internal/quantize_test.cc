#include "internal/quantize.h"

#include <cmath>
#include <limits>
#include <random>

#include "gtest/gtest.h"
#include "optd/core/quant_maps.h"

namespace optd::core::internal {
namespace {

// Checks x and its neighbours a few ulps away on both tables' finders.
void ExpectAgreeAround(const CodeFinder& finder, const float* table, bool is_signed, float x) {
  float y = x;
  for (int i = 0; i < 3; ++i) y = std::nextafter(y, -2.0f);
  for (int i = 0; i < 7; ++i) {
    if (y >= (is_signed ? -1.0f : 0.0f) && y <= 1.0f) {
      ASSERT_EQ(finder.Find(y), QuantizeReference(table, is_signed, y))
          << "x=" << y << " bits=" << std::hex << FloatBits(y);
    }
    y = std::nextafter(y, 2.0f);
  }
}

TEST(QuantizeTest, FinderMatchesReferenceAtEveryMidpointAndValue) {
  for (bool is_signed : {true, false}) {
    const float* table = is_signed ? kSignedQuantMap : kUnsignedQuantMap;
    const CodeFinder& finder = is_signed ? CodeFinder::Signed() : CodeFinder::Unsigned();
    for (int i = 0; i < 256; ++i) {
      ExpectAgreeAround(finder, table, is_signed, table[i]);
      if (i < 255) ExpectAgreeAround(finder, table, is_signed, (table[i] + table[i + 1]) * 0.5f);
    }
    ExpectAgreeAround(finder, table, is_signed, 0.0f);
    ExpectAgreeAround(finder, table, is_signed, -1.0f);
  }
}

TEST(QuantizeTest, FinderMatchesReferenceOnRandomValues) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::uniform_real_distribution<float> expo(-30.0f, 0.0f);
  for (int i = 0; i < 1000000; ++i) {
    // Half uniform, half log-uniform (the tables are dense near zero).
    float x = i % 2 ? uni(rng) : std::copysign(std::exp2(expo(rng)), uni(rng));
    ASSERT_EQ(CodeFinder::Signed().Find(x), QuantizeReference(kSignedQuantMap, true, x)) << x;
    x = std::fabs(x);
    ASSERT_EQ(CodeFinder::Unsigned().Find(x), QuantizeReference(kUnsignedQuantMap, false, x))
        << x;
  }
}

TEST(QuantizeTest, TiesGoToTheEvenIndex) {
  // Exactly between entries 200 and 201: the even one.
  const float mid = (kSignedQuantMap[200] + kSignedQuantMap[201]) * 0.5f;
  EXPECT_EQ(CodeFinder::Signed().Find(mid), 200);
  const float mid2 = (kSignedQuantMap[201] + kSignedQuantMap[202]) * 0.5f;
  EXPECT_EQ(CodeFinder::Signed().Find(mid2), 202);
  EXPECT_EQ(CodeFinder::Signed().Find(1.0f), 255);
  EXPECT_EQ(CodeFinder::Signed().Find(0.0f), 127);
  EXPECT_EQ(CodeFinder::Unsigned().Find(0.0f), 0);
  EXPECT_EQ(CodeFinder::Unsigned().Find(1.0f), 255);
}

TEST(QuantizeTest, NanGivesCodeZeroLikeTheReference) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(QuantizeReference(kSignedQuantMap, true, nan), 0);
  EXPECT_EQ(CodeFinder::Signed().Find(nan), 0);
  EXPECT_EQ(CodeFinder::Unsigned().Find(nan), 0);
}

}  // namespace
}  // namespace optd::core::internal
