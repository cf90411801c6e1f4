#include "cuda/quant_buckets.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace optd::core::internal::cuda {
namespace {

float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// #{odd j <= 253 : table[j] < x} (or <= x when `inclusive`).
int CountBelow(const float* table, float x, bool inclusive) {
  int k = 0;
  for (int j = 1; j <= 253; j += 2) k += inclusive ? table[j] <= x : table[j] < x;
  return k;
}

// The magnitude range [lo, hi) of magnitude bucket m.
void MagnitudeRange(int m, float* lo, float* hi) {
  const int e = m >> kBucketMantissaBits;
  const uint32_t f = static_cast<uint32_t>(m & ((1 << kBucketMantissaBits) - 1));
  const uint32_t base = (static_cast<uint32_t>(e + 127 - 22) << 23) | (f << (23 - kBucketMantissaBits));
  *lo = m == 0 ? 0.0f : BitsToFloat(base);
  *hi = m == kMagnitudeBuckets - 1 ? std::numeric_limits<float>::infinity()
                                   : BitsToFloat(base + (1u << (23 - kBucketMantissaBits)));
}

}  // namespace

int BuildBuckets(const float* table, bool is_signed, uint8_t* out) {
  int widest = 0;
  for (int m = 0; m < kMagnitudeBuckets; ++m) {
    float lo, hi;
    MagnitudeRange(m, &lo, &hi);
    // Positive side: x in [lo, hi).
    const int pos_lo = CountBelow(table, lo, false);
    const int pos_hi = CountBelow(table, hi, false);
    if (is_signed) {
      out[kMagnitudeBuckets + m] = static_cast<uint8_t>(pos_lo);
      // Negative side: x in (-hi, -lo].
      const int neg_lo = CountBelow(table, -hi, true);
      const int neg_hi = CountBelow(table, -lo, false);
      out[kMagnitudeBuckets - 1 - m] = static_cast<uint8_t>(neg_lo);
      widest = std::max({widest, pos_hi - pos_lo, neg_hi - neg_lo});
    } else {
      // Bucket 0 also takes every negative x, for which k = 0.
      out[m] = static_cast<uint8_t>(m == 0 ? 0 : pos_lo);
      widest = std::max(widest, pos_hi - out[m]);
    }
  }
  return widest;
}

}  // namespace optd::core::internal::cuda
