// A bucket index over x that replaces the first steps of the requantization search.
//
// Note [Bucketed search]: the reference's search compares x only with the odd entries 1..253 and
// ends on the even leaf p = 2k, where k = #{odd j <= 253 : table[j] < x} (a binary search over a
// sorted table; NaN compares false everywhere, so k = 0). A bucket of x (its sign, binade and 6
// mantissa bits) bounds k from below; at most kBucketSteps further comparisons with
// table[2k + 1] find k exactly (checked when the buckets are built, and against the plain search
// in quant_buckets_test.cc). The final midpoint comparison is the reference's, unchanged.
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
inline constexpr int kBucketSteps = 2;

OPTD_HOST_DEVICE inline uint32_t FloatToBits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

// Bucket of |x| given its bits without the sign; monotone in |x|.
OPTD_HOST_DEVICE inline int MagnitudeBucket(uint32_t abs_bits) {
  const int e = static_cast<int>(abs_bits >> 23) - (127 - 22);
  if (e < 0) return 0;
  if (e >= kBucketBinades) return kMagnitudeBuckets - 1;
  return (e << kBucketMantissaBits) |
         static_cast<int>((abs_bits >> (23 - kBucketMantissaBits)) & ((1 << kBucketMantissaBits) - 1));
}

// Monotone in x (negatives mirrored below the positives; -0 in the lowest non-negative-side
// bucket of the negatives, which is fine: it only bounds k).
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

// Fills out[kSignedBuckets] (is_signed) or out[kUnsignedBuckets] with each bucket's lower bound
// of k. Returns the largest (upper bound - lower bound) over the buckets, which must not exceed
// kBucketSteps.
int BuildBuckets(const float* table, bool is_signed, uint8_t* out);

}  // namespace optd::core::internal::cuda
