// Quantization of a normalized value x = value / absmax to the code of the nearest table entry,
// exactly as bitsandbytes' quantize_2D does it (see the spec, step 5).
#pragma once

#include <cstdint>
#include <vector>

#include "internal/float_convert.h"

namespace optd::core::internal {

// The reference's search, line for line: a 7-step binary search from index 127, then a
// comparison with the fp32 midpoint of the bracketing pair. Ties go to the final pivot, which
// is always an even index. NaN yields code 0. Slow; the engine uses CodeFinder, and the tests
// check that the two agree.
uint8_t QuantizeReference(const float* table, bool is_signed, float x);

// Constant-time equivalent of QuantizeReference for one table. A value's float bits, made
// monotone in the value (the "key"), select a bucket of 2^16 consecutive floats. Every bucket
// holds at most one midpoint of either table (quantize_test.cc checks it around every
// midpoint), so one packed 32-bit entry per bucket finishes the search: the code of the
// bucket's smallest value, that of the midpoint above it (its low 16 bits; the high bits are
// the bucket's), and whether a value equal to it goes up (ties to even). A bucket without a
// midpoint stores the bucket's largest key, with "tie goes up" off, so nothing goes up there.
// Comparing keys is comparing the floats, so no second table is read.
//
// Thread safety: immutable after construction.
class CodeFinder {
 public:
  // `table`: 256 ascending values in [-1, 1].
  explicit CodeFinder(const float* table);

  // Entry layout: bits 0-7 code, bit 8 "a tie goes up", bits 16-31 the midpoint's low key bits.
  static constexpr uint32_t kCodeMask = 0xff;
  static constexpr uint32_t kTieUp = 0x100;
  static constexpr int kShift = 16;

  uint8_t Find(float x) const {
    int32_t key = MonotoneKey(x);
    key = key < min_key_ ? min_key_ : key;
    key = key > max_key_ ? max_key_ : key;
    const uint32_t e = entry_[(key >> kShift) - bucket_base_];
    const int32_t code = static_cast<int32_t>(e & kCodeMask);
    const int32_t mid_key = static_cast<int32_t>((static_cast<uint32_t>(key) & 0xffff0000u) |
                                                 (e >> 16));
    // Past the midpoint, or on it when the upper neighbour is the even index (ties to even).
    const int32_t up = (key > mid_key) | ((key == mid_key) & ((e & kTieUp) != 0));
    return static_cast<uint8_t>(x == x ? code + up : 0);  // NaN: code 0, as the reference
  }

  // The raw lookup data, for vectorized versions of Find (cpu/adam_kernels_avx2.cc).
  struct Tables {
    const uint32_t* entry;
    int32_t min_key;
    int32_t max_key;
    int32_t bucket_base;
  };
  Tables tables() const { return {entry_.data(), min_key_, max_key_, bucket_base_}; }

  // Integer order equals float order: non-negative floats keep their bits, negative ones map
  // to minus their magnitude's bits. Both zeros map to 0.
  static int32_t MonotoneKey(float x) {
    const int32_t bits = static_cast<int32_t>(FloatBits(x));
    const int32_t magnitude = bits & 0x7fffffff;
    return bits < 0 ? -magnitude : magnitude;
  }

  // The two tables of bitsandbytes, built once.
  static const CodeFinder& Signed();
  static const CodeFinder& Unsigned();

 private:
  int32_t min_key_ = 0;
  int32_t max_key_ = 0;
  int32_t bucket_base_ = 0;
  std::vector<uint32_t> entry_;
};

}  // namespace optd::core::internal
