// Behaviour of the CPU engine through the public API (the numbers themselves are checked
// against bitsandbytes by the golden tests in tests/conformance).
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "internal/float_convert.h"
#include "optd/core/engine.h"
#include "optd/core/quant_maps.h"

namespace optd::core {
namespace {

std::unique_ptr<Engine> NewEngine(int threads = 2) {
  EngineOptions o;
  o.num_threads = threads;
  absl::StatusOr<std::unique_ptr<Engine>> e = CreateEngine(o);
  EXPECT_TRUE(e.ok());
  return *std::move(e);
}

std::unique_ptr<ParamGroup> NewGroup(Engine& e, GroupSpec spec) {
  absl::StatusOr<std::unique_ptr<ParamGroup>> g = e.CreateGroup(spec);
  EXPECT_TRUE(g.ok()) << g.status();
  return *std::move(g);
}

GroupSpec OneTensor(int64_t n, DType dtype = DType::kFloat32, AdamWOptions o = {}) {
  GroupSpec s;
  s.options = o;
  s.tensors.push_back({"w", dtype, {n}});
  return s;
}

std::vector<float> Random(int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

ConstTensorView View(const std::vector<float>& v) {
  return {v.data(), DType::kFloat32, static_cast<int64_t>(v.size())};
}

std::vector<float> ReadAll(ParamGroup& g, int tensor = 0) {
  std::vector<float> out(g.spec().tensors[tensor].numel());
  EXPECT_TRUE(g.ReadParam(tensor, 0, {out.data(), DType::kFloat32,
                                      static_cast<int64_t>(out.size())})
                  .ok());
  return out;
}

void ExpectError(const absl::Status& s, absl::StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s.message();
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

TEST(CpuEngineTest, FactoryAndNames) {
  EXPECT_EQ(BackendName(Backend::kCpu), "cpu");
  EXPECT_EQ(BackendName(Backend::kCuda), "cuda");
  EXPECT_EQ(NewEngine()->backend(), Backend::kCpu);
  EngineOptions bad;
  bad.num_threads = -1;
  ExpectError(CreateEngine(bad).status(), absl::StatusCode::kInvalidArgument, "num_threads");
  if (!CudaEngineCompiled()) {
    EngineOptions cuda;
    cuda.backend = Backend::kCuda;
    ExpectError(CreateEngine(cuda).status(), absl::StatusCode::kUnavailable, "without CUDA");
  }
}

TEST(CpuEngineTest, CreateGroupValidatesAndZeroes) {
  auto e = NewEngine();
  GroupSpec bad = OneTensor(10);
  bad.options.lr = -1;
  ExpectError(e->CreateGroup(bad).status(), absl::StatusCode::kInvalidArgument, "lr");
  auto g = NewGroup(*e, OneTensor(1000));
  for (float x : ReadAll(*g)) EXPECT_EQ(x, 0.0f);
  const TensorView storage = g->ParamStorage(0);
  EXPECT_EQ(storage.numel, 1000);
  EXPECT_EQ(storage.memory, MemoryKind::kHost);
  static_cast<float*>(storage.data)[3] = 7.0f;
  EXPECT_EQ(ReadAll(*g)[3], 7.0f);
}

TEST(CpuEngineTest, WriteAndReadParamChecks) {
  auto e = NewEngine();
  auto g = NewGroup(*e, OneTensor(100, DType::kBFloat16));
  std::vector<uint16_t> src(10, 0x3f80);  // 1.0 in bf16
  ASSERT_TRUE(g->WriteParam(0, 90, {src.data(), DType::kBFloat16, 10}).ok());
  std::vector<uint16_t> back(10);
  ASSERT_TRUE(g->ReadParam(0, 90, {back.data(), DType::kBFloat16, 10}).ok());
  EXPECT_EQ(back, src);
  ExpectError(g->WriteParam(0, 91, {src.data(), DType::kBFloat16, 10}),
              absl::StatusCode::kInvalidArgument, "offset");
  ExpectError(g->WriteParam(0, 0, {src.data(), DType::kFloat16, 10}),
              absl::StatusCode::kInvalidArgument, "src.dtype is float16, expected bfloat16");
  ExpectError(g->WriteParam(3, 0, {src.data(), DType::kBFloat16, 10}),
              absl::StatusCode::kInvalidArgument, "tensor");
  ExpectError(g->WriteParam(0, 0, {src.data(), DType::kBFloat16, 10, MemoryKind::kDevice}),
              absl::StatusCode::kInvalidArgument, "src.memory");
}

TEST(CpuEngineTest, StepRejectsBadGradientsNamingTheField) {
  auto e = NewEngine();
  GroupSpec spec = OneTensor(300);
  spec.tensors.push_back({"b", DType::kFloat32, {10}});
  auto g = NewGroup(*e, spec);
  const std::vector<float> g300 = Random(300, 1, 1), g5 = Random(5, 1, 2);
  TensorGradient wrong_numel{1, View(g5)};
  ExpectError(g->Step({&wrong_numel, 1}, {}), absl::StatusCode::kInvalidArgument,
              "grads[0].grad (tensor \"b\").numel is 5, expected 10");
  TensorGradient wrong_dtype{0, {g300.data(), static_cast<DType>(7), 300}};
  ExpectError(g->Step({&wrong_dtype, 1}, {}), absl::StatusCode::kInvalidArgument, "dtype");
  TensorGradient bad_index{2, View(g5)};
  ExpectError(g->Step({&bad_index, 1}, {}), absl::StatusCode::kInvalidArgument,
              "grads[0].tensor is 2");
  TensorGradient twice[2] = {{0, View(g300)}, {0, View(g300)}};
  ExpectError(g->Step(twice, {}), absl::StatusCode::kInvalidArgument, "more than once");
  TensorGradient ok{0, View(g300)};
  StepArgs neg;
  neg.lr = 0.0f;
  ExpectError(g->Step({&ok, 1}, neg), absl::StatusCode::kInvalidArgument, "lr must be > 0");
}

TEST(CpuEngineTest, StepIsAllOrNothing) {
  auto e = NewEngine();
  GroupSpec spec = OneTensor(5000);
  spec.tensors.push_back({"b", DType::kFloat32, {10}});
  auto g = NewGroup(*e, spec);
  const std::vector<float> p = Random(5000, 1, 3), grad = Random(5000, 1, 4), g5 = Random(5, 1, 5);
  ASSERT_TRUE(g->WriteParam(0, 0, View(p)).ok());
  TensorGradient grads[2] = {{0, View(grad)}, {1, View(g5)}};  // the second is bad
  EXPECT_FALSE(g->Step(grads, {}).ok());
  EXPECT_TRUE(SameBits(ReadAll(*g), p));
  EXPECT_EQ(g->GetStep(0), 0);
  absl::StatusOr<TensorState> st = g->ExportState(0);
  ASSERT_TRUE(st.ok());
  for (float a : st->absmax1) EXPECT_EQ(a, 0.0f);
}

TEST(CpuEngineTest, StepCountersArePerTensorAndSkippedTensorsStay) {
  auto e = NewEngine();
  GroupSpec spec = OneTensor(5000);
  spec.tensors.push_back({"b", DType::kFloat32, {10}});
  auto g = NewGroup(*e, spec);
  const std::vector<float> grad = Random(5000, 1, 4), gb = Random(10, 1, 5);
  TensorGradient a{0, View(grad)}, b{1, View(gb)};
  ASSERT_TRUE(g->Step({&a, 1}, {}).ok());
  ASSERT_TRUE(g->Step({&a, 1}, {}).ok());
  const std::vector<float> before_b = ReadAll(*g, 1);
  EXPECT_EQ(g->GetStep(0), 2);
  EXPECT_EQ(g->GetStep(1), 0);
  ASSERT_TRUE(g->Step({&b, 1}, {}).ok());
  EXPECT_EQ(g->GetStep(1), 1);
  EXPECT_FALSE(SameBits(ReadAll(*g, 1), before_b));
  ASSERT_TRUE(g->SetStep(1, 10).ok());
  EXPECT_EQ(g->GetStep(1), 10);
  ExpectError(g->SetStep(1, -1), absl::StatusCode::kInvalidArgument, "step");
}

TEST(CpuEngineTest, LowPrecisionGradientsAreWidened) {
  auto e = NewEngine();
  const int64_t n = 4096 + 77;
  std::vector<float> grad = Random(n, 0.1f, 6);
  std::vector<uint16_t> grad_bf16(n);
  for (int64_t i = 0; i < n; ++i) {
    grad_bf16[i] = internal::FloatToBFloat16(grad[i]);
    grad[i] = internal::BFloat16ToFloat(grad_bf16[i]);
  }
  const std::vector<float> p = Random(n, 1, 7);
  auto g1 = NewGroup(*e, OneTensor(n));
  auto g2 = NewGroup(*e, OneTensor(n));
  ASSERT_TRUE(g1->WriteParam(0, 0, View(p)).ok());
  ASSERT_TRUE(g2->WriteParam(0, 0, View(p)).ok());
  TensorGradient a{0, View(grad)}, b{0, {grad_bf16.data(), DType::kBFloat16, n}};
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(g1->Step({&a, 1}, {}).ok());
    ASSERT_TRUE(g2->Step({&b, 1}, {}).ok());
  }
  EXPECT_TRUE(SameBits(ReadAll(*g1), ReadAll(*g2)));
}

TEST(CpuEngineTest, NonFiniteGradientLeavesParamAndZeroesState) {
  auto e = NewEngine();
  AdamWOptions o;
  o.weight_decay = 0.1f;  // decay must not touch the skipped elements either
  const int64_t n = 4096;
  auto g = NewGroup(*e, OneTensor(n, DType::kFloat32, o));
  const std::vector<float> p = Random(n, 1, 8);
  ASSERT_TRUE(g->WriteParam(0, 0, View(p)).ok());
  std::vector<float> grad = Random(n, 1, 9);
  TensorGradient tg{0, View(grad)};
  ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
  const std::vector<float> p1 = ReadAll(*g);
  grad[5] = std::numeric_limits<float>::quiet_NaN();
  grad[300] = std::numeric_limits<float>::infinity();
  grad[301] = -std::numeric_limits<float>::infinity();
  const int64_t before = e->Stats().nonfinite_gradient_elements;
  ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
  const std::vector<float> p2 = ReadAll(*g);
  EXPECT_EQ(e->Stats().nonfinite_gradient_elements - before, 3);
  for (int i : {5, 300, 301}) EXPECT_EQ(p2[i], p1[i]) << i;
  EXPECT_NE(p2[6], p1[6]);
  absl::StatusOr<TensorState> st = g->ExportState(0);
  ASSERT_TRUE(st.ok());
  for (int i : {5, 300, 301}) {
    EXPECT_EQ(kSignedQuantMap[st->state1[i]], 0.0f) << i;
    EXPECT_EQ(kUnsignedQuantMap[st->state2[i]], 0.0f) << i;
  }
}

TEST(CpuEngineTest, AllZeroBlockGetsTheReferenceCodes) {
  auto e = NewEngine();
  AdamWOptions o;
  o.min_8bit_size = 0;
  auto g = NewGroup(*e, OneTensor(512, DType::kFloat32, o));
  std::vector<float> grad(512, 0.0f);
  for (int i = 256; i < 512; ++i) grad[i] = 0.01f * (i % 7 - 3);
  TensorGradient tg{0, View(grad)};
  ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
  absl::StatusOr<TensorState> st = g->ExportState(0);
  ASSERT_TRUE(st.ok());
  // Block 0: m = v = 0, so x = 0/0 = NaN: code 0, and for m 255 after the sign fix.
  EXPECT_EQ(st->absmax1[0], 0.0f);
  EXPECT_EQ(st->absmax2[0], 0.0f);
  for (int i = 0; i < 256; ++i) {
    ASSERT_EQ(st->state1[i], 255) << i;
    ASSERT_EQ(st->state2[i], 0) << i;
  }
  EXPECT_GT(st->absmax1[1], 0.0f);
}

TEST(CpuEngineTest, TinyNegativeMomentIsStoredBelowZero) {
  auto e = NewEngine();
  AdamWOptions o;
  o.min_8bit_size = 0;
  auto g = NewGroup(*e, OneTensor(256, DType::kFloat32, o));
  std::vector<float> grad(256, 0.0f);
  grad[0] = 1.0f;
  grad[1] = -1e-12f;  // |m| / absmax is far below the smallest table step
  grad[2] = 1e-12f;
  TensorGradient tg{0, View(grad)};
  ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
  absl::StatusOr<TensorState> st = g->ExportState(0);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->state1[0], 255);
  EXPECT_EQ(st->state1[1], 126);  // the sign fix: not 127 (zero)
  EXPECT_EQ(st->state1[2], 127);
  EXPECT_EQ(st->state1[3], 127);
}

TEST(CpuEngineTest, PartialLastBlockCountsThePaddingLanes) {
  // Spec step 3: the padded lanes add table1[128] * absmax1_old * beta1 to the block's absmax.
  auto e = NewEngine();
  AdamWOptions o;
  o.min_8bit_size = 0;
  for (int64_t n : {int64_t{300}, int64_t{512}}) {
    auto g = NewGroup(*e, OneTensor(n, DType::kFloat32, o));
    TensorState s;
    s.step = 1;
    s.state1.assign(n, 127);  // m = 0
    s.state2.assign(n, 0);
    s.absmax1 = {1.0f, 1.0f};
    s.absmax2 = {0.0f, 0.0f};
    ASSERT_TRUE(g->ImportState(0, s).ok());
    std::vector<float> grad(n, 0.0f);
    grad[0] = 0.5f;
    TensorGradient tg{0, View(grad)};
    ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
    absl::StatusOr<TensorState> st = g->ExportState(0);
    ASSERT_TRUE(st.ok());
    if (n == 300) {
      EXPECT_EQ(st->absmax1[1], std::fabs(kSignedQuantMap[128] * 1.0f * 0.9f));
    } else {
      EXPECT_EQ(st->absmax1[1], 0.0f);
    }
  }
}

TEST(CpuEngineTest, ThirtyTwoBitPathBelowMin8BitSizeAndNanPropagates) {
  auto e = NewEngine();
  GroupSpec spec;
  spec.tensors.push_back({"small", DType::kFloat16, {4095}});
  spec.tensors.push_back({"exact", DType::kFloat16, {64, 64}});
  auto g = NewGroup(*e, spec);
  EXPECT_FALSE(g->ExportState(0)->eight_bit);
  EXPECT_TRUE(g->ExportState(1)->eight_bit);
  EXPECT_EQ(g->ExportState(0)->state1_f32.size(), 4095u);
  std::vector<uint16_t> grad(4095, internal::FloatToHalf(0.5f));
  grad[7] = 0x7e00;  // NaN
  TensorGradient tg{0, {grad.data(), DType::kFloat16, 4095}};
  ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
  std::vector<uint16_t> p(4095);
  ASSERT_TRUE(g->ReadParam(0, 0, {p.data(), DType::kFloat16, 4095}).ok());
  EXPECT_TRUE(std::isnan(internal::HalfToFloat(p[7])));
  // 0 - lr * sign: Adam's first step moves by lr (1e-3), rounded to fp16.
  EXPECT_EQ(p[0], internal::FloatToHalf(-1e-3f * (1.0f / (1.0f + 1e-8f / 0.5f))));
  absl::StatusOr<TensorState> st = g->ExportState(0);
  EXPECT_EQ(st->state1_f32[0], 0.0f * 0.9f + (1.0f - 0.9f) * 0.5f);
  EXPECT_EQ(st->state2_f32[0], 0.0f * 0.999f + (1.0f - 0.999f) * (0.5f * 0.5f));
}

TEST(CpuEngineTest, ResultsDoNotDependOnTheThreadCount) {
  const int64_t n = 300001;  // odd, several tasks per thread
  const std::vector<float> p = Random(n, 1, 10);
  std::vector<std::vector<float>> grads;
  for (int k = 0; k < 3; ++k) grads.push_back(Random(n, 0.01f, 11 + k));
  std::vector<float> result[2];
  std::vector<uint8_t> codes[2];
  for (int r = 0; r < 2; ++r) {
    auto e = NewEngine(r == 0 ? 1 : 3);
    auto g = NewGroup(*e, OneTensor(n));
    ASSERT_TRUE(g->WriteParam(0, 0, View(p)).ok());
    for (const auto& grad : grads) {
      TensorGradient tg{0, View(grad)};
      ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
    }
    result[r] = ReadAll(*g);
    codes[r] = g->ExportState(0)->state1;
  }
  EXPECT_TRUE(SameBits(result[0], result[1]));
  EXPECT_EQ(codes[0], codes[1]);
}

TEST(CpuEngineTest, ManyTensorStepEqualsOneGroupPerTensor) {
  // One step over a mixed group (8-bit and 32-bit, three dtypes, odd sizes, split into many
  // tasks) gives exactly what stepping each tensor in a group of its own gives.
  auto e = NewEngine(3);
  const std::vector<std::pair<DType, int64_t>> layout = {
      {DType::kFloat32, 1000003}, {DType::kBFloat16, 4095},  {DType::kFloat16, 70001},
      {DType::kBFloat16, 300000}, {DType::kFloat32, 17},     {DType::kFloat16, 4096}};
  GroupSpec all;
  for (size_t i = 0; i < layout.size(); ++i) {
    all.tensors.push_back({absl::StrCat("t", i), layout[i].first, {layout[i].second}});
  }
  auto big = NewGroup(*e, all);
  std::vector<std::unique_ptr<ParamGroup>> singles;
  std::vector<std::vector<float>> grads;
  std::vector<TensorGradient> tg;
  for (size_t i = 0; i < layout.size(); ++i) {
    singles.push_back(NewGroup(*e, OneTensor(layout[i].second, layout[i].first)));
    grads.push_back(Random(layout[i].second, 0.05f, 40 + static_cast<uint32_t>(i)));
  }
  for (size_t i = 0; i < layout.size(); ++i) tg.push_back({static_cast<int>(i), View(grads[i])});
  for (int step = 0; step < 2; ++step) {
    ASSERT_TRUE(big->Step(tg, {}).ok());
    for (size_t i = 0; i < layout.size(); ++i) {
      TensorGradient one{0, View(grads[i])};
      ASSERT_TRUE(singles[i]->Step({&one, 1}, {}).ok());
    }
  }
  for (size_t i = 0; i < layout.size(); ++i) {
    SCOPED_TRACE(i);
    const TensorView a = big->ParamStorage(static_cast<int>(i));
    const TensorView b = singles[i]->ParamStorage(0);
    EXPECT_EQ(std::memcmp(a.data, b.data, a.numel * DTypeSize(a.dtype)), 0);
    const TensorState sa = *big->ExportState(static_cast<int>(i));
    const TensorState sb = *singles[i]->ExportState(0);
    EXPECT_EQ(sa.state1, sb.state1);
    EXPECT_EQ(sa.state2, sb.state2);
    EXPECT_EQ(sa.state1_f32, sb.state1_f32);
    EXPECT_EQ(big->GetStep(static_cast<int>(i)), 2);
  }
}

TEST(CpuEngineTest, GroupsOfOneEngineStepConcurrently) {
  // Distinct groups may be used from different threads; they share the engine's pool.
  auto e = NewEngine(2);
  const int64_t n = 200000;
  const std::vector<float> grad = Random(n, 0.05f, 50);
  std::vector<std::unique_ptr<ParamGroup>> groups;
  for (int i = 0; i < 4; ++i) groups.push_back(NewGroup(*e, OneTensor(n)));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      TensorGradient tg{0, View(grad)};
      for (int step = 0; step < 3; ++step) {
        if (!groups[i]->Step({&tg, 1}, {}).ok()) failures.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  TensorGradient tg{0, View(grad)};
  for (int step = 0; step < 3; ++step) ASSERT_TRUE(groups[3]->Step({&tg, 1}, {}).ok());
  EXPECT_EQ(failures.load(), 0);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(SameBits(ReadAll(*groups[i]), ReadAll(*groups[3]))) << i;
}

TEST(CpuEngineTest, ApplyRangeOverAllRangesEqualsStep) {
  auto e = NewEngine();
  for (int64_t n : {int64_t{10000}, int64_t{3000}}) {  // 8-bit and 32-bit paths
    const std::vector<float> p = Random(n, 1, 20), grad = Random(n, 0.1f, 21);
    auto whole = NewGroup(*e, OneTensor(n));
    auto streamed = NewGroup(*e, OneTensor(n));
    ASSERT_TRUE(whole->WriteParam(0, 0, View(p)).ok());
    ASSERT_TRUE(streamed->WriteParam(0, 0, View(p)).ok());
    for (int step = 1; step <= 2; ++step) {
      TensorGradient tg{0, View(grad)};
      ASSERT_TRUE(whole->Step({&tg, 1}, {}).ok());
      for (int64_t off = 0; off < n; off += 1024) {
        const int64_t count = std::min<int64_t>(1024, n - off);
        RangeGradient rg{0, off, {grad.data() + off, DType::kFloat32, count}};
        ASSERT_TRUE(streamed->ApplyRange(rg, step, {}).ok());
      }
      ASSERT_TRUE(streamed->SetStep(0, step).ok());
    }
    EXPECT_TRUE(SameBits(ReadAll(*whole), ReadAll(*streamed))) << n;
  }
}

TEST(CpuEngineTest, ApplyRangeChecks) {
  auto e = NewEngine();
  auto g = NewGroup(*e, OneTensor(1000));
  const std::vector<float> grad = Random(1000, 1, 22);
  RangeGradient misaligned{0, 100, {grad.data(), DType::kFloat32, 256}};
  ExpectError(g->ApplyRange(misaligned, 1, {}), absl::StatusCode::kInvalidArgument,
              "offset 100 is not a multiple of 256");
  RangeGradient ragged{0, 256, {grad.data(), DType::kFloat32, 100}};
  ExpectError(g->ApplyRange(ragged, 1, {}), absl::StatusCode::kInvalidArgument, "count 100");
  RangeGradient past{0, 768, {grad.data(), DType::kFloat32, 512}};
  ExpectError(g->ApplyRange(past, 1, {}), absl::StatusCode::kInvalidArgument, "outside");
  RangeGradient tail{0, 768, {grad.data(), DType::kFloat32, 232}};
  EXPECT_TRUE(g->ApplyRange(tail, 1, {}).ok());
  ExpectError(g->ApplyRange(tail, 0, {}), absl::StatusCode::kInvalidArgument, "step");
  AdamWOptions clip;
  clip.percentile_clipping = 5;
  auto gc = NewGroup(*e, OneTensor(1000, DType::kFloat32, clip));
  ExpectError(gc->ApplyRange(tail, 1, {}), absl::StatusCode::kFailedPrecondition,
              "percentile_clipping");
}

TEST(CpuEngineTest, StateRangeExportImportUndoesAStreamedRange) {
  auto e = NewEngine();
  const int64_t n = 5000;
  auto g = NewGroup(*e, OneTensor(n));
  const std::vector<float> grad = Random(n, 0.1f, 23);
  TensorGradient tg{0, View(grad)};
  ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
  const TensorState before = *g->ExportState(0);
  absl::StatusOr<TensorState> saved = g->ExportStateRange(0, 512, 1024);
  ASSERT_TRUE(saved.ok());
  EXPECT_EQ(saved->state1.size(), 1024u);
  EXPECT_EQ(saved->absmax1.size(), 4u);
  EXPECT_EQ(saved->step, 1);
  RangeGradient rg{0, 512, {grad.data() + 512, DType::kFloat32, 1024}};
  ASSERT_TRUE(g->ApplyRange(rg, 2, {}).ok());
  EXPECT_NE(g->ExportState(0)->state1, before.state1);
  ASSERT_TRUE(g->ImportStateRange(0, 512, *saved).ok());
  const TensorState after = *g->ExportState(0);
  EXPECT_EQ(after.state1, before.state1);
  EXPECT_EQ(after.state2, before.state2);
  EXPECT_EQ(after.absmax1, before.absmax1);
  EXPECT_EQ(after.absmax2, before.absmax2);
  // The tail range (not a multiple of 256) and a misaligned one.
  EXPECT_EQ(g->ExportStateRange(0, 4864, 136)->absmax2.size(), 1u);
  ExpectError(g->ExportStateRange(0, 10, 256).status(), absl::StatusCode::kInvalidArgument,
              "offset");
}

TEST(CpuEngineTest, ImportStateValidates) {
  auto e = NewEngine();
  auto g = NewGroup(*e, OneTensor(10000));
  TensorState s = *g->ExportState(0);
  s.absmax1.resize(3);
  ExpectError(g->ImportState(0, s), absl::StatusCode::kInvalidArgument,
              "absmax1 has 3 entries, expected 40");
  TensorState f32;
  f32.eight_bit = false;
  f32.state1_f32.resize(10000);
  f32.state2_f32.resize(10000);
  ExpectError(g->ImportState(0, f32), absl::StatusCode::kInvalidArgument, "eight_bit");
  TensorState ok = *g->ExportState(0);
  ok.step = 42;
  ok.state1[5] = 200;
  ASSERT_TRUE(g->ImportState(0, ok).ok());
  EXPECT_EQ(g->GetStep(0), 42);
  EXPECT_EQ(g->ExportState(0)->state1[5], 200);
}

TEST(CpuEngineTest, SetOptionsGuardsTheStateLayout) {
  auto e = NewEngine();
  auto g = NewGroup(*e, OneTensor(3000));
  EXPECT_FALSE(g->ExportState(0)->eight_bit);
  AdamWOptions o;
  o.min_8bit_size = 1000;
  ASSERT_TRUE(g->SetOptions(o).ok());  // before the first step: the layout follows
  EXPECT_TRUE(g->ExportState(0)->eight_bit);
  const std::vector<float> grad = Random(3000, 0.1f, 24);
  TensorGradient tg{0, View(grad)};
  ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
  AdamWOptions back;
  ExpectError(g->SetOptions(back), absl::StatusCode::kFailedPrecondition, "min_8bit_size");
  AdamWOptions clip = o;
  clip.percentile_clipping = 5;
  ExpectError(g->SetOptions(clip), absl::StatusCode::kFailedPrecondition,
              "percentile_clipping");
  AdamWOptions lr = o;
  lr.lr = 5e-4f;
  ASSERT_TRUE(g->SetOptions(lr).ok());
  EXPECT_EQ(g->options().lr, 5e-4f);
  AdamWOptions invalid = o;
  invalid.beta1 = 1.0f;
  ExpectError(g->SetOptions(invalid), absl::StatusCode::kInvalidArgument, "beta1");
}

TEST(CpuEngineTest, StatsCountBytesOfLiveGroups) {
  auto e = NewEngine();
  EXPECT_EQ(e->Stats().device_total_bytes, -1);
  {
    AdamWOptions clip;
    clip.percentile_clipping = 10;
    GroupSpec spec = OneTensor(10000, DType::kBFloat16, clip);
    spec.tensors.push_back({"small", DType::kFloat32, {100}});
    auto g = NewGroup(*e, spec);
    const EngineStats s = e->Stats();
    EXPECT_EQ(s.weight_bytes_host, 10000 * 2 + 100 * 4);
    // 8-bit: two codes per element + two absmax per block; 32-bit: two fp32; gnorm_vec each.
    EXPECT_EQ(s.state_bytes_host, (2 * 10000 + 2 * 40 * 4) + (2 * 100 * 4) + 2 * 100 * 4);
    EXPECT_EQ(s.weight_bytes_device, 0);
  }
  EXPECT_EQ(e->Stats().weight_bytes_host, 0);
  EXPECT_EQ(e->Stats().state_bytes_host, 0);
}

TEST(CpuEngineTest, PercentileClippingWorksForBf16Gradients) {
  auto e = NewEngine();
  AdamWOptions clip;
  clip.percentile_clipping = 5;
  const int64_t n = 8192;
  auto g = NewGroup(*e, OneTensor(n, DType::kBFloat16, clip));
  std::vector<uint16_t> grad(n, internal::FloatToBFloat16(0.5f));
  TensorGradient tg{0, {grad.data(), DType::kBFloat16, n}};
  ASSERT_TRUE(g->Step({&tg, 1}, {}).ok());
  absl::StatusOr<TensorState> st = g->ExportState(0);
  ASSERT_EQ(st->gnorm_vec.size(), 100u);
  for (float x : st->gnorm_vec) EXPECT_FLOAT_EQ(x, 0.25f * n);
}

TEST(CpuEngineTest, ClippedGradientIsRoundedToItsDtypeOnThe32BitPath) {
  // bitsandbytes' 32-bit kernel multiplies the fp16 gradient by gnorm_scale in place (in fp16).
  auto e = NewEngine();
  AdamWOptions clip;
  clip.percentile_clipping = 5;
  clip.weight_decay = 0.0f;
  const int64_t n = 1000;  // below min_8bit_size: the 32-bit path
  auto g = NewGroup(*e, OneTensor(n, DType::kFloat16, clip));
  std::vector<uint16_t> small(n, internal::FloatToHalf(0.01f));
  std::vector<uint16_t> big(n, internal::FloatToHalf(0.3f));
  TensorGradient a{0, {small.data(), DType::kFloat16, n}};
  TensorGradient b{0, {big.data(), DType::kFloat16, n}};
  ASSERT_TRUE(g->Step({&a, 1}, {}).ok());
  const float m1 = g->ExportState(0)->state1_f32[0];
  ASSERT_TRUE(g->Step({&b, 1}, {}).ok());  // clipped back to the history's norm
  const float h = internal::HalfToFloat(small[0]);
  const float sum_small = static_cast<float>(n) * (h * h);
  const float gb = internal::HalfToFloat(big[0]);
  const float sum_big = static_cast<float>(n) * (gb * gb);
  const float scale = std::sqrt(sum_small) / std::sqrt(sum_big);
  const float rounded = internal::HalfToFloat(internal::FloatToHalf(gb * scale));
  ASSERT_NE(rounded, gb * scale);  // the case must tell the two apart
  EXPECT_EQ(g->ExportState(0)->state1_f32[0], m1 * 0.9f + (1.0f - 0.9f) * rounded);
}

TEST(CpuEngineTest, LrOverrideAppliesToOneStep) {
  auto e = NewEngine();
  const int64_t n = 4096;
  const std::vector<float> grad = Random(n, 0.1f, 25);
  auto a = NewGroup(*e, OneTensor(n));
  AdamWOptions o;
  o.lr = 0.25f;
  auto b = NewGroup(*e, OneTensor(n, DType::kFloat32, o));
  TensorGradient tg{0, View(grad)};
  StepArgs args;
  args.lr = 0.25f;
  ASSERT_TRUE(a->Step({&tg, 1}, args).ok());
  ASSERT_TRUE(b->Step({&tg, 1}, {}).ok());
  EXPECT_TRUE(SameBits(ReadAll(*a), ReadAll(*b)));
  EXPECT_EQ(a->options().lr, 1e-3f);
}

}  // namespace
}  // namespace optd::core
