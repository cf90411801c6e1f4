#include "cuda/quant_buckets.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace optd::core::internal::cuda {
namespace {

// #{i < 255 : threshold[i] < x}: the code of x (Note [Threshold search]).
int Code(const float* thresholds, float x) {
  int c = 0;
  for (int i = 0; i < 255; ++i) c += thresholds[i] < x;
  return c;
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

int ComparisonsFor(int width) {
  int steps = 0;
  while ((1 << steps) - 1 < width) ++steps;
  return steps;
}

}  // namespace

int NegativeEntries(const float* table) {
  int n = 0;
  for (int i = 0; i < 256; ++i) n += std::signbit(table[i]) ? 1 : 0;
  return n;
}

int BuildBuckets(const float* table, bool is_signed, uint8_t* out) {
  float thresholds[255];
  for (int i = 0; i < 255; ++i) thresholds[i] = Threshold(table, i);
  if (!std::is_sorted(thresholds, thresholds + 255)) return kBucketSteps + 1;
  // The code the search must give: the signed table's is the sign-fixed one (Note [The sign fix
  // in the thresholds], which needs an exact zero right after the negatives). Both are monotone.
  const int zero = is_signed ? NegativeEntries(table) : 0;
  if (is_signed && (zero < 1 || zero > 255 || table[zero] != 0.0f)) return kBucketSteps + 1;
  auto wanted = [&](float x) {
    const int c = Code(thresholds, x);
    return is_signed ? SignFixedCode(c, x, zero) : c;
  };
  int widest = 0;
  for (int m = 0; m < kMagnitudeBuckets; ++m) {
    float lo, hi;
    MagnitudeRange(m, &lo, &hi);
    // Code is monotone in x, so a range's codes lie between those of its ends.
    // Positive side: x in [lo, hi); the largest x is the float below hi (or +inf).
    const float top = std::isinf(hi) ? hi : std::nextafter(hi, 0.0f);
    const int pos_lo = wanted(lo);
    const int pos_hi = wanted(top);
    if (is_signed) {
      out[kMagnitudeBuckets + m] = static_cast<uint8_t>(pos_lo);
      // Negative side: x in (-hi, -lo].
      const int neg_lo = wanted(-top);
      const int neg_hi = wanted(-lo);
      out[m] = static_cast<uint8_t>(neg_lo);
      widest = std::max({widest, pos_hi - pos_lo, neg_hi - neg_lo});
    } else {
      // Bucket 0 also takes every negative x, whose code is 0.
      out[m] = static_cast<uint8_t>(m == 0 ? 0 : pos_lo);
      widest = std::max(widest, pos_hi - out[m]);
    }
  }
  return ComparisonsFor(widest);
}

}  // namespace optd::core::internal::cuda
