// Element types as the CPU kernels see them: fp32 math on fp16/bf16 storage.
#pragma once

#include <cstdint>

#include "internal/float_convert.h"
#include "optd/core/dtype.h"

namespace optd::core::cpu {

// Distinct types for the two 16-bit formats, so overloads and templates can tell them apart.
struct Fp16 {
  uint16_t bits;
};
struct Bf16 {
  uint16_t bits;
};
static_assert(sizeof(Fp16) == 2 && sizeof(Bf16) == 2);

inline float ToFloat(float x) { return x; }
inline float ToFloat(Fp16 x) { return internal::HalfToFloat(x.bits); }
inline float ToFloat(Bf16 x) { return internal::BFloat16ToFloat(x.bits); }

// Rounds to T (nearest even).
template <typename T>
T FromFloat(float x);
template <>
inline float FromFloat<float>(float x) {
  return x;
}
template <>
inline Fp16 FromFloat<Fp16>(float x) {
  return Fp16{internal::FloatToHalf(x)};
}
template <>
inline Bf16 FromFloat<Bf16>(float x) {
  return Bf16{internal::FloatToBFloat16(x)};
}

// fp32 finiteness from the bits, so the test vectorizes (std::isfinite may not).
inline bool IsFiniteBits(float x) {
  return (internal::FloatBits(x) & 0x7f800000u) != 0x7f800000u;
}

}  // namespace optd::core::cpu
