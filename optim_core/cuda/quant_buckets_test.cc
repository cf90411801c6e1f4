// The bucketed threshold search (Note [Threshold search]) against the reference's plain binary
// search, on the host: every bucket boundary and its neighbours, the table entries and their
// midpoints, special values and random floats. Needs no GPU. (All 2^32 floats were checked once
// with the same functions, 2026-11-25: no difference; that takes 90 s, too long for a unit test.)
#include "cuda/quant_buckets.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "internal/quantize.h"
#include "optd/core/quant_maps.h"

namespace optd::core::internal::cuda {
namespace {

// The reference's search (internal/quantize.cc, the one definition of it).
template <bool kSigned>
int Reference(const float* t, float x) {
  return QuantizeReference(t, kSigned, x);
}

// The kernel's bucketed threshold search (the device reads the same thresholds from shared memory).
template <bool kSigned>
int Bucketed(const float* thresholds, const uint8_t* buckets, float x) {
  return BucketedCode<kSigned>(buckets, [&](int i) { return thresholds[i]; }, x);
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <bool kSigned>
void CheckTable(const float* t) {
  std::vector<uint8_t> buckets(kSigned ? kSignedBuckets : kUnsignedBuckets);
  ASSERT_LE(BuildBuckets(t, kSigned, buckets.data()),
            kSigned ? kSignedBucketSteps : kUnsignedBucketSteps);
  float thresholds[kThresholds];
  for (int i = 0; i < kThresholds; ++i) thresholds[i] = Threshold(t, i);
  std::vector<float> xs = {0.0f, -0.0f, 1.0f, -1.0f, 1.0000001f, -1.0000001f, 2.0f, 1e-30f,
                           -1e-30f, std::numeric_limits<float>::quiet_NaN(),
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity()};
  for (int i = 0; i < 256; ++i) {
    for (float v : {t[i], i < 255 ? (t[i] + t[i + 1]) * 0.5f : t[i]}) {
      xs.push_back(v);
      xs.push_back(std::nextafter(v, 2.0f));
      xs.push_back(std::nextafter(v, -2.0f));
    }
  }
  for (int m = 0; m < kMagnitudeBuckets; ++m) {
    const uint32_t base = (static_cast<uint32_t>((m >> kBucketMantissaBits) + 105) << 23) |
                          (static_cast<uint32_t>(m & 63) << (23 - kBucketMantissaBits));
    for (uint32_t d : {0u, 1u}) {
      xs.push_back(FromBits(base + d));
      xs.push_back(FromBits(base - d));
      xs.push_back(-FromBits(base + d));
      xs.push_back(-FromBits(base - d));
    }
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uni(kSigned ? -1.0f : 0.0f, 1.0f);
  std::uniform_int_distribution<int> expo(-30, 0);
  for (int i = 0; i < 2000000; ++i) {
    const float u = uni(rng);
    xs.push_back(i % 2 ? u : std::ldexp(u, expo(rng)));
  }
  int64_t checked = 0;
  for (float x : xs) {
    if (!kSigned && x < 0) continue;  // v >= 0: the unsigned search never sees negatives
    ASSERT_EQ(Bucketed<kSigned>(thresholds, buckets.data(), x), Reference<kSigned>(t, x)) << "x = " << x;
    ++checked;
  }
  EXPECT_GT(checked, 2000000);
}

// Every float, with the device's flush-to-zero applied to x (about 90 s for both tables, so
// disabled; run with --gtest_also_run_disabled_tests --gtest_filter='*EveryFloat*').
template <bool kSigned>
void CheckEveryFloat(const float* t) {
  std::vector<uint8_t> buckets(kSigned ? kSignedBuckets : kUnsignedBuckets);
  ASSERT_LE(BuildBuckets(t, kSigned, buckets.data()),
            kSigned ? kSignedBucketSteps : kUnsignedBucketSteps);
  float thresholds[kThresholds];
  for (int i = 0; i < kThresholds; ++i) {
    thresholds[i] = Threshold(t, i);
    ASSERT_NE(std::fpclassify(thresholds[i]), FP_SUBNORMAL) << i;
  }
  int64_t mismatches = 0;
  for (uint64_t u = 0; u < (uint64_t{1} << 32); ++u) {
    float x = FromBits(static_cast<uint32_t>(u));
    if (std::fpclassify(x) == FP_SUBNORMAL) x = std::signbit(x) ? -0.0f : 0.0f;
    mismatches += Bucketed<kSigned>(thresholds, buckets.data(), x) != Reference<kSigned>(t, x);
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(QuantBuckets, DISABLED_EveryFloatSigned) { CheckEveryFloat<true>(kSignedQuantMap); }
TEST(QuantBuckets, DISABLED_EveryFloatUnsigned) { CheckEveryFloat<false>(kUnsignedQuantMap); }

TEST(QuantBuckets, SignedSearchEqualsTheReference) { CheckTable<true>(kSignedQuantMap); }
TEST(QuantBuckets, UnsignedSearchEqualsTheReference) { CheckTable<false>(kUnsignedQuantMap); }

}  // namespace
}  // namespace optd::core::internal::cuda
