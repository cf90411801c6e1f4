// Element conversions between the wire's dtypes and fp32 (sync-mode averaging sums in fp32).
#pragma once

#include <cstdint>

#include "optd/core/dtype.h"

namespace optd::server {

float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t b);
// Round to nearest even; NaN stays NaN, overflow becomes infinity.
uint16_t FloatToHalf(float f);
uint16_t FloatToBFloat16(float f);

// dst[i] = float(src[i]) for n elements of `dtype`.
void WidenToFloat(core::DType dtype, const void* src, int64_t n, float* dst);
// Writes n floats into `dst` as `dtype` (rounding to nearest even).
void NarrowFromFloat(const float* src, int64_t n, core::DType dtype, void* dst);

}  // namespace optd::server
