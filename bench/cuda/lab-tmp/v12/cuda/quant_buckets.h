// The requantization code of x as a count of thresholds below x, found from a bucket of x and
// one comparison.
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
// A bucket of x (its sign, binade and 7 mantissa bits) gives a lower bound c0 of the code; the
// code lies in [c0, c0 + 1] for every bucket of both tables (checked when the buckets are
// built), so c = c0 + (x > threshold[c0]) finds it with one lookup and one comparison. (With 6
// mantissa bits the unsigned table's buckets spanned up to 4 codes and needed two comparisons.)
//
// Note [The sign fix in the thresholds]: after the search the reference moves a first-moment
// code whose table value has the wrong sign one step (QuantizeReference's callers; the kernels'
// SignFixedCode below). For the signed table, whose entry `zero` (the number of negative entries)
// is exactly 0, that fix changes exactly one case when x is not NaN: a negative x (or -0) whose
// code is `zero` (x above the last negative threshold) gets `zero - 1`. Every other x already
// has a code of its own sign. So the signed search uses threshold[zero - 1] = +inf
// (SignedSearchThreshold): a negative x then never counts it, which is the fix, and a positive x
// never reads it (its bucket's c0 is at least `zero`). The fix is then only needed for NaN, which
// the kernels handle apart; applying it again to a fixed code changes nothing.
// Used on the host (to build and test) and on the device.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define OPTD_HOST_DEVICE __host__ __device__
#else
#define OPTD_HOST_DEVICE
#endif

namespace optd::core::internal::cuda {

inline constexpr int kBucketBinades = 24;          // magnitudes [2^-22, 2^2), below: bucket 0
inline constexpr int kBucketMantissaBits = 7;
inline constexpr int kMagnitudeBuckets = kBucketBinades << kBucketMantissaBits;  // 1536
inline constexpr int kSignedBuckets = 2 * kMagnitudeBuckets;
inline constexpr int kUnsignedBuckets = kMagnitudeBuckets;
// Comparisons after the bucket lookup (a bucket spans at most 2^steps - 1 codes above c0);
// BuildBuckets reports kBucketSteps for a table that needs more than the search makes.
inline constexpr int kBucketSteps = 2;
inline constexpr int kSignedBucketSteps = 1;
inline constexpr int kUnsignedBucketSteps = 1;
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

// The signed table's search threshold i (Note [The sign fix in the thresholds]); `zero` is the
// number of negative entries.
OPTD_HOST_DEVICE inline float SignedSearchThreshold(const float* table, int zero, int i) {
  return i == zero - 1 ? BitsToFloat(0x7f800000u) : Threshold(table, i);
}

// The reference's sign fix of a first-moment code c of a value s (uint8 arithmetic): a code whose
// table value's sign (c < negative_codes) differs from s's moves one step toward s.
OPTD_HOST_DEVICE inline int SignFixedCode(int c, float s, int negative_codes) {
  const bool s_negative = (FloatToBits(s) >> 31) != 0;
  if ((c < negative_codes) != s_negative) c = (c + (s > 0.0f ? 1 : -1)) & 255;
  return c;
}

// Bucket of |x| given its bits without the sign; monotone in |x|. Clamping the bits to
// [2^-22, 2^2) and dropping 16 mantissa bits gives (binade << 7) | top 7 mantissa bits.
OPTD_HOST_DEVICE inline int MagnitudeBucket(uint32_t abs_bits) {
  constexpr uint32_t kLow = (127u - 22u) << 23;
  constexpr uint32_t kHigh = ((127u + 2u) << 23) - 1u;
  const uint32_t c = abs_bits < kLow ? kLow : (abs_bits > kHigh ? kHigh : abs_bits);
  return static_cast<int>((c - kLow) >> (23 - kBucketMantissaBits));
}

// The signed table's buckets: the negatives' by magnitude first (-0 in the first), then the
// positives' (+0 in the first).
OPTD_HOST_DEVICE inline int SignedBucket(float x) {
  const uint32_t u = FloatToBits(x);
  const int mag = MagnitudeBucket(u & 0x7fffffffu);
  return (u >> 31) ? mag : kMagnitudeBuckets + mag;
}

// MagnitudeBucket for |x| < 4 (the values of a common block, Note [Requantizing the common
// block] in adamw_kernels.cu): the lower clamp as a float maximum (|x| and the clamp in one
// instruction), no upper clamp.
OPTD_HOST_DEVICE inline int SmallMagnitudeBucket(float magnitude) {
  constexpr float kLowValue = 1.0f / (1 << 22);  // 2^-22, whose bits are kLow
  const float clamped = magnitude > kLowValue ? magnitude : kLowValue;
  return static_cast<int>((FloatToBits(clamped) >> (23 - kBucketMantissaBits)) -
                          (((127u - 22u) << 23) >> (23 - kBucketMantissaBits)));
}
OPTD_HOST_DEVICE inline int SmallSignedBucket(float x) {
  const uint32_t u = FloatToBits(x);
  const int mag = SmallMagnitudeBucket(std::fabs(x));
  return mag + static_cast<int>(~(static_cast<int32_t>(u) >> 31) & kMagnitudeBuckets);
}

// Second-moment values are >= 0; a negative (or -0) x goes to bucket 0, whose bound is 0.
OPTD_HOST_DEVICE inline int UnsignedBucket(float x) {
  const uint32_t u = FloatToBits(x);
  return (u >> 31) ? 0 : MagnitudeBucket(u);
}

// The code of x by the bucketed threshold search; `threshold(i)` reads threshold i (for the
// signed table, SignedSearchThreshold's). kAnyX: x may be any float (NaN: code 0; the unsigned
// table's negatives: code 0). Without it |x| < 4, x is not NaN and, for the unsigned table, not
// negative or -0 (the kernels' common case, where every value of the block is finite, at most
// its scale in magnitude, and the scale finite and positive): no NaN or sign test, no upper
// clamp, and the lower clamp as one float maximum.
template <bool kSigned, bool kAnyX = true, typename ThresholdFn>
OPTD_HOST_DEVICE inline int BucketedCode(const uint8_t* buckets, ThresholdFn threshold, float x) {
  int c;
  if constexpr (kSigned && kAnyX) {
    c = buckets[SignedBucket(x)];
  } else if constexpr (kSigned) {
    c = buckets[SmallSignedBucket(x)];
  } else if constexpr (kAnyX) {
    c = buckets[UnsignedBucket(x)];
  } else {
    c = buckets[SmallMagnitudeBucket(x)];
  }
  if constexpr (kAnyX) c = x != x ? 0 : c;
  if constexpr (kSigned ? kSignedBucketSteps == 2 : kUnsignedBucketSteps == 2)
    c += x > threshold(c + 1) ? 2 : 0;
  c += x > threshold(c) ? 1 : 0;
  return c;
}

// Fills out[kSignedBuckets] (is_signed) or out[kUnsignedBuckets] with each bucket's lower bound
// of the code (for the signed table, of the code the signed search thresholds give: Note [The
// sign fix in the thresholds]). Returns the comparisons the widest bucket needs, which must not
// exceed kSignedBucketSteps / kUnsignedBucketSteps, or kBucketSteps + 1 when the table does not
// suit the search (thresholds not sorted; a signed table without an exact zero entry).
int BuildBuckets(const float* table, bool is_signed, uint8_t* out);

// The number of negative entries of a sorted table (the signed table's `zero`).
int NegativeEntries(const float* table);

}  // namespace optd::core::internal::cuda
