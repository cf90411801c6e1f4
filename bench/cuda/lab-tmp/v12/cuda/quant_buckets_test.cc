// The bucketed threshold search (Note [Threshold search], Note [The sign fix in the thresholds])
// against the reference's plain binary search followed by its sign fix, on the host: every
// bucket boundary and its neighbours, the table entries and their midpoints, special values and
// random floats. Needs no GPU. The disabled EveryFloat tests check all 2^32 floats (a few minutes;
// their recorded runs are listed in bench/RESULTS.md).
#include "cuda/quant_buckets.h"

#include <cmath>
#include <cstdio>
#include <cstring>
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

// NegativeEntries(t), counted once per table (the exhaustive tests call this 2^32 times).
int Zero(const float* t) {
  static const float* table = nullptr;
  static int zero = 0;
  if (t != table) {
    table = t;
    zero = NegativeEntries(t);
  }
  return zero;
}

// What the kernels store for x: the reference's code, sign-fixed for the first moment.
template <bool kSigned>
int Wanted(const float* t, float x) {
  const int c = Reference<kSigned>(t, x);
  return kSigned ? SignFixedCode(c, x, Zero(t)) : c;
}

// The kernel's two searches (the device reads the same thresholds from shared memory): for any x
// (then, signed, the sign fix after it: it only matters for NaN), and for a non-NaN x (unsigned:
// also not negative, not -0).
template <bool kSigned>
int KernelAnyX(const float* t, const float* thresholds, const uint8_t* buckets, float x) {
  const int c = BucketedCode<kSigned, true>(buckets, [&](int i) { return thresholds[i]; }, x);
  return kSigned ? SignFixedCode(c, x, Zero(t)) : c;
}
template <bool kSigned>
int KernelCommon(const float* thresholds, const uint8_t* buckets, float x) {
  return BucketedCode<kSigned, false>(buckets, [&](int i) { return thresholds[i]; }, x);
}

template <bool kSigned>
void SearchThresholds(const float* t, float* thresholds) {
  for (int i = 0; i < kThresholds; ++i)
    thresholds[i] = kSigned ? SignedSearchThreshold(t, NegativeEntries(t), i) : Threshold(t, i);
}

// Checks both searches at x; returns false (with a message) on a difference.
template <bool kSigned>
bool Agrees(const float* t, const float* thresholds, const uint8_t* buckets, float x) {
  if (!kSigned && std::signbit(x) && !std::isnan(x)) return true;  // v >= 0 (-0 aside: below)
  const int want = Wanted<kSigned>(t, x);
  const int any = KernelAnyX<kSigned>(t, thresholds, buckets, x);
  if (any != want) {
    ADD_FAILURE() << "any-x search: x = " << x << " gives " << any << ", want " << want;
    return false;
  }
  if (std::isnan(x) || !(std::fabs(x) < 4.0f)) return true;  // the common search's domain
  const int common = KernelCommon<kSigned>(thresholds, buckets, x);
  if (common != want) {
    ADD_FAILURE() << "common search: x = " << x << " gives " << common << ", want " << want;
    return false;
  }
  return true;
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
  SearchThresholds<kSigned>(t, thresholds);
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
                          (static_cast<uint32_t>(m & ((1 << kBucketMantissaBits) - 1))
                           << (23 - kBucketMantissaBits));
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
    ASSERT_TRUE(Agrees<kSigned>(t, thresholds, buckets.data(), x));
    ++checked;
  }
  EXPECT_GT(checked, 2000000);
  // The unsigned any-x search also takes -0 (code 0).
  if (!kSigned) EXPECT_EQ(KernelAnyX<false>(t, thresholds, buckets.data(), -0.0f), 0);
}

// Every float, with the device's flush-to-zero applied to x (about 90 s for both tables, so
// disabled; run with --gtest_also_run_disabled_tests --gtest_filter='*EveryFloat*').
template <bool kSigned>
void CheckEveryFloat(const float* t) {
  std::vector<uint8_t> buckets(kSigned ? kSignedBuckets : kUnsignedBuckets);
  ASSERT_LE(BuildBuckets(t, kSigned, buckets.data()),
            kSigned ? kSignedBucketSteps : kUnsignedBucketSteps);
  float thresholds[kThresholds];
  SearchThresholds<kSigned>(t, thresholds);
  for (int i = 0; i < kThresholds; ++i)
    ASSERT_NE(std::fpclassify(thresholds[i]), FP_SUBNORMAL) << i;
  int64_t mismatches = 0, checked = 0;
  for (uint64_t u = 0; u < (uint64_t{1} << 32); ++u) {
    float x = FromBits(static_cast<uint32_t>(u));
    if (std::fpclassify(x) == FP_SUBNORMAL) x = std::signbit(x) ? -0.0f : 0.0f;
    if (!Agrees<kSigned>(t, thresholds, buckets.data(), x) && ++mismatches > 20) break;
    ++checked;
  }
  EXPECT_EQ(mismatches, 0);
  std::printf("%s table: %lld floats checked, %lld mismatches\n", kSigned ? "signed" : "unsigned",
              static_cast<long long>(checked), static_cast<long long>(mismatches));
}

TEST(QuantBuckets, DISABLED_EveryFloatSigned) { CheckEveryFloat<true>(kSignedQuantMap); }
TEST(QuantBuckets, DISABLED_EveryFloatUnsigned) { CheckEveryFloat<false>(kUnsignedQuantMap); }

TEST(QuantBuckets, SignedSearchEqualsTheReference) { CheckTable<true>(kSignedQuantMap); }
TEST(QuantBuckets, UnsignedSearchEqualsTheReference) { CheckTable<false>(kUnsignedQuantMap); }

}  // namespace
}  // namespace optd::core::internal::cuda
