// Device helpers shared by the kernels: element conversion and the 8-bit requantization search.
// Compiled with --use_fast_math, like the reference kernel, so that the same source expressions
// yield the same instructions (see Note [Bit-exact numerics] in adamw_kernels.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/quant_buckets.h"

namespace optd::core::internal::cuda {

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
// bf16 is the top half of an fp32: a shift, written in C++ rather than the header's inline asm so
// that the compiler can reuse one conversion instead of repeating it at every use.
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) {
  return __uint_as_float(static_cast<uint32_t>(__bfloat16_as_ushort(x)) << 16);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// A table replicated once per lane, entry-major ([entries][32]), so that lane l always reads
// bank l: the data-dependent lookups of a warp never conflict. Entry i of lane l is at byte
// i * 128 + 4 l from the table's start: one multiply-add forms the offset, and the table's start
// (shared memory, the same for every lane) folds into the load.
inline constexpr int kTableCopies = 32;
struct LaneTable {
  const char* table;      // &table[0][0], shared memory
  uint32_t lane_offset;   // 4 * lane
  __device__ __forceinline__ float operator[](int i) const {
    return *reinterpret_cast<const float*>(
        table + (static_cast<uint32_t>(i) * (kTableCopies * sizeof(float)) + lane_offset));
  }
  // The entry indexed by byte b (0..3, a constant after unrolling) of `word`: the byte scaled
  // to the entry stride (128 = 2^7) by one shift and mask, without extracting it first.
  __device__ __forceinline__ float AtByte(uint32_t word, int b) const {
    const uint32_t offset = (b == 0 ? word << 7 : word >> (8 * b - 7)) & 0x7f80u;
    return *reinterpret_cast<const float*>(table + (offset | lane_offset));
  }
};

// The reference's requantization search (a 7-step binary search from index 127, then a
// comparison with the midpoint of the bracketing pair) is defined once, on the host, as
// internal::QuantizeReference; the kernels compute the same code with QuantizeCodesThreshold,
// which quant_buckets_test.cc checks against it.

// QuantizeCode's result for n values, as a count of thresholds below x (Note [Threshold search]
// in quant_buckets.h): one bucket lookup and one comparison with the per-lane threshold table,
// instead of nine dependent table lookups. kAnyX: see BucketedCode.
template <bool kSigned, int n, bool kAnyX>
__device__ __forceinline__ void QuantizeCodesThreshold(LaneTable thresholds, const uint8_t* buckets,
                                                       const float* x, uint8_t* codes) {
#pragma unroll
  for (int j = 0; j < n; ++j)
    codes[j] = static_cast<uint8_t>(
        BucketedCode<kSigned, kAnyX>(buckets, [&](int i) { return thresholds[i]; }, x[j]));
}

}  // namespace optd::core::internal::cuda
