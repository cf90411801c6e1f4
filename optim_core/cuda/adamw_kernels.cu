// The fused multi-tensor PagedAdamW8bit kernels.
//
// Note [Work mapping]: a launch covers a list of segments (tensor ranges); every segment is cut
// into blocks of 256 elements (the 8-bit block size), numbered consecutively across segments.
// One warp updates one such block at a time: lane l owns elements 4l..4l+3 and 128+4l..128+4l+3
// (or 8l..8l+7 when param and gradient are 16-bit: one 16-byte access per lane), so each load and
// store of the warp is a coalesced access, and the block's absmax is one redux instruction, with
// no shared memory or barrier. The grid is persistent and each warp walks a contiguous run of blocks (see
// AdamWUpdateKernel). The table lookups of the dequantization and of the requantization search
// go to per-lane copies of the tables in shared memory, which never bank-conflict: with one copy
// the data-dependent lookups conflicted and bounded the kernel well below memory bandwidth.
// Element indices are 64-bit.
//
// Note [Bit-exact numerics]: this file is compiled with --use_fast_math, as the reference is,
// and writes each formula with the same intrinsics, operand order and parenthesization as the
// reference's kOptimizerStatic8bit2StateBlockwise / kOptimizer32bit2State (__powf for beta^t,
// __fdividef for the step size and the requantization divisions, approximate sqrtf, FMA
// contraction, flush-to-zero), so that nvcc emits the same arithmetic and the results match bit
// for bit. Percentile clipping's scale is computed as torch computes it (IEEE sqrt and division),
// hence __fsqrt_rn / __fdiv_rn there.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "cuda/adamw_kernels.h"
#include "cuda/quantize.cuh"

namespace optd::core::internal::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarpSize * kWarpsPerBlock;
constexpr int kQuantBlock = 256;
constexpr int kPerThread = kQuantBlock / kWarpSize;  // 8 elements: two runs of 4
constexpr int kHalf = kQuantBlock / 2;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kHistory = 100;

// Offset inside the block of element j (0..7) of `lane`. Two layouts (Note [Work mapping]):
// kContiguous, lane l owns elements 8l..8l+7 (one 16-byte access per lane for 16-bit values, 8
// bytes of codes); otherwise 4l..4l+3 and 128+4l..128+4l+3 (two 16-byte accesses for fp32). An
// update never mixes elements across blocks, so each (param, grad) type pair picks its own.
template <bool kContiguous>
__device__ __forceinline__ int ElementIndex(int lane, int j) {
  if constexpr (kContiguous) return lane * kPerThread + j;
  return (j / 4) * kHalf + lane * 4 + (j % 4);
}

template <typename T, int n, typename V>
__device__ __forceinline__ void Unpack(const V& v, T* out) {
  static_assert(sizeof(V) == n * sizeof(T));
  const T* t = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < n; ++i) out[i] = t[i];
}

template <typename V, typename T, int n>
__device__ __forceinline__ V Pack(const T* in) {
  static_assert(sizeof(V) == n * sizeof(T));
  V v;
  T* t = reinterpret_cast<T*>(&v);
#pragma unroll
  for (int i = 0; i < n; ++i) t[i] = in[i];
  return v;
}

__device__ __forceinline__ bool Aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Note [Staging the next block]: while a warp updates one block, the gradient, weights and
// codes of its next block are already on their way into the warp's staging area in shared memory
// (cp.async, no registers held), so the block's loads no longer wait on device memory.
// Each lane copies exactly the bytes it will read itself, so a lane's own wait orders them; the
// copies for the next block are issued only after the current block's staged values have been
// used, so they never overwrite a value still to be read.
constexpr int kStageBytes = 2 * 1024 + 2 * 256;  // gradient, weights (fp32 at most), two codes
constexpr int kStageParam = 1024, kStageCodes1 = 2048, kStageCodes2 = 2304;

template <int kBytes>
__device__ __forceinline__ void CopyAsync(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (kBytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(gmem),
                 "n"(kBytes) : "memory");
}
__device__ __forceinline__ void CopyAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void CopyAsyncWait() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// Loads this lane's 8 elements of a block; lanes past `valid` get `fill` (the reference's
// BlockLoad default), which matters for the partial last block's absmax. `vector`: the base
// allows the layout's vector accesses (16 bytes for fp32 or contiguous 16-bit, else 8).
template <bool kContiguous = false, typename T>
__device__ __forceinline__ void LoadLane(const T* base, int lane, int valid, bool vector, T fill,
                                         T* out) {
  if (vector && valid == kQuantBlock) {
    if constexpr (kContiguous && sizeof(T) == 2) {
      Unpack<T, 8>(*reinterpret_cast<const uint4*>(base + lane * 8), out);
      return;
    } else if constexpr (kContiguous) {
      Unpack<T, 4>(*reinterpret_cast<const uint4*>(base + lane * 8), out);
      Unpack<T, 4>(*reinterpret_cast<const uint4*>(base + lane * 8 + 4), out + 4);
      return;
    } else if constexpr (sizeof(T) == 4) {
      Unpack<T, 4>(*reinterpret_cast<const uint4*>(base + lane * 4), out);
      Unpack<T, 4>(*reinterpret_cast<const uint4*>(base + kHalf + lane * 4), out + 4);
      return;
    } else {
      Unpack<T, 4>(*reinterpret_cast<const uint2*>(base + lane * 4), out);
      Unpack<T, 4>(*reinterpret_cast<const uint2*>(base + kHalf + lane * 4), out + 4);
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int idx = ElementIndex<kContiguous>(lane, j);
    out[j] = idx < valid ? base[idx] : fill;
  }
}

template <bool kContiguous = false, typename T>
__device__ __forceinline__ void StoreLane(T* base, int lane, int valid, bool vector, const T* in) {
  if (vector && valid == kQuantBlock) {
    if constexpr (kContiguous && sizeof(T) == 2) {
      *reinterpret_cast<uint4*>(base + lane * 8) = Pack<uint4, T, 8>(in);
      return;
    } else if constexpr (kContiguous) {
      *reinterpret_cast<uint4*>(base + lane * 8) = Pack<uint4, T, 4>(in);
      *reinterpret_cast<uint4*>(base + lane * 8 + 4) = Pack<uint4, T, 4>(in + 4);
      return;
    } else if constexpr (sizeof(T) == 4) {
      *reinterpret_cast<uint4*>(base + lane * 4) = Pack<uint4, T, 4>(in);
      *reinterpret_cast<uint4*>(base + kHalf + lane * 4) = Pack<uint4, T, 4>(in + 4);
      return;
    } else {
      *reinterpret_cast<uint2*>(base + lane * 4) = Pack<uint2, T, 4>(in);
      *reinterpret_cast<uint2*>(base + kHalf + lane * 4) = Pack<uint2, T, 4>(in + 4);
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int idx = ElementIndex<kContiguous>(lane, j);
    if (idx < valid) base[idx] = in[j];
  }
}

// Codes: state arrays start 16-byte aligned and blocks are 256 bytes, so vector access is always
// allowed for a full block.
template <bool kContiguous>
__device__ __forceinline__ void LoadCodes(const uint8_t* base, int lane, int valid, uint8_t fill,
                                          uint8_t* out) {
  if (valid == kQuantBlock) {
    if constexpr (kContiguous) {
      Unpack<uint8_t, 8>(*reinterpret_cast<const uint2*>(base + lane * 8), out);
    } else {
      Unpack<uint8_t, 4>(*reinterpret_cast<const uint32_t*>(base + lane * 4), out);
      Unpack<uint8_t, 4>(*reinterpret_cast<const uint32_t*>(base + kHalf + lane * 4), out + 4);
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int idx = ElementIndex<kContiguous>(lane, j);
    out[j] = idx < valid ? base[idx] : fill;
  }
}

// LoadCodes' codes packed four to a word: element j in byte j % 4 of word j / 4 (both layouts),
// so that a table lookup takes its index straight from the word (LaneTable::AtByte).
template <bool kContiguous>
__device__ __forceinline__ void LoadCodeWords(const uint8_t* base, int lane, int valid,
                                              uint8_t fill, uint32_t* words) {
  if (valid == kQuantBlock) {
    if constexpr (kContiguous) {
      const uint2 v = *reinterpret_cast<const uint2*>(base + lane * 8);
      words[0] = v.x;
      words[1] = v.y;
    } else {
      words[0] = *reinterpret_cast<const uint32_t*>(base + lane * 4);
      words[1] = *reinterpret_cast<const uint32_t*>(base + kHalf + lane * 4);
    }
    return;
  }
  uint8_t codes[kPerThread];
  LoadCodes<kContiguous>(base, lane, valid, fill, codes);
  words[0] = Pack<uint32_t, uint8_t, 4>(codes);
  words[1] = Pack<uint32_t, uint8_t, 4>(codes + 4);
}

template <bool kContiguous>
__device__ __forceinline__ void StoreCodes(uint8_t* base, int lane, int valid, const uint8_t* in) {
  if (valid == kQuantBlock) {
    if constexpr (kContiguous) {
      *reinterpret_cast<uint2*>(base + lane * 8) = Pack<uint2, uint8_t, 8>(in);
    } else {
      *reinterpret_cast<uint32_t*>(base + lane * 4) = Pack<uint32_t, uint8_t, 4>(in);
      *reinterpret_cast<uint32_t*>(base + kHalf + lane * 4) = Pack<uint32_t, uint8_t, 4>(in + 4);
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int idx = ElementIndex<kContiguous>(lane, j);
    if (idx < valid) base[idx] = in[j];
  }
}

// Starts copying this lane's part of a full block into the staging area, in LoadLane's layout.
template <bool kContiguous, typename T>
__device__ __forceinline__ void StageLane(T* stage, const T* src, int lane) {
  if constexpr (kContiguous && sizeof(T) == 2) {
    CopyAsync<16>(stage + lane * 8, src + lane * 8);
  } else if constexpr (kContiguous) {
    CopyAsync<16>(stage + lane * 8, src + lane * 8);
    CopyAsync<16>(stage + lane * 8 + 4, src + lane * 8 + 4);
  } else if constexpr (sizeof(T) == 4) {
    CopyAsync<16>(stage + lane * 4, src + lane * 4);
    CopyAsync<16>(stage + kHalf + lane * 4, src + kHalf + lane * 4);
  } else {
    CopyAsync<8>(stage + lane * 4, src + lane * 4);
    CopyAsync<8>(stage + kHalf + lane * 4, src + kHalf + lane * 4);
  }
}

template <bool kContiguous>
__device__ __forceinline__ void StageCodes(uint8_t* stage, const uint8_t* src, int lane) {
  if constexpr (kContiguous) {
    CopyAsync<8>(stage + lane * 8, src + lane * 8);
  } else {
    CopyAsync<4>(stage + lane * 4, src + lane * 4);
    CopyAsync<4>(stage + kHalf + lane * 4, src + kHalf + lane * 4);
  }
}

// The warp's maximum of values that are each >= +0 or -FLT_MAX (a lane whose elements were all
// NaN), as WarpMax computes it: such floats order like their bits read as signed ints, so one
// redux instruction replaces five shuffle rounds.
__device__ __forceinline__ float WarpMaxNonNegativeOrLowest(float x) {
  return __int_as_float(__reduce_max_sync(kFullMask, __float_as_int(x)));
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// The segment holding global block `block` (segments are sorted by first_block).
__device__ __forceinline__ int FindSegment(const Segment* segs, int n, int64_t block) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (segs[mid].first_block <= block) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The shared-memory tables of a thread block, as seen by one lane.
struct Tables {
  LaneTable q1, q2;    // dequantization: the two maps
  LaneTable t1, t2;    // requantization thresholds (Note [Threshold search])
  const uint8_t* b1;
  const uint8_t* b2;
  int negative_codes;  // codes c < negative_codes have signbit(q1[c]) (a prefix: q1 is sorted)
};

// Adds the warp's NaN/Inf gradient elements to *counter (rare: one atomic only when some).
// Lanes past the end of a partial block hold g = 0, so they never count.
template <typename G>
__device__ __forceinline__ void CountNonFinite(const G* g_vals, int lane,
                                               unsigned long long* counter) {
  unsigned bad = 0;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const float gf = ToFloat(g_vals[j]);
    bad += (isnan(gf) || isinf(gf)) ? 1u : 0u;
  }
  bad = __reduce_add_sync(kFullMask, bad);
  if (lane == 0 && bad != 0 && counter != nullptr) atomicAdd(counter, bad);
}

// What an 8-bit update needs from the tensor's step and clipping scale: the same for every block
// of a segment, so computed once per segment a warp walks.
struct StepConstants {
  float correction2;
  float step_size;
  float gnorm_scale;
};

__device__ __forceinline__ StepConstants ConstantsFor8bit(const Segment& s, const Hyper& h) {
  const float correction1 = 1.0f - __powf(h.beta1, s.step);
  const float correction2 = sqrtf(1.0f - __powf(h.beta2, s.step));
  const float step_size = __fdividef(-h.lr * correction2, correction1);
  const float gnorm_scale = s.gnorm_scale != nullptr ? *s.gnorm_scale : 1.0f;
  return StepConstants{correction2, step_size, gnorm_scale};
}

// `s` is the warp's register copy of the segment (Note [Work mapping]).
// Whether block `blk` of `s` is full and allows the vector accesses, so that it can be staged.
template <typename P, typename G>
__device__ __forceinline__ bool Stageable(const Segment& s, int64_t blk) {
  if ((blk + 1) * kQuantBlock > s.numel) return false;
  constexpr bool kContiguous = sizeof(P) == 2 && sizeof(G) == 2;
  if (!kContiguous) return s.grad_aligned != 0;
  return s.grad_aligned != 0 && Aligned16(static_cast<const G*>(s.grad) + blk * kQuantBlock) &&
         Aligned16(static_cast<const P*>(s.param) + blk * kQuantBlock);
}

template <typename P, typename G>
__device__ __forceinline__ void StageBlock(const Segment& s, int64_t blk, int lane,
                                           uint8_t* stage) {
  constexpr bool kContiguous = sizeof(P) == 2 && sizeof(G) == 2;
  const int64_t base = blk * kQuantBlock;
  StageLane<kContiguous>(reinterpret_cast<G*>(stage), static_cast<const G*>(s.grad) + base, lane);
  StageLane<kContiguous>(reinterpret_cast<P*>(stage + kStageParam),
                         static_cast<const P*>(s.param) + base, lane);
  StageCodes<kContiguous>(stage + kStageCodes1, s.state1 + base, lane);
  StageCodes<kContiguous>(stage + kStageCodes2, s.state2 + base, lane);
  CopyAsyncCommit();
}

template <typename P, typename G>
__device__ __forceinline__ void Update8bitBlock(const Segment& s, int64_t blk, int lane,
                                                const Hyper& h, const StepConstants& k,
                                                const Tables& tab, unsigned long long* nonfinite,
                                                uint8_t* stage, bool staged, bool stage_next) {
  const LaneTable q1 = tab.q1, q2 = tab.q2;
  const float beta1 = h.beta1, beta2 = h.beta2, eps = h.eps, lr = h.lr;
  const float weight_decay = h.weight_decay;
  const float correction2 = k.correction2;
  const float step_size = k.step_size;
  const float gnorm_scale = k.gnorm_scale;

  const int64_t base = blk * kQuantBlock;
  const int64_t left = s.numel - base;
  const int valid = left < kQuantBlock ? static_cast<int>(left) : kQuantBlock;
  P* p = static_cast<P*>(s.param) + base;
  const G* g = static_cast<const G*>(s.grad) + base;
  uint8_t* state1 = s.state1 + base;
  uint8_t* state2 = s.state2 + base;
  float* absmax1_out = s.absmax1 + blk;
  float* absmax2_out = s.absmax2 + blk;
  // 16-bit params and gradients: the contiguous layout (one 16-byte access per lane and array).
  constexpr bool kContiguous = sizeof(P) == 2 && sizeof(G) == 2;
  const bool grad_vector = s.grad_aligned != 0 && (!kContiguous || Aligned16(g));
  const bool param_vector = !kContiguous || Aligned16(p);

  G g_vals[kPerThread];
  P p_vals[kPerThread];
  uint8_t c1s[kPerThread], c2s[kPerThread];  // the new codes
  uint32_t w1[2], w2[2];                      // the old ones, packed (LoadCodeWords)
  if (staged) {
    CopyAsyncWait();
    LoadLane<kContiguous>(reinterpret_cast<const G*>(stage), lane, kQuantBlock, true,
                          FromFloat<G>(0.0f), g_vals);
    LoadCodeWords<kContiguous>(stage + kStageCodes1, lane, kQuantBlock, 128, w1);
    LoadCodeWords<kContiguous>(stage + kStageCodes2, lane, kQuantBlock, 0, w2);
    LoadLane<kContiguous>(reinterpret_cast<const P*>(stage + kStageParam), lane, kQuantBlock, true,
                          FromFloat<P>(0.0f), p_vals);
  } else {
    LoadLane<kContiguous>(g, lane, valid, grad_vector, FromFloat<G>(0.0f), g_vals);
    LoadCodeWords<kContiguous>(state1, lane, valid, 128, w1);
    LoadCodeWords<kContiguous>(state2, lane, valid, 0, w2);
    LoadLane<kContiguous>(p, lane, valid, param_vector, FromFloat<P>(0.0f), p_vals);
  }
  const float absmax1 = *absmax1_out;
  const float absmax2 = *absmax2_out;

  // Branch-free: every element computes the finite-gradient update and a select keeps it or the
  // reference's else-branch value, so the eight elements' chains interleave (a branch per
  // element kept the scheduler inside one element at a time).
  float s1_vals[kPerThread], s2_vals[kPerThread];
  bool finite[kPerThread];
  unsigned nonfinite_count = 0;
  float new_absmax1 = -FLT_MAX, new_absmax2 = -FLT_MAX;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const float gf = ToFloat(g_vals[j]);
    finite[j] = !isnan(gf) && !isinf(gf);
    nonfinite_count += finite[j] ? 0u : 1u;
    float s2 = q2.AtByte(w2[j / 4], j % 4) * absmax2;
    float g_val = gf;
    g_val *= gnorm_scale;
    s2 = (s2 * beta2) + (((1.0f - beta2) * g_val * g_val));
    float s1 = q1.AtByte(w1[j / 4], j % 4) * absmax1;
    s1 = (s1 * beta1) + (((1.0f - beta1) * g_val));
    s1_vals[j] = finite[j] ? s1 : 0.0f;
    s2_vals[j] = finite[j] ? s2 : 0.0f;
    new_absmax1 = fmaxf(new_absmax1, fabsf(s1_vals[j]));
    new_absmax2 = fmaxf(new_absmax2, fabsf(s2_vals[j]));
  }
  new_absmax1 = WarpMaxNonNegativeOrLowest(new_absmax1);
  new_absmax2 = WarpMaxNonNegativeOrLowest(new_absmax2);
  if (lane == 0) {
    *absmax1_out = new_absmax1;
    *absmax2_out = new_absmax2;
  }
  // Lanes past the end of a partial block hold g = 0, so they never count.
  nonfinite_count = __reduce_add_sync(kFullMask, nonfinite_count);
  if (lane == 0 && nonfinite_count != 0 && nonfinite != nullptr)
    atomicAdd(nonfinite, static_cast<unsigned long long>(nonfinite_count));

#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    P updated = FromFloat<P>(
        ToFloat(p_vals[j]) +
        ((step_size * (__fdividef(s1_vals[j], (sqrtf(s2_vals[j]) + (correction2 * eps)))))));
    if (weight_decay > 0.0f)
      updated = FromFloat<P>(ToFloat(updated) * (1.0f - (lr * weight_decay)));
    if (finite[j]) p_vals[j] = updated;
  }
  StoreLane<kContiguous>(p, lane, valid, param_vector, p_vals);
  // Every staged value of this block has been used: the next block may overwrite the stage.
  if (stage_next) StageBlock<P, G>(s, blk + 1, lane, stage);

  float x1[kPerThread], x2[kPerThread];
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    x1[j] = __fdividef(s1_vals[j], new_absmax1);
    x2[j] = __fdividef(s2_vals[j], new_absmax2);
  }
  // Note [Requantizing the common block]: when the block's old and new scales are finite, the
  // old ones >= 0 and the new ones > 0, every x is finite (no inf or NaN ever enters the block's
  // values, and |x| <= 1 up to rounding) and every second-moment x is >= +0, so the search needs
  // no NaN or sign test (BucketedCode's kAnyX), and the signed search thresholds already give
  // the reference's sign fix (Note [The sign fix in the thresholds]). The branch is uniform
  // across the warp. Otherwise (a zero, infinite or NaN scale: rare) every x goes through the
  // reference's full rules.
  const bool common = absmax1 >= 0.0f && absmax1 <= FLT_MAX && absmax2 >= 0.0f &&
                      absmax2 <= FLT_MAX && new_absmax1 > 0.0f && new_absmax1 <= FLT_MAX &&
                      new_absmax2 > 0.0f && new_absmax2 <= FLT_MAX;
  if (common) {
    QuantizeCodesThreshold<true, kPerThread, false>(tab.t1, tab.b1, x1, c1s);
    QuantizeCodesThreshold<false, kPerThread, false>(tab.t2, tab.b2, x2, c2s);
  } else {
    QuantizeCodesThreshold<true, kPerThread, true>(tab.t1, tab.b1, x1, c1s);
    QuantizeCodesThreshold<false, kPerThread, true>(tab.t2, tab.b2, x2, c2s);
#pragma unroll
    for (int j = 0; j < kPerThread; ++j)
      c1s[j] = static_cast<uint8_t>(SignFixedCode(c1s[j], s1_vals[j], tab.negative_codes));
  }
  StoreCodes<kContiguous>(state1, lane, valid, c1s);
  StoreCodes<kContiguous>(state2, lane, valid, c2s);
}

// One block of 256 elements of a small tensor with fp32 states (the reference's 32-bit path:
// the clipped gradient is rounded to the gradient's type, NaN propagates).
template <typename P, typename G>
__device__ __forceinline__ void Update32bitBlock(const Segment& s, int64_t blk, int lane,
                                                 const Hyper& h, unsigned long long* nonfinite) {
  const float beta1 = h.beta1, beta2 = h.beta2, eps = h.eps, lr = h.lr;
  const float weight_decay = h.weight_decay;
  const float correction1 = 1.0f - powf(beta1, s.step);
  const float correction2 = sqrtf(1.0f - powf(beta2, s.step));
  const float step_size = -lr * correction2 / correction1;
  const float update_scale = 1.0f;
  const float gnorm_scale = s.gnorm_scale != nullptr ? *s.gnorm_scale : 1.0f;

  const int64_t base = blk * kQuantBlock;
  const int64_t left = s.numel - base;
  const int valid = left < kQuantBlock ? static_cast<int>(left) : kQuantBlock;
  P* p = static_cast<P*>(s.param) + base;
  const G* g = static_cast<const G*>(s.grad) + base;
  float* m = s.m + base;
  float* v = s.v + base;

  G g_vals[kPerThread];
  P p_vals[kPerThread];
  float s1_vals[kPerThread], s2_vals[kPerThread];
  LoadLane(g, lane, valid, s.grad_aligned != 0, FromFloat<G>(0.0f), g_vals);
  LoadLane(p, lane, valid, true, FromFloat<P>(0.0f), p_vals);
  LoadLane(m, lane, valid, true, 0.0f, s1_vals);
  LoadLane(v, lane, valid, true, 0.0f, s2_vals);
  CountNonFinite<G>(g_vals, lane, nonfinite);
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const float g_val = ToFloat(FromFloat<G>(gnorm_scale * ToFloat(g_vals[j])));
    s1_vals[j] = s1_vals[j] * beta1 + ((1.0f - beta1) * (g_val));
    s2_vals[j] = s2_vals[j] * beta2 + ((1.0f - beta2) * ((g_val) * (g_val)));
    p_vals[j] = FromFloat<P>(
        ToFloat(p_vals[j]) +
        (update_scale * step_size * (s1_vals[j] / (sqrtf(s2_vals[j]) + (eps * correction2)))));
    if (weight_decay > 0.0f)
      p_vals[j] = FromFloat<P>(ToFloat(p_vals[j]) * (1.0f - (lr * weight_decay)));
  }
  StoreLane(p, lane, valid, true, p_vals);
  StoreLane(m, lane, valid, true, s1_vals);
  StoreLane(v, lane, valid, true, s2_vals);
}

// Blocks [first, last) of one segment, with the element types fixed.
template <typename P, typename G>
__device__ __forceinline__ void UpdateBlocks(const Segment& s, int64_t first, int64_t last,
                                             int lane, const Hyper& h, const Tables& tab,
                                             unsigned long long* nf, uint8_t* stage) {
  if (s.eight_bit) {
    const StepConstants k = ConstantsFor8bit(s, h);
    bool staged = Stageable<P, G>(s, first);
    if (staged) StageBlock<P, G>(s, first, lane, stage);
    for (int64_t blk = first; blk < last; ++blk) {
      const bool stage_next = blk + 1 < last && Stageable<P, G>(s, blk + 1);
      Update8bitBlock<P, G>(s, blk, lane, h, k, tab, nf, stage, staged, stage_next);
      staged = stage_next;
    }
  } else {
    for (int64_t blk = first; blk < last; ++blk) Update32bitBlock<P, G>(s, blk, lane, h, nf);
  }
}

template <typename P>
__device__ __forceinline__ void DispatchGrad(const Segment& s, int64_t first, int64_t last,
                                             int lane, const Hyper& h, const Tables& tab,
                                             unsigned long long* nf, uint8_t* stage) {
  switch (s.grad_dtype) {
    case 0: UpdateBlocks<P, float>(s, first, last, lane, h, tab, nf, stage); break;
    case 1: UpdateBlocks<P, __half>(s, first, last, lane, h, tab, nf, stage); break;
    default: UpdateBlocks<P, __nv_bfloat16>(s, first, last, lane, h, tab, nf, stage); break;
  }
}

// One thread block per multiprocessor: the four per-lane tables (about 140 KiB) are filled once
// per multiprocessor and shared by all its warps, beside each warp's staging area (Note
// [Staging the next block]). 24 warps of 80 registers: with staging, 32 warps (64 registers)
// spill and run slower on every row (bench/RESULTS.md, version 11).
constexpr int kUpdateWarps = 24;
constexpr size_t kMapReplicaBytes = kQuantBlock * kTableCopies * sizeof(float);       // 32 KiB
constexpr size_t kThresholdReplicaBytes = kThresholds * kTableCopies * sizeof(float);  // 33 KiB
constexpr size_t kTableSmemBytes =
    2 * kMapReplicaBytes + 2 * kThresholdReplicaBytes + kSignedBuckets + kUnsignedBuckets;

__device__ __forceinline__ int64_t SegmentEnd(const Segment& s) {
  return s.first_block + (s.numel + kQuantBlock - 1) / kQuantBlock;
}

// A persistent grid (one thread block per multiprocessor); each warp owns a contiguous run of
// blocks, so it searches for its first segment once and then walks forward.
__global__ void __launch_bounds__(kUpdateWarps * kWarpSize, 1)
    AdamWUpdateKernel(const LaunchParams params) {
  constexpr int kUpdateThreads = kUpdateWarps * kWarpSize;
  // [256][kTableCopies] q1, q2, then [kThresholds][kTableCopies] t1, t2, then the buckets.
  extern __shared__ float tables[];
  float* q1 = tables;
  float* q2 = q1 + kQuantBlock * kTableCopies;
  float* t1 = q2 + kQuantBlock * kTableCopies;
  float* t2 = t1 + kThresholds * kTableCopies;
  for (int i = threadIdx.x; i < kQuantBlock * kTableCopies; i += kUpdateThreads) {
    q1[i] = params.qmap1[i / kTableCopies];
    q2[i] = params.qmap2[i / kTableCopies];
  }
  // Codes below negative_codes have negative values (q1 is sorted): the signed table's `zero`.
  const int negative_codes =
      __syncthreads_count(threadIdx.x < kQuantBlock && signbit(params.qmap1[threadIdx.x]));
  for (int i = threadIdx.x; i < kThresholds * kTableCopies; i += kUpdateThreads) {
    t1[i] = SignedSearchThreshold(params.qmap1, negative_codes, i / kTableCopies);
    t2[i] = Threshold(params.qmap2, i / kTableCopies);
  }
  uint8_t* buckets = reinterpret_cast<uint8_t*>(t2 + kThresholds * kTableCopies);
  for (int i = threadIdx.x; i < kSignedBuckets; i += kUpdateThreads) buckets[i] = params.buckets1[i];
  for (int i = threadIdx.x; i < kUnsignedBuckets; i += kUpdateThreads)
    buckets[kSignedBuckets + i] = params.buckets2[i];
  __syncthreads();

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  uint8_t* stage = reinterpret_cast<uint8_t*>(tables) + kTableSmemBytes + warp * kStageBytes;
  const uint32_t lane_offset = static_cast<uint32_t>(lane) * sizeof(float);
  auto bytes = [](const float* t) { return reinterpret_cast<const char*>(t); };
  const Tables tab{LaneTable{bytes(q1), lane_offset}, LaneTable{bytes(q2), lane_offset},
                   LaneTable{bytes(t1), lane_offset}, LaneTable{bytes(t2), lane_offset},
                   buckets, buckets + kSignedBuckets, negative_codes};
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kUpdateWarps;
  const int64_t per_warp = (params.total_blocks + warps - 1) / warps;
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) * kUpdateWarps + warp) * per_warp;
  const int64_t end = min(params.total_blocks, begin + per_warp);
  if (begin >= end) return;
  int si = FindSegment(params.segments, params.num_segments, begin);
  int64_t seg_end = SegmentEnd(params.segments[si]);
  // One pass per segment the run touches: the descriptor is copied to registers once (stores
  // cannot alias a copy, so nothing is reloaded per block) and the types are dispatched once.
  for (int64_t block = begin; block < end;) {
    while (block >= seg_end) seg_end = SegmentEnd(params.segments[++si]);
    const Segment& s = params.segments[si];
    const int64_t stop = min(end, seg_end);
    const int64_t first = block - s.first_block, last = stop - s.first_block;
    switch (s.param_dtype) {
      case 0:
        DispatchGrad<float>(s, first, last, lane, params.hyper, tab, params.nonfinite, stage);
        break;
      case 1:
        DispatchGrad<__half>(s, first, last, lane, params.hyper, tab, params.nonfinite, stage);
        break;
      default:
        DispatchGrad<__nv_bfloat16>(s, first, last, lane, params.hyper, tab, params.nonfinite,
                                    stage);
        break;
    }
    block = stop;
  }
}

template <typename G>
__device__ __forceinline__ float BlockSumSquares(const Segment& s, int64_t blk, int lane) {
  const int64_t base = blk * kQuantBlock;
  const int64_t left = s.numel - base;
  const int valid = left < kQuantBlock ? static_cast<int>(left) : kQuantBlock;
  G g_vals[kPerThread];
  LoadLane(static_cast<const G*>(s.grad) + base, lane, valid, s.grad_aligned != 0,
           FromFloat<G>(0.0f), g_vals);
  float local_sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) local_sum += ToFloat(g_vals[j]) * ToFloat(g_vals[j]);
  return WarpSum(local_sum);
}

// sum(g^2) of each block of 256, written to the segment's partials (no atomics: deterministic).
__global__ void __launch_bounds__(kThreads) SumSquaresKernel(const LaunchParams params) {
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t block = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (block >= params.total_blocks) return;
  const Segment& s = params.segments[FindSegment(params.segments, params.num_segments, block)];
  const int64_t blk = block - s.first_block;
  float sum;
  switch (s.grad_dtype) {
    case 0: sum = BlockSumSquares<float>(s, blk, lane); break;
    case 1: sum = BlockSumSquares<__half>(s, blk, lane); break;
    default: sum = BlockSumSquares<__nv_bfloat16>(s, blk, lane); break;
  }
  if (lane == 0) s.partials[blk] = sum;
}

constexpr int kClipThreads = 256;

// One thread block per tensor: records the squared norm in the history and derives the scale
// as the reference's percentile_clipping does (sorted history, IEEE sqrt and division).
__global__ void __launch_bounds__(kClipThreads) ClipScaleKernel(const ClipJob* jobs) {
  const ClipJob job = jobs[blockIdx.x];
  __shared__ float hist[kHistory];
  __shared__ float kth;
  __shared__ float sums[kClipThreads];
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < job.num_blocks; i += kClipThreads) acc += job.partials[i];
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kClipThreads / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) sums[threadIdx.x] += sums[threadIdx.x + w];
    __syncthreads();
  }
  const float s = sums[0];
  const int slot = job.step % kHistory;
  if (threadIdx.x < kHistory) {
    const float old = job.gnorm_vec[threadIdx.x];
    const float now = (job.step == 1 || static_cast<int>(threadIdx.x) == slot) ? s : old;
    hist[threadIdx.x] = now;
    job.gnorm_vec[threadIdx.x] = now;
  }
  __syncthreads();
  if (threadIdx.x < kHistory) {
    const float x = hist[threadIdx.x];
    int less = 0, less_equal = 0;
    for (int j = 0; j < kHistory; ++j) {
      less += hist[j] < x;
      less_equal += hist[j] <= x;
    }
    // The k-th smallest (0-based) is x when less <= k < less_equal; tied threads agree.
    if (less <= job.percentile && job.percentile < less_equal) kth = x;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const float current = __fsqrt_rn(hist[slot]);
    const float clip = __fsqrt_rn(kth);
    *job.scale = current > clip ? __fdiv_rn(clip, current) : 1.0f;
  }
}

unsigned GridFor(int64_t total_blocks) {
  return static_cast<unsigned>((total_blocks + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

cudaError_t LaunchAdamWUpdate(const LaunchParams& params, cudaStream_t stream) {
  if (params.total_blocks == 0) return cudaSuccess;
  constexpr size_t kSmem = kTableSmemBytes + kUpdateWarps * kStageBytes;
  const cudaError_t err =
      cudaFuncSetAttribute(AdamWUpdateKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  const int64_t wanted = (params.total_blocks + kUpdateWarps - 1) / kUpdateWarps;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(wanted, params.sm_count));
  AdamWUpdateKernel<<<grid, kUpdateWarps * kWarpSize, kSmem, stream>>>(params);
  return cudaGetLastError();
}

cudaError_t LaunchGradSumSquares(const LaunchParams& params, cudaStream_t stream) {
  if (params.total_blocks == 0) return cudaSuccess;
  SumSquaresKernel<<<GridFor(params.total_blocks), kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

cudaError_t LaunchClipScale(const ClipJob* jobs, int num_jobs, cudaStream_t stream) {
  if (num_jobs == 0) return cudaSuccess;
  ClipScaleKernel<<<num_jobs, kClipThreads, 0, stream>>>(jobs);
  return cudaGetLastError();
}

}  // namespace optd::core::internal::cuda
