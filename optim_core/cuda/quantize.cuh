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
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

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

// Index of the table entry nearest to x: a 7-step binary search from index 127, then a comparison
// with the midpoint of the bracketing pair, in the order the reference uses (the tie rule and the
// NaN result, code 0, follow from that order).
// A table replicated once per lane, entry-major ([256][32]), so that lane l always reads bank
// l: the data-dependent lookups of a warp never conflict.
inline constexpr int kTableCopies = 32;
struct LaneTable {
  const float* lane_base;  // &table[0][lane]
  __device__ __forceinline__ float operator[](int i) const { return lane_base[i * kTableCopies]; }
};

template <bool kSigned>
__device__ __forceinline__ uint8_t QuantizeCode(LaneTable table, float x) {
  int pivot = 127;
  int upper_pivot = 255;
  int lower_pivot = 0;
  float lower = kSigned ? -1.0f : 0.0f;
  float upper = 1.0f;
  float val = table[pivot];
#pragma unroll
  for (int half = 64; half > 0; half >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += half;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= half;
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

// QuantizeCode for n values at once, with the same result for each: the searches advance in
// lockstep so the n dependent chains of table lookups overlap instead of running one after
// another (the chains' latency, not bandwidth, bounded the kernel otherwise).
// Note [Leaf neighbours]: the search compares only odd pivots and ends on an even leaf p; the
// last pivot it passed on the right is p+1 and on the left p-1 (in-order neighbours of a leaf
// are its ancestors), or the initial bounds (255, 1.0) and (0, -1 or 0) when there is none.
// table[255] == 1.0 in both tables and a leaf p == 0 returns 0 either way, so the midpoints
// below equal the reference's (upper + val) * 0.5f and (lower + val) * 0.5f.
template <bool kSigned, int n>
__device__ __forceinline__ void QuantizeCodes(LaneTable table, const float* x, uint8_t* codes) {
  int pivot[n];
#pragma unroll
  for (int j = 0; j < n; ++j) pivot[j] = 127;
#pragma unroll
  for (int half = 64; half > 0; half >>= 1) {
#pragma unroll
    for (int j = 0; j < n; ++j) pivot[j] += x[j] > table[pivot[j]] ? half : -half;
  }
#pragma unroll
  for (int j = 0; j < n; ++j) {
    const int p = pivot[j];
    const float val = table[p];
    int code;
    if (x[j] > val) {
      const float upper = table[p + 1];
      const float midpoint = (upper + val) * 0.5f;
      code = x[j] > midpoint ? p + 1 : p;
    } else {
      const float lower = p > 0 ? table[p - 1] : (kSigned ? -1.0f : 0.0f);
      const float midpoint = (lower + val) * 0.5f;
      code = x[j] < midpoint ? (p > 0 ? p - 1 : 0) : p;
    }
    codes[j] = static_cast<uint8_t>(code);
  }
}

// The same codes as QuantizeCodes, with the search's first steps replaced by a bucket lookup
// (Note [Bucketed search] in quant_buckets.h). `buckets` is the table's bucket array.
template <bool kSigned, int n>
__device__ __forceinline__ void QuantizeCodesBucketed(LaneTable table, const uint8_t* buckets,
                                                      const float* x, uint8_t* codes) {
  int k[n];
#pragma unroll
  for (int j = 0; j < n; ++j)
    k[j] = isnan(x[j]) ? 0 : buckets[kSigned ? SignedBucket(x[j]) : UnsignedBucket(x[j])];
#pragma unroll
  for (int step = 0; step < kBucketSteps; ++step) {
#pragma unroll
    for (int j = 0; j < n; ++j) k[j] += (k[j] < 127 && x[j] > table[2 * k[j] + 1]) ? 1 : 0;
  }
#pragma unroll
  for (int j = 0; j < n; ++j) {
    const int p = 2 * k[j];
    const float val = table[p];
    int code;
    if (x[j] > val) {
      const float midpoint = (table[p + 1] + val) * 0.5f;
      code = x[j] > midpoint ? p + 1 : p;
    } else {
      const float lower = p > 0 ? table[p - 1] : (kSigned ? -1.0f : 0.0f);
      const float midpoint = (lower + val) * 0.5f;
      code = x[j] < midpoint ? (p > 0 ? p - 1 : 0) : p;
    }
    codes[j] = static_cast<uint8_t>(code);
  }
}

}  // namespace optd::core::internal::cuda
