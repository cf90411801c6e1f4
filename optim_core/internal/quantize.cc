#include "internal/quantize.h"


#include "optd/core/quant_maps.h"

namespace optd::core::internal {

uint8_t QuantizeReference(const float* table, bool is_signed, float x) {
  int pivot = 127;
  int upper_pivot = 255;
  int lower_pivot = 0;
  float lower = is_signed ? -1.0f : 0.0f;
  float upper = 1.0f;
  float val = table[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = table[pivot];
  }
  if (x > val) {
    const float midpoint = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

CodeFinder::CodeFinder(const float* table) {
  const bool is_signed = table[0] < 0.0f;
  float midpoint[255];
  for (int i = 0; i < 255; ++i) midpoint[i] = (table[i] + table[i + 1]) * 0.5f;
  min_key_ = MonotoneKey(is_signed ? -1.0f : 0.0f);
  max_key_ = MonotoneKey(1.0f);
  bucket_base_ = min_key_ >> kShift;
  const int32_t buckets = (max_key_ >> kShift) - bucket_base_ + 1;
  entry_.resize(buckets);
  for (int32_t b = 0; b < buckets; ++b) {
    // The smallest key of bucket b, clamped into range, turned back into a float.
    const int32_t bucket_key = (b + bucket_base_) * (int32_t{1} << kShift);
    const int32_t key = bucket_key < min_key_ ? min_key_ : bucket_key;
    const float x = key >= 0 ? BitsToFloat(static_cast<uint32_t>(key))
                             : -BitsToFloat(static_cast<uint32_t>(-key));
    const uint32_t code = QuantizeReference(table, is_signed, x);
    uint32_t e = code | 0xffff0000u;  // no midpoint: the bucket's largest key, never passed
    if (code < 255) {
      const int32_t mid_key = MonotoneKey(midpoint[code]);
      if ((mid_key >> kShift) == b + bucket_base_) {
        e = code | (static_cast<uint32_t>(mid_key) << 16) | ((code & 1) != 0 ? kTieUp : 0);
      }
    }
    entry_[b] = e;
  }
}

const CodeFinder& CodeFinder::Signed() {
  static const CodeFinder* const finder = new CodeFinder(kSignedQuantMap);
  return *finder;
}

const CodeFinder& CodeFinder::Unsigned() {
  static const CodeFinder* const finder = new CodeFinder(kUnsignedQuantMap);
  return *finder;
}

}  // namespace optd::core::internal
