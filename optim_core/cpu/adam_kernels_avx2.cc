#include "cpu/adam_kernels_avx2.h"

#include <immintrin.h>
#if defined(__clang__)
#include <cpuid.h>
#endif

#include "internal/quantize.h"
#include "optd/core/quant_maps.h"

namespace optd::core::cpu {

bool Avx2Available() {
#if defined(__clang__)
  // clang 14's __builtin_cpu_supports knows no "f16c" (the fuzz build uses clang): ask CPUID.
  static const bool available = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __builtin_cpu_supports("avx2") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 &&
           (ecx & bit_F16C) != 0;
  }();
#else
  static const bool available =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#endif
  return available;
}

// Everything below is compiled for AVX2 + F16C and has internal linkage, so no inline function
// shared with portable code is ever emitted with these instructions.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c,fma"))), apply_to = function)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC push_options
#pragma GCC target("avx2,f16c,fma")
// Only the explicit _mm256_fmadd/fnmadd below may fuse; every other product stays rounded.
#pragma GCC optimize("fp-contract=off")
#endif

namespace {

// Element types as tags for the loads and stores below.
struct F32 {};
struct F16 {};
struct BF16 {};

template <typename T>
struct Storage;
template <>
struct Storage<F32> {
  using type = float;
};
template <>
struct Storage<F16> {
  using type = uint16_t;
};
template <>
struct Storage<BF16> {
  using type = uint16_t;
};

inline __m256 Load8(F32, const void* p) { return _mm256_loadu_ps(static_cast<const float*>(p)); }
inline __m256 Load8(F16, const void* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
}
inline __m256 Load8(BF16, const void* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// Rounds to the storage type and back (the value the stored element will have).
inline __m256 Round(F32, __m256 x) { return x; }
inline __m256 Round(F16, __m256 x) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline __m256 Round(BF16, __m256 x) {
  // Round to nearest even on the low 16 bits, as FloatToBFloat16; NaN stays a quiet NaN.
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_and_si256(
      _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)),
      _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
  const __m256i quiet = _mm256_and_si256(_mm256_or_si256(u, _mm256_set1_epi32(0x00400000)),
                                         _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_castsi256_ps(_mm256_blendv_epi8(rounded, quiet, nan));
}

// Stores values already rounded by Round (so the conversion is exact).
inline void Store8(F32, void* p, __m256 x) { _mm256_storeu_ps(static_cast<float*>(p), x); }
inline void Store8(F16, void* p, __m256 x) {
  _mm_storeu_si128(static_cast<__m128i*>(p),
                   _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void Store8(BF16, void* p, __m256 x) {
  const __m256i hi = _mm256_srli_epi32(_mm256_castps_si256(x), 16);
  const __m128i packed =
      _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
  _mm_storeu_si128(static_cast<__m128i*>(p), packed);
}

inline __m256i LoadCodes(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

inline void StoreCodes(uint8_t* p, __m256i c) {
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w, w));
}

// CodeFinder::Find on 8 lanes: one gather of the packed bucket entries.
// kNonNegative: x is known to have a clear sign bit (the second moment), so the key is its bits.
// kMayBeNan: NaN lanes must give code 0 (not needed where the caller knows x is not NaN).
template <bool kNonNegative, bool kMayBeNan>
inline __m256i Find8(const internal::CodeFinder::Tables& f, __m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  __m256i key;
  if (kNonNegative) {
    key = bits;
  } else {
    const __m256i sign = _mm256_srai_epi32(bits, 31);
    const __m256i magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
    key = _mm256_sub_epi32(_mm256_xor_si256(magnitude, sign), sign);  // -mag if negative
  }
  key = _mm256_max_epi32(key, _mm256_set1_epi32(f.min_key));
  key = _mm256_min_epi32(key, _mm256_set1_epi32(f.max_key));
  const __m256i bucket = _mm256_sub_epi32(_mm256_srai_epi32(key, internal::CodeFinder::kShift),
                                          _mm256_set1_epi32(f.bucket_base));
  const __m256i e =
      _mm256_i32gather_epi32(reinterpret_cast<const int*>(f.entry), bucket, 4);
  const __m256i code = _mm256_and_si256(e, _mm256_set1_epi32(internal::CodeFinder::kCodeMask));
  const __m256i mid_key =
      _mm256_or_si256(_mm256_and_si256(key, _mm256_set1_epi32(static_cast<int>(0xffff0000u))),
                      _mm256_srli_epi32(e, 16));
  const __m256i tie_up = _mm256_cmpeq_epi32(
      _mm256_and_si256(e, _mm256_set1_epi32(internal::CodeFinder::kTieUp)),
      _mm256_set1_epi32(internal::CodeFinder::kTieUp));
  const __m256i above = _mm256_cmpgt_epi32(key, mid_key);
  const __m256i tie = _mm256_and_si256(_mm256_cmpeq_epi32(key, mid_key), tie_up);
  const __m256i up = _mm256_or_si256(above, tie);  // -1 where the code goes up
  const __m256i found = _mm256_sub_epi32(code, up);
  if (!kMayBeNan) return found;
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_andnot_si256(nan, found);
}

// m / a correctly rounded, from the block's reciprocal: q = m * r, then one correction with the
// exact residual m - q * a (Markstein: with r = RN(1/a), RN(q + (m - q a) r) = RN(m / a)).
// REQUIRES: 2^-60 <= a <= 2^100, r = 1 / a rounded. Then every quotient that can decide a code
// (|m / a| >= 2^-24; the tables' smallest midpoint is 1.6e-7) has |m| >= 2^-84, so the residual
// is exact and the result correctly rounded; smaller quotients may be off by an ulp, which
// cannot move them across a midpoint.
inline __m256 DivideByBlockMax(__m256 m, __m256 a, __m256 r) {
  const __m256 q = _mm256_mul_ps(m, r);
  const __m256 residual = _mm256_fnmadd_ps(q, a, m);
  return _mm256_fmadd_ps(residual, r, q);
}

inline float HorizontalMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// Spec steps 4 and 5 for one full block, from the new moments m, v and block maxima.
// kFast: both maxima in [2^-60, 2^100] and no NaN moment. Then x1 = m / max1 has m's sign and is
// never NaN, so the sign fix reduces to "a negative m (or -0) that landed on code 127 (zero)
// moves to 126": a non-negative x never gets a code below 127, a negative one never above it.
template <typename PT, bool kFast>
inline void UpdateAndRequantize(typename Storage<PT>::type* p, uint8_t* c1, uint8_t* c2,
                                const float* m, const float* v, const int32_t* finite,
                                const StepConstants& k, float max1, float max2,
                                const internal::CodeFinder::Tables& f1,
                                const internal::CodeFinder::Tables& f2) {
  const __m256 step_size = _mm256_set1_ps(k.step_size);
  const __m256 eps_term = _mm256_set1_ps(k.eps_term);
  const __m256 decay = _mm256_set1_ps(k.decay_factor);
  const __m256 max1v = _mm256_set1_ps(max1);
  const __m256 max2v = _mm256_set1_ps(max2);
  const __m256 recip1 = _mm256_set1_ps(1.0f / max1);
  const __m256 recip2 = _mm256_set1_ps(1.0f / max2);
  const __m256i zero_code = _mm256_set1_epi32(127);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i minus_one = _mm256_set1_epi32(-1);
  for (int j = 0; j < kBlockSize; j += 8) {
    const __m256 mj = _mm256_load_ps(m + j);
    const __m256 vj = _mm256_load_ps(v + j);

    // Parameter (non-finite gradient lanes keep the old value, without decay).
    const __m256 pj = Load8(PT{}, p + j);
    const __m256 update = _mm256_mul_ps(
        step_size, _mm256_div_ps(mj, _mm256_add_ps(_mm256_sqrt_ps(vj), eps_term)));
    const __m256 updated = Round(PT{}, _mm256_add_ps(pj, update));
    const __m256 decayed = Round(PT{}, _mm256_mul_ps(updated, decay));
    const __m256 ok =
        _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(finite + j)));
    Store8(PT{}, p + j, _mm256_blendv_ps(pj, decayed, ok));

    // Requantize.
    const __m256i m_negative = _mm256_srai_epi32(_mm256_castps_si256(mj), 31);
    __m256i code1;
    __m256i code2;
    if (kFast) {
      code1 = Find8<false, false>(f1, DivideByBlockMax(mj, max1v, recip1));
      code1 = _mm256_add_epi32(code1,
                               _mm256_and_si256(m_negative, _mm256_cmpeq_epi32(code1, zero_code)));
      code2 = Find8<true, false>(f2, DivideByBlockMax(vj, max2v, recip2));
    } else {
      code1 = Find8<false, true>(f1, _mm256_div_ps(mj, max1v));
      // Sign fix, general form: the table entry is negative below code 127; m's sign is its
      // sign bit; move toward m's sign, wrapping in uint8 (all-zero block: 0 - 1 = 255).
      const __m256i table_negative = _mm256_cmpgt_epi32(zero_code, code1);
      const __m256i differ = _mm256_xor_si256(table_negative, m_negative);
      const __m256i m_positive =
          _mm256_castps_si256(_mm256_cmp_ps(mj, _mm256_setzero_ps(), _CMP_GT_OQ));
      const __m256i delta = _mm256_blendv_epi8(minus_one, one, m_positive);
      code1 = _mm256_and_si256(_mm256_add_epi32(code1, _mm256_and_si256(differ, delta)),
                               _mm256_set1_epi32(0xff));
      code2 = Find8<false, true>(f2, _mm256_div_ps(vj, max2v));
    }
    StoreCodes(c1 + j, code1);
    StoreCodes(c2 + j, code2);
  }
}

template <typename PT, typename GT>
int64_t FullBlock(const TensorBuffers& t, const StepConstants& k, int64_t block,
                  const internal::CodeFinder::Tables& f1,
                  const internal::CodeFinder::Tables& f2) {
  using PS = typename Storage<PT>::type;
  using GS = typename Storage<GT>::type;
  const int64_t base = block * kBlockSize;
  PS* p = static_cast<PS*>(t.param) + base;
  const GS* g = static_cast<const GS*>(t.grad) + (base - t.grad_offset);
  uint8_t* c1 = t.state1 + base;
  uint8_t* c2 = t.state2 + base;

  alignas(32) float m[kBlockSize];
  alignas(32) float v[kBlockSize];
  alignas(32) int32_t finite[kBlockSize];

  const __m256 a1 = _mm256_set1_ps(t.absmax1[block]);
  const __m256 a2 = _mm256_set1_ps(t.absmax2[block]);
  const __m256 beta1 = _mm256_set1_ps(k.beta1);
  const __m256 beta2 = _mm256_set1_ps(k.beta2);
  const __m256 omb1 = _mm256_set1_ps(k.one_minus_beta1);
  const __m256 omb2 = _mm256_set1_ps(k.one_minus_beta2);
  const __m256 scale = _mm256_set1_ps(k.gnorm_scale);
  const __m256i exponent = _mm256_set1_epi32(0x7f800000);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 max1 = _mm256_setzero_ps();
  __m256 max2 = _mm256_setzero_ps();
  __m256 any_nan = _mm256_setzero_ps();  // only from states that were NaN already
  __m256i nonfinite_lanes = _mm256_setzero_si256();  // minus the count per lane
  for (int j = 0; j < kBlockSize; j += 8) {
    const __m256 mdq = _mm256_mul_ps(_mm256_i32gather_ps(kSignedQuantMap, LoadCodes(c1 + j), 4), a1);
    const __m256 vdq =
        _mm256_mul_ps(_mm256_i32gather_ps(kUnsignedQuantMap, LoadCodes(c2 + j), 4), a2);
    const __m256 gj = Load8(GT{}, g + j);
    const __m256i is_inf_nan = _mm256_cmpeq_epi32(
        _mm256_and_si256(_mm256_castps_si256(gj), exponent), exponent);
    const __m256 ok = _mm256_castsi256_ps(_mm256_xor_si256(is_inf_nan, _mm256_set1_epi32(-1)));
    nonfinite_lanes = _mm256_add_epi32(nonfinite_lanes, is_inf_nan);
    const __m256 gs = _mm256_mul_ps(gj, scale);
    const __m256 vj = _mm256_add_ps(_mm256_mul_ps(vdq, beta2),
                                    _mm256_mul_ps(_mm256_mul_ps(omb2, gs), gs));
    const __m256 mj = _mm256_add_ps(_mm256_mul_ps(mdq, beta1), _mm256_mul_ps(omb1, gs));
    const __m256 mk = _mm256_and_ps(mj, ok);
    const __m256 vk = _mm256_and_ps(vj, ok);
    _mm256_store_ps(m + j, mk);
    _mm256_store_ps(v + j, vk);
    _mm256_store_si256(reinterpret_cast<__m256i*>(finite + j), _mm256_castps_si256(ok));
    // max(value, acc): a NaN value leaves acc, like std::max(acc, value) in the portable code.
    any_nan = _mm256_or_ps(any_nan, _mm256_cmp_ps(mk, vk, _CMP_UNORD_Q));
    max1 = _mm256_max_ps(_mm256_and_ps(mk, abs_mask), max1);
    max2 = _mm256_max_ps(_mm256_and_ps(vk, abs_mask), max2);
  }
  alignas(32) int32_t lane_counts[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane_counts), nonfinite_lanes);
  int nonfinite = 0;
  for (int l = 0; l < 8; ++l) nonfinite -= lane_counts[l];
  const float new_max1 = HorizontalMax(max1);
  const float new_max2 = HorizontalMax(max2);
  t.absmax1[block] = new_max1;
  t.absmax2[block] = new_max2;

  // The reciprocal division needs maxima in a safe range (see DivideByBlockMax), and the short
  // requantization below needs no NaN; an all-zero block (0/0 = NaN), tiny, huge or
  // non-finite maxima, or NaN states take the general one.
  const bool fast = new_max1 >= 0x1p-60f && new_max1 <= 0x1p100f && new_max2 >= 0x1p-60f &&
                    new_max2 <= 0x1p100f && _mm256_movemask_ps(any_nan) == 0;
  if (fast) {
    UpdateAndRequantize<PT, true>(p, c1, c2, m, v, finite, k, new_max1, new_max2, f1, f2);
  } else {
    UpdateAndRequantize<PT, false>(p, c1, c2, m, v, finite, k, new_max1, new_max2, f1, f2);
  }
  return nonfinite;
}

template <typename PT, typename GT>
int64_t FullBlocks(const TensorBuffers& t, const StepConstants& k, int64_t first, int64_t end) {
  const internal::CodeFinder::Tables f1 = internal::CodeFinder::Signed().tables();
  const internal::CodeFinder::Tables f2 = internal::CodeFinder::Unsigned().tables();
  int64_t nonfinite = 0;
  for (int64_t b = first; b < end; ++b) nonfinite += FullBlock<PT, GT>(t, k, b, f1, f2);
  return nonfinite;
}

template <typename PT>
int64_t WithGrad(const TensorBuffers& t, const StepConstants& k, int64_t first, int64_t end) {
  switch (t.grad_dtype) {
    case DType::kFloat32:
      return FullBlocks<PT, F32>(t, k, first, end);
    case DType::kFloat16:
      return FullBlocks<PT, F16>(t, k, first, end);
    case DType::kBFloat16:
      return FullBlocks<PT, BF16>(t, k, first, end);
  }
  return 0;
}

}  // namespace

int64_t Update8BitFullBlocksAvx2(const TensorBuffers& t, const StepConstants& k,
                                 int64_t first_block, int64_t end_block) {
  switch (t.param_dtype) {
    case DType::kFloat32:
      return WithGrad<F32>(t, k, first_block, end_block);
    case DType::kFloat16:
      return WithGrad<F16>(t, k, first_block, end_block);
    case DType::kBFloat16:
      return WithGrad<BF16>(t, k, first_block, end_block);
  }
  return 0;
}

void DivideByBlockMaxForTesting(const float* m, int64_t n, float a, float* out) {
  const __m256 av = _mm256_set1_ps(a);
  const __m256 r = _mm256_set1_ps(1.0f / a);
  for (int64_t i = 0; i < n; i += 8) {
    _mm256_storeu_ps(out + i, DivideByBlockMax(_mm256_loadu_ps(m + i), av, r));
  }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

}  // namespace optd::core::cpu
