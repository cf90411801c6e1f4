// Conversions between fp32 and the two 16-bit float formats, rounding to nearest even as torch
// and the CUDA intrinsics (__float2half_rn, __float2bfloat16_rn) do. Branch-free so loops that
// call them vectorize; no F16C needed (the build targets x86-64-v2).
#pragma once

#include <cstdint>
#include <cstring>

namespace optd::core::internal {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float BFloat16ToFloat(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

// Round to nearest even on the low 16 bits; NaN stays NaN (quieted), infinities stay.
inline uint16_t FloatToBFloat16(float f) {
  const uint32_t u = FloatBits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(is_nan ? quiet_nan : rounded);
}

// IEEE binary16 to fp32, exact (every half is a float). Normal halves are
// rebiased by one multiply; subnormals come from a subtraction that is exact in fp32.
inline float HalfToFloat(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // Normal (and inf/NaN): shift exponent+mantissa into place and rescale by 2^-112, which
  // turns exponent 0x1f into 0xff (inf/NaN) because the offset puts it past the top.
  const float normalized = BitsToFloat((two_w >> 4) + (0xe0u << 23)) * 0x1.0p-112f;
  // Subnormal: the mantissa as the low bits of a float of exponent -1, minus 0.5.
  const float denormalized = BitsToFloat((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude =
      two_w < (1u << 27) ? FloatBits(denormalized) : FloatBits(normalized);
  return BitsToFloat(sign | magnitude);
}

// fp32 to IEEE binary16, round to nearest even, overflow to infinity, NaN to a quiet NaN.
// The fp32 adder does the rounding: adding a power of two whose exponent sits 13 bits above the
// value's (at least the subnormal threshold) leaves exactly the half's mantissa in the low bits.
inline uint16_t FloatToHalf(float f) {
  const float base_in = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = FloatBits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xff000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  const float base = BitsToFloat((bias >> 1) + 0x07800000u) + base_in;
  const uint32_t bits = FloatBits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007c00u;
  const uint32_t mantissa_bits = bits & 0x00000fffu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

}  // namespace optd::core::internal
