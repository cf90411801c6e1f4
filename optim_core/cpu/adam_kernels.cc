#include "cpu/adam_kernels.h"

#include <algorithm>
#include <cmath>

#include "cpu/adam_kernels_avx2.h"
#include "cpu/element.h"
#include "internal/quantize.h"
#include "optd/core/quant_maps.h"

namespace optd::core::cpu {
namespace {

// One block of the 8-bit path (spec steps 1-5). Loops are split so the arithmetic ones are
// free of table lookups and branches and vectorize; the lookups (dequantize, quantize) are
// gathers, which x86-64-v2 does one lane at a time anyway.
template <typename PT, typename GT>
int64_t Block8(const TensorBuffers& t, const StepConstants& k, int64_t block,
               const internal::CodeFinder& finder1, const internal::CodeFinder& finder2) {
  const int64_t base = block * kBlockSize;
  const int n = static_cast<int>(std::min<int64_t>(kBlockSize, t.numel - base));
  PT* p = static_cast<PT*>(t.param) + base;
  const GT* g = static_cast<const GT*>(t.grad) + (base - t.grad_offset);
  uint8_t* c1 = t.state1 + base;
  uint8_t* c2 = t.state2 + base;
  const float old_absmax1 = t.absmax1[block];
  const float old_absmax2 = t.absmax2[block];

  alignas(64) float m[kBlockSize];
  alignas(64) float v[kBlockSize];
  alignas(64) float gs[kBlockSize];
  for (int j = 0; j < n; ++j) {
    m[j] = kSignedQuantMap[c1[j]] * old_absmax1;
    v[j] = kUnsignedQuantMap[c2[j]] * old_absmax2;
    gs[j] = ToFloat(g[j]);
  }
  float max1 = 0.0f;
  float max2 = 0.0f;
  int nonfinite = 0;
  for (int j = 0; j < n; ++j) {
    const float gj = gs[j];
    const bool finite = IsFiniteBits(gj);
    const float gsc = gj * k.gnorm_scale;
    const float vj = v[j] * k.beta2 + (k.one_minus_beta2 * gsc) * gsc;
    const float mj = m[j] * k.beta1 + k.one_minus_beta1 * gsc;
    m[j] = finite ? mj : 0.0f;
    v[j] = finite ? vj : 0.0f;
    max1 = std::max(max1, std::fabs(m[j]));
    max2 = std::max(max2, std::fabs(v[j]));
    nonfinite += finite ? 0 : 1;
  }
  if (n < kBlockSize) {
    // Spec step 3: the reference pads the last block with g = 0, code1 = 128, code2 = 0.
    const float pad_m = (kSignedQuantMap[128] * old_absmax1) * k.beta1 + k.one_minus_beta1 * 0.0f;
    max1 = std::max(max1, std::fabs(pad_m));
  }
  t.absmax1[block] = max1;
  t.absmax2[block] = max2;

  for (int j = 0; j < n; ++j) {
    const float pj = ToFloat(p[j]);
    const float updated = ToFloat(
        FromFloat<PT>(pj + k.step_size * (m[j] / (std::sqrt(v[j]) + k.eps_term))));
    const PT decayed = FromFloat<PT>(updated * k.decay_factor);
    // Non-finite gradient: the parameter stays as it was, without decay (spec step 1).
    p[j] = IsFiniteBits(gs[j]) ? decayed : p[j];
  }

  for (int j = 0; j < n; ++j) {
    int code1 = finder1.Find(m[j] / max1);
    // Keep m's sign: a value quantized to the other side of zero moves one code back (wrapping
    // in uint8 as the reference does, which is how an all-zero block ends at 255).
    if (std::signbit(kSignedQuantMap[code1]) != std::signbit(m[j])) {
      code1 += m[j] > 0.0f ? 1 : -1;
    }
    c1[j] = static_cast<uint8_t>(code1);
    c2[j] = finder2.Find(v[j] / max2);
  }
  return nonfinite;
}

template <typename PT, typename GT>
int64_t Blocks8(const TensorBuffers& t, const StepConstants& k, int64_t first, int64_t end) {
  const internal::CodeFinder& finder1 = internal::CodeFinder::Signed();
  const internal::CodeFinder& finder2 = internal::CodeFinder::Unsigned();
  int64_t nonfinite = 0;
  for (int64_t b = first; b < end; ++b) nonfinite += Block8<PT, GT>(t, k, b, finder1, finder2);
  return nonfinite;
}

template <typename PT, typename GT>
int64_t Range32(const TensorBuffers& t, const StepConstants& k, int64_t begin, int64_t end) {
  PT* p = static_cast<PT*>(t.param);
  const GT* g = static_cast<const GT*>(t.grad);
  float* s1 = t.state1_f32;
  float* s2 = t.state2_f32;
  int64_t nonfinite = 0;
  for (int64_t i = begin; i < end; ++i) {
    const float gj = ToFloat(g[i - t.grad_offset]);
    nonfinite += IsFiniteBits(gj) ? 0 : 1;
    // The reference's 32-bit kernel scales the gradient in place, in its own dtype, so the
    // clipped gradient is rounded to fp16/bf16 (the 8-bit kernel keeps it in fp32).
    const float gsc = ToFloat(FromFloat<GT>(gj * k.gnorm_scale));
    // The 32-bit kernel's order of operations differs from the 8-bit one: (1-b2)*(g*g).
    const float mj = s1[i] * k.beta1 + k.one_minus_beta1 * gsc;
    const float vj = s2[i] * k.beta2 + k.one_minus_beta2 * (gsc * gsc);
    s1[i] = mj;
    s2[i] = vj;
    // No NaN guard on this path: NaN propagates as in the reference.
    const float updated = ToFloat(
        FromFloat<PT>(ToFloat(p[i]) + k.step_size * (mj / (std::sqrt(vj) + k.eps_term))));
    p[i] = FromFloat<PT>(updated * k.decay_factor);
  }
  return nonfinite;
}

template <typename GT>
double SumSquaresT(const GT* g, int64_t begin, int64_t end) {
  // Eight partial sums: the loop vectorizes without reassociating one long chain.
  constexpr int kLanes = 8;
  double acc[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float x = ToFloat(g[i + l]);
      acc[l] += static_cast<double>(x * x);
    }
  }
  double sum = 0;
  for (; i < end; ++i) {
    const float x = ToFloat(g[i]);
    sum += static_cast<double>(x * x);
  }
  for (double a : acc) sum += a;
  return sum;
}

// Dispatch over (param dtype, grad dtype): 9 instantiations per path.
template <template <typename, typename> class F, typename... Args>
int64_t Dispatch(DType pt, DType gt, Args&&... args) {
  auto with_grad = [&](auto p_tag) -> int64_t {
    using P = decltype(p_tag);
    switch (gt) {
      case DType::kFloat32:
        return F<P, float>::Run(args...);
      case DType::kFloat16:
        return F<P, Fp16>::Run(args...);
      case DType::kBFloat16:
        return F<P, Bf16>::Run(args...);
    }
    return 0;
  };
  switch (pt) {
    case DType::kFloat32:
      return with_grad(float{});
    case DType::kFloat16:
      return with_grad(Fp16{});
    case DType::kBFloat16:
      return with_grad(Bf16{});
  }
  return 0;
}

template <typename PT, typename GT>
struct Blocks8Fn {
  static int64_t Run(const TensorBuffers& t, const StepConstants& k, int64_t a, int64_t b) {
    return Blocks8<PT, GT>(t, k, a, b);
  }
};
template <typename PT, typename GT>
struct Range32Fn {
  static int64_t Run(const TensorBuffers& t, const StepConstants& k, int64_t a, int64_t b) {
    return Range32<PT, GT>(t, k, a, b);
  }
};

}  // namespace

StepConstants MakeStepConstants(const AdamWOptions& options, float lr, int64_t step,
                                float gnorm_scale) {
  StepConstants k;
  const float t = static_cast<float>(step);
  const float correction1 = 1.0f - std::pow(options.beta1, t);
  const float correction2 = std::sqrt(1.0f - std::pow(options.beta2, t));
  k.beta1 = options.beta1;
  k.beta2 = options.beta2;
  k.one_minus_beta1 = 1.0f - options.beta1;
  k.one_minus_beta2 = 1.0f - options.beta2;
  k.step_size = (-lr * correction2) / correction1;
  k.eps_term = correction2 * options.eps;
  k.decay_factor = options.weight_decay > 0.0f ? 1.0f - lr * options.weight_decay : 1.0f;
  k.gnorm_scale = gnorm_scale;
  return k;
}

int64_t Update8BitBlocksPortable(const TensorBuffers& t, const StepConstants& k,
                                 int64_t first_block, int64_t end_block) {
  return Dispatch<Blocks8Fn>(t.param_dtype, t.grad_dtype, t, k, first_block, end_block);
}

int64_t Update8BitBlocks(const TensorBuffers& t, const StepConstants& k, int64_t first_block,
                         int64_t end_block) {
  if (!Avx2Available()) return Update8BitBlocksPortable(t, k, first_block, end_block);
  // The AVX2 kernel takes full blocks; a partial last block goes the portable way.
  const int64_t full_end = std::min(end_block, t.numel / kBlockSize);
  int64_t nonfinite = 0;
  if (full_end > first_block) {
    nonfinite += Update8BitFullBlocksAvx2(t, k, first_block, full_end);
  }
  const int64_t rest = std::max(first_block, full_end);
  if (end_block > rest) nonfinite += Update8BitBlocksPortable(t, k, rest, end_block);
  return nonfinite;
}

int64_t Update32Bit(const TensorBuffers& t, const StepConstants& k, int64_t begin, int64_t end) {
  return Dispatch<Range32Fn>(t.param_dtype, t.grad_dtype, t, k, begin, end);
}

double SumSquares(const void* grad, DType dtype, int64_t begin, int64_t end) {
  switch (dtype) {
    case DType::kFloat32:
      return SumSquaresT(static_cast<const float*>(grad), begin, end);
    case DType::kFloat16:
      return SumSquaresT(static_cast<const Fp16*>(grad), begin, end);
    case DType::kBFloat16:
      return SumSquaresT(static_cast<const Bf16*>(grad), begin, end);
  }
  return 0;
}

}  // namespace optd::core::cpu
