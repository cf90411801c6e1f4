// The AVX2 8-bit kernel must equal the portable one bit for bit, for every dtype pair and for
// the awkward inputs (non-finite gradients, zero blocks, tiny values, clipping scale).
#include "cpu/adam_kernels.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cpu/adam_kernels_avx2.h"
#include "gtest/gtest.h"
#include "internal/float_convert.h"

namespace optd::core::cpu {
namespace {

struct Buffers {
  std::vector<uint8_t> param;  // raw storage of param_dtype
  std::vector<uint8_t> grad;
  std::vector<uint8_t> s1, s2;
  std::vector<float> a1, a2;
};

void Store(std::vector<uint8_t>& raw, DType t, int64_t i, float x) {
  if (t == DType::kFloat32) {
    std::memcpy(raw.data() + 4 * i, &x, 4);
    return;
  }
  const uint16_t h =
      t == DType::kFloat16 ? internal::FloatToHalf(x) : internal::FloatToBFloat16(x);
  std::memcpy(raw.data() + 2 * i, &h, 2);
}

Buffers MakeBuffers(DType pt, DType gt, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> byte(0, 255);
  Buffers b;
  b.param.resize(n * DTypeSize(pt));
  b.grad.resize(n * DTypeSize(gt));
  b.s1.resize(n);
  b.s2.resize(n);
  const int64_t blocks = (n + kBlockSize - 1) / kBlockSize;
  b.a1.resize(blocks);
  b.a2.resize(blocks);
  for (int64_t i = 0; i < n; ++i) {
    Store(b.param, pt, i, normal(rng));
    float g = 0.01f * normal(rng);
    const int64_t block = i / kBlockSize;
    if (block == 1) g = 0.0f;                                     // an all-zero gradient block
    if (block == 2 && i % 5 == 0) g = 1e-30f * normal(rng);       // tiny values
    if (i % 97 == 3) g = std::numeric_limits<float>::quiet_NaN();  // non-finite lanes
    if (i % 131 == 7) g = -std::numeric_limits<float>::infinity();
    Store(b.grad, gt, i, g);
    b.s1[i] = static_cast<uint8_t>(byte(rng));
    b.s2[i] = static_cast<uint8_t>(byte(rng));
  }
  for (int64_t k = 0; k < blocks; ++k) {
    b.a1[k] = k == 1 ? 0.0f : 0.05f * std::fabs(normal(rng));
    b.a2[k] = k == 1 ? 0.0f : 1e-4f * std::fabs(normal(rng));
  }
  return b;
}

TensorBuffers View(Buffers& b, DType pt, DType gt, int64_t n) {
  TensorBuffers t;
  t.param = b.param.data();
  t.param_dtype = pt;
  t.grad = b.grad.data();
  t.grad_dtype = gt;
  t.numel = n;
  t.state1 = b.s1.data();
  t.state2 = b.s2.data();
  t.absmax1 = b.a1.data();
  t.absmax2 = b.a2.data();
  return t;
}

TEST(AdamKernelsTest, Avx2MatchesPortableBitForBit) {
  if (!Avx2Available()) GTEST_SKIP() << "this CPU has no AVX2/F16C";
  const DType types[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  AdamWOptions o;
  o.weight_decay = 0.1f;
  const int64_t n = 16 * kBlockSize + 77;  // full blocks and a partial one
  for (DType pt : types) {
    for (DType gt : types) {
      for (float gnorm_scale : {1.0f, 0.37f}) {
        for (int64_t step : {int64_t{1}, int64_t{7}}) {
          Buffers a = MakeBuffers(pt, gt, n, 99);
          Buffers b = a;
          const StepConstants k = MakeStepConstants(o, 1e-3f, step, gnorm_scale);
          const int64_t blocks = (n + kBlockSize - 1) / kBlockSize;
          const int64_t nf_a = Update8BitBlocks(View(a, pt, gt, n), k, 0, blocks);
          const int64_t nf_b = Update8BitBlocksPortable(View(b, pt, gt, n), k, 0, blocks);
          SCOPED_TRACE(testing::Message() << "param " << DTypeName(pt) << " grad "
                                          << DTypeName(gt) << " scale " << gnorm_scale
                                          << " step " << step);
          EXPECT_EQ(nf_a, nf_b);
          EXPECT_GT(nf_a, 0);
          EXPECT_EQ(a.param, b.param);
          EXPECT_EQ(a.s1, b.s1);
          EXPECT_EQ(a.s2, b.s2);
          EXPECT_EQ(std::memcmp(a.a1.data(), b.a1.data(), a.a1.size() * 4), 0);
          EXPECT_EQ(std::memcmp(a.a2.data(), b.a2.data(), a.a2.size() * 4), 0);
        }
      }
    }
  }
}

TEST(AdamKernelsTest, Avx2MatchesPortableAcrossMagnitudes) {
  // Block maxima and gradients over many binades, so the quantizer's divisions (done with a
  // reciprocal and one correction in the AVX2 kernel) meet every kind of operand.
  if (!Avx2Available()) GTEST_SKIP() << "this CPU has no AVX2/F16C/FMA";
  const int64_t blocks = 3000, n = blocks * kBlockSize;
  Buffers a = MakeBuffers(DType::kFloat32, DType::kFloat32, n, 5);
  std::mt19937 rng(6);
  std::uniform_real_distribution<float> expo(-60.0f, 30.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t k = 0; k < blocks; ++k) {
    const float block_scale = std::exp2(expo(rng));
    a.a1[k] = block_scale * std::fabs(normal(rng));
    a.a2[k] = block_scale * block_scale * std::fabs(normal(rng));
    for (int64_t i = k * kBlockSize; i < (k + 1) * kBlockSize; ++i) {
      const float g = block_scale * normal(rng);
      std::memcpy(a.grad.data() + 4 * i, &g, 4);
    }
  }
  Buffers b = a;
  AdamWOptions o;
  for (int64_t step = 1; step <= 3; ++step) {
    const StepConstants k = MakeStepConstants(o, 1e-3f, step, 1.0f);
    Update8BitBlocks(View(a, DType::kFloat32, DType::kFloat32, n), k, 0, blocks);
    Update8BitBlocksPortable(View(b, DType::kFloat32, DType::kFloat32, n), k, 0, blocks);
    ASSERT_EQ(a.s1, b.s1) << "step " << step;
    ASSERT_EQ(a.s2, b.s2) << "step " << step;
    ASSERT_EQ(a.param, b.param) << "step " << step;
  }
}

TEST(AdamKernelsTest, ReciprocalDivisionIsCorrectlyRounded) {
  if (!Avx2Available()) GTEST_SKIP() << "this CPU has no AVX2/F16C/FMA";
  std::mt19937 rng(8);
  std::uniform_int_distribution<uint32_t> mantissa(0, (1u << 23) - 1);
  std::uniform_int_distribution<int> exponent(-60, 99);
  std::vector<float> m(4096), out(4096);
  int64_t checked = 0;
  for (int round = 0; round < 400; ++round) {
    // A divisor in the kernel's fast range; dividends up to it (as |m| <= absmax) with
    // quotients down to 2^-24 (smaller ones cannot meet a table midpoint).
    const float a = std::ldexp(1.0f + mantissa(rng) * 0x1.0p-23f, exponent(rng));  // 2^-60..2^99
    for (float& x : m) {
      const int shift = -static_cast<int>(rng() % 24) - 1;  // quotients 2^-24 .. 1
      const float frac = std::ldexp(1.0f + mantissa(rng) * 0x1.0p-23f, shift);
      x = (rng() & 1 ? -frac : frac) * a;
    }
    DivideByBlockMaxForTesting(m.data(), static_cast<int64_t>(m.size()), a, out.data());
    for (size_t i = 0; i < m.size(); ++i) {
      const float want = m[i] / a;
      if (std::fabs(want) < 0x1p-24f) continue;
      ASSERT_EQ(internal::FloatBits(out[i]), internal::FloatBits(want))
          << m[i] << " / " << a;
      ++checked;
    }
  }
  EXPECT_GT(checked, 1000000);
}

TEST(AdamKernelsTest, StepConstants) {
  AdamWOptions o;
  o.lr = 1e-3f;
  o.weight_decay = 0.0f;
  const StepConstants k = MakeStepConstants(o, o.lr, 1, 1.0f);
  EXPECT_EQ(k.decay_factor, 1.0f);
  // t = 1: c1 = 1 - beta1, c2 = sqrt(1 - beta2).
  EXPECT_EQ(k.step_size, (-1e-3f * std::sqrt(1.0f - 0.999f)) / (1.0f - 0.9f));
  EXPECT_EQ(k.eps_term, std::sqrt(1.0f - 0.999f) * 1e-8f);
  o.weight_decay = 0.01f;
  EXPECT_EQ(MakeStepConstants(o, 2e-3f, 3, 1.0f).decay_factor, 1.0f - 2e-3f * 0.01f);
}

}  // namespace
}  // namespace optd::core::cpu
