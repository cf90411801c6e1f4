// The requantization code of x as a count of thresholds below x, found from a bucket of x and
// two comparisons.
//
// Note [Threshold search]: the reference (QuantizeCode in quantize.cuh) binary-searches the odd
// entries for the leaf p = 2k, k = #{odd j <= 253 : table[j] < x}, then compares x with the
// midpoint (table[i] + table[i+1]) * 0.5f of the pair around it. The code it returns equals
//   #{i < 255 : x > threshold[i]},  threshold[i] = midpoint m_i (even i),
//                                   the float below m_i (odd i)
// i.e. x above m_i moves past code i except that a tie at an odd i's midpoint also moves past
// (the reference breaks ties toward the even code), and NaN compares false everywhere (code 0).
// This identity is not proved here: it is checked for every one of the 2^32 floats, with the
// device's flush-to-zero (a subnormal x searches as a zero of its sign), by the disabled
// QuantBuckets.DISABLED_EveryFloat* tests (no mismatch, 2026-11-25); the enabled tests check a
// sample.
// A bucket of x (its sign, binade and 6 mantissa bits) gives a lower bound c0 of the code; the
// code lies in [c0, c0 + 3] for every bucket (checked when the buckets are built), so
// c = c0; c += x > threshold[c + 1] ? 2 : 0; c += x > threshold[c] ? 1 : 0 finds it. For the
// signed table every bucket spans at most [c0, c0 + 1], and the second comparison alone does.
// Used on the host (to build and test) and on the device.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define OPTD_HOST_DEVICE __host__ __device__
#else
#define OPTD_HOST_DEVICE
#endif

namespace optd::core::internal::cuda {

inline constexpr int kBucketBinades = 24;          // magnitudes [2^-22, 2^2), below: bucket 0
inline constexpr int kBucketMantissaBits = 6;
inline constexpr int kMagnitudeBuckets = kBucketBinades << kBucketMantissaBits;  // 1536
inline constexpr int kSignedBuckets = 2 * kMagnitudeBuckets;
inline constexpr int kUnsignedBuckets = kMagnitudeBuckets;
// Comparisons after the bucket lookup (a bucket spans at most 2^steps - 1 codes above c0).
inline constexpr int kBucketSteps = 2;
inline constexpr int kSignedBucketSteps = 1;
inline constexpr int kUnsignedBucketSteps = 2;
// 255 thresholds, then +inf padding so that threshold[c0 + 2] is readable for any c0 <= 255.
inline constexpr int kThresholds = 258;

OPTD_HOST_DEVICE inline uint32_t FloatToBits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

OPTD_HOST_DEVICE inline float BitsToFloat(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// Threshold i of `table` (Note [Threshold search]). The midpoint is the reference's expression;
// with the tables' values no operand or result is subnormal, so host and device (flush-to-zero)
// agree bit for bit. The float below a zero midpoint is -FLT_MIN, not a subnormal: x >= 0 and
// x > -FLT_MIN agree for every x once subnormals flush.
OPTD_HOST_DEVICE inline float Threshold(const float* table, int i) {
  if (i >= 255) return BitsToFloat(0x7f800000u);
  const float m = (table[i + 1] + table[i]) * 0.5f;
  if ((i & 1) == 0) return m;
  const uint32_t u = FloatToBits(m);
  if ((u & 0x7fffffffu) == 0) return BitsToFloat(0x80800000u);
  return BitsToFloat((u >> 31) ? u + 1 : u - 1);
}

// Bucket of |x| given its bits without the sign; monotone in |x|. Clamping the bits to
// [2^-22, 2^2) and dropping 17 mantissa bits gives (binade << 6) | top 6 mantissa bits.
OPTD_HOST_DEVICE inline int MagnitudeBucket(uint32_t abs_bits) {
  constexpr uint32_t kLow = (127u - 22u) << 23;
  constexpr uint32_t kHigh = ((127u + 2u) << 23) - 1u;
  const uint32_t c = abs_bits < kLow ? kLow : (abs_bits > kHigh ? kHigh : abs_bits);
  return static_cast<int>((c - kLow) >> (23 - kBucketMantissaBits));
}

// Monotone in x (negatives mirrored below the positives; -0 in the lowest non-negative-side
// bucket of the negatives, which is fine: it only bounds the code).
OPTD_HOST_DEVICE inline int SignedBucket(float x) {
  const uint32_t u = FloatToBits(x);
  const int mag = MagnitudeBucket(u & 0x7fffffffu);
  return (u >> 31) ? kMagnitudeBuckets - 1 - mag : kMagnitudeBuckets + mag;
}

// Second-moment values are >= 0; a negative (or -0) x goes to bucket 0, whose bound is 0.
OPTD_HOST_DEVICE inline int UnsignedBucket(float x) {
  const uint32_t u = FloatToBits(x);
  return (u >> 31) ? 0 : MagnitudeBucket(u);
}

// The code of x by the bucketed threshold search; `threshold(i)` reads threshold i.
template <bool kSigned, typename ThresholdFn>
OPTD_HOST_DEVICE inline int BucketedCode(const uint8_t* buckets, ThresholdFn threshold, float x) {
  int c = x != x ? 0 : buckets[kSigned ? SignedBucket(x) : UnsignedBucket(x)];
  if constexpr (!kSigned) c += x > threshold(c + 1) ? 2 : 0;
  c += x > threshold(c) ? 1 : 0;
  return c;
}

// Fills out[kSignedBuckets] (is_signed) or out[kUnsignedBuckets] with each bucket's lower bound
// of the code. Returns the comparisons the widest bucket needs, which must not exceed
// kSignedBucketSteps / kUnsignedBucketSteps, or kBucketSteps + 1 when the thresholds are not sorted (the search needs that).
int BuildBuckets(const float* table, bool is_signed, uint8_t* out);

}  // namespace optd::core::internal::cuda
