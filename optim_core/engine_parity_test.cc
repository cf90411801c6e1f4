// Backend parity of request validation: the same bad inputs go through the CPU engine and, when
// the build has CUDA and a device is present, the CUDA engine; both must answer with the same
// status code and the same message (both validate through internal/request_checks). The CPU
// half runs everywhere; the CUDA half skips, saying why, where there is no usable device.
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "optd/core/engine.h"

namespace optd::core {
namespace {

constexpr int64_t kMaxStep = std::numeric_limits<int32_t>::max();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Tensor 0: 8-bit states with a partial last block; tensor 1: the 32-bit path, bf16.
GroupSpec TestSpec(int percentile_clipping = 100) {
  GroupSpec spec;
  spec.tensors.push_back({"w", DType::kFloat32, {3, 1500}});
  spec.tensors.push_back({"b", DType::kBFloat16, {100}});
  spec.options.percentile_clipping = percentile_clipping;
  return spec;
}

// Host buffers big enough for any view the cases make.
struct Buffers {
  std::vector<float> f32 = std::vector<float>(4500, 0.01f);
  std::vector<uint16_t> u16 = std::vector<uint16_t>(4500, 0x3c00);
  ConstTensorView Grad(int64_t numel, DType dtype = DType::kFloat32) const {
    const void* p = dtype == DType::kFloat32 ? static_cast<const void*>(f32.data())
                                             : static_cast<const void*>(u16.data());
    return {p, dtype, numel, MemoryKind::kHost};
  }
};

struct Case {
  std::string name;
  absl::StatusCode code;
  int percentile_clipping = 100;
  std::function<absl::Status(ParamGroup&, Buffers&)> run;
};

absl::Status StepOne(ParamGroup& g, const TensorGradient& grad, StepArgs args = {}) {
  return g.Step({&grad, 1}, args);
}

StepArgs Lr(float lr) {
  StepArgs a;
  a.lr = lr;
  return a;
}

std::vector<Case> BadInputs() {
  using C = absl::StatusCode;
  const C kInvalid = C::kInvalidArgument;
  const C kPrecondition = C::kFailedPrecondition;
  std::vector<Case> cases;
  auto add = [&](std::string name, C code, auto run, int clipping = 100) {
    cases.push_back(Case{std::move(name), code, clipping, run});
  };
  // Step: learning rate.
  for (float lr : {kInf, -kInf, std::nanf(""), 0.0f, -1.0f}) {
    add("Step lr=" + std::to_string(lr), kInvalid, [lr](ParamGroup& g, Buffers& b) {
      return StepOne(g, {0, b.Grad(4500)}, Lr(lr));
    });
  }
  // Step: gradients.
  add("Step unknown grad dtype", kInvalid, [](ParamGroup& g, Buffers& b) {
    return StepOne(g, {0, b.Grad(4500, static_cast<DType>(7))});
  });
  add("Step grad numel", kInvalid,
      [](ParamGroup& g, Buffers& b) { return StepOne(g, {0, b.Grad(4499)}); });
  add("Step null grad", kInvalid, [](ParamGroup& g, Buffers&) {
    return StepOne(g, {0, {nullptr, DType::kFloat32, 4500, MemoryKind::kHost}});
  });
  add("Step tensor -1", kInvalid,
      [](ParamGroup& g, Buffers& b) { return StepOne(g, {-1, b.Grad(4500)}); });
  add("Step tensor 2", kInvalid,
      [](ParamGroup& g, Buffers& b) { return StepOne(g, {2, b.Grad(4500)}); });
  add("Step duplicate tensor", kInvalid, [](ParamGroup& g, Buffers& b) {
    const TensorGradient grads[] = {{1, b.Grad(100)}, {0, b.Grad(4500)}, {1, b.Grad(100)}};
    return g.Step(grads, {});
  });
  add("Step counter full", kPrecondition, [](ParamGroup& g, Buffers& b) {
    if (absl::Status s = g.SetStep(1, kMaxStep); !s.ok()) return s;
    return StepOne(g, {1, b.Grad(100, DType::kBFloat16)});
  });
  // ApplyRange.
  add("ApplyRange tensor", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.ApplyRange({5, 0, b.Grad(256)}, 1, {}); });
  add("ApplyRange lr=inf", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.ApplyRange({0, 0, b.Grad(256)}, 1, Lr(kInf)); });
  add("ApplyRange step 0", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.ApplyRange({0, 0, b.Grad(256)}, 0, {}); });
  add("ApplyRange step past int32", kInvalid, [](ParamGroup& g, Buffers& b) {
    return g.ApplyRange({0, 0, b.Grad(256)}, kMaxStep + 1, {});
  });
  add("ApplyRange misaligned offset", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.ApplyRange({0, 100, b.Grad(256)}, 1, {}); });
  add("ApplyRange ragged count", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.ApplyRange({0, 0, b.Grad(300)}, 1, {}); });
  add("ApplyRange past the end", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.ApplyRange({0, 4352, b.Grad(256)}, 1, {}); });
  add("ApplyRange empty", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.ApplyRange({0, 0, b.Grad(0)}, 1, {}); });
  add("ApplyRange unknown dtype", kInvalid, [](ParamGroup& g, Buffers& b) {
    return g.ApplyRange({0, 0, b.Grad(256, static_cast<DType>(3))}, 1, {});
  });
  add(
      "ApplyRange with clipping", kPrecondition,
      [](ParamGroup& g, Buffers& b) { return g.ApplyRange({0, 0, b.Grad(256)}, 1, {}); }, 90);
  // WriteParam / ReadParam.
  add("WriteParam dtype", kInvalid, [](ParamGroup& g, Buffers& b) {
    return g.WriteParam(0, 0, b.Grad(10, DType::kFloat16));
  });
  add("WriteParam range", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.WriteParam(0, 4495, b.Grad(10)); });
  add("WriteParam negative offset", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.WriteParam(0, -1, b.Grad(10)); });
  add("WriteParam tensor", kInvalid,
      [](ParamGroup& g, Buffers& b) { return g.WriteParam(9, 0, b.Grad(10)); });
  add("WriteParam null", kInvalid, [](ParamGroup& g, Buffers&) {
    return g.WriteParam(0, 0, {nullptr, DType::kFloat32, 10, MemoryKind::kHost});
  });
  add("ReadParam dtype", kInvalid, [](ParamGroup& g, Buffers& b) {
    return g.ReadParam(1, 0, {b.f32.data(), DType::kFloat32, 10, MemoryKind::kHost});
  });
  add("ReadParam range", kInvalid, [](ParamGroup& g, Buffers& b) {
    return g.ReadParam(1, 95, {b.u16.data(), DType::kBFloat16, 10, MemoryKind::kHost});
  });
  // Step counters.
  add("SetStep -1", kInvalid, [](ParamGroup& g, Buffers&) { return g.SetStep(0, -1); });
  add("SetStep past int32", kInvalid,
      [](ParamGroup& g, Buffers&) { return g.SetStep(0, kMaxStep + 1); });
  add("SetStep tensor", kInvalid, [](ParamGroup& g, Buffers&) { return g.SetStep(2, 1); });
  // States.
  add("ExportState tensor", kInvalid,
      [](ParamGroup& g, Buffers&) { return g.ExportState(-1).status(); });
  add("ExportStateRange misaligned", kInvalid,
      [](ParamGroup& g, Buffers&) { return g.ExportStateRange(0, 128, 256).status(); });
  add("ExportStateRange ragged", kInvalid,
      [](ParamGroup& g, Buffers&) { return g.ExportStateRange(0, 0, 300).status(); });
  add("ImportState wrong layout", kInvalid, [](ParamGroup& g, Buffers&) {
    TensorState st;
    st.eight_bit = false;
    st.state1_f32.resize(4500);
    st.state2_f32.resize(4500);
    return g.ImportState(0, st);
  });
  add("ImportState short absmax", kInvalid, [](ParamGroup& g, Buffers&) {
    absl::StatusOr<TensorState> st = g.ExportState(0);
    if (!st.ok()) return st.status();
    st->absmax2.pop_back();
    return g.ImportState(0, *st);
  });
  add("ImportState step past int32", kInvalid, [](ParamGroup& g, Buffers&) {
    absl::StatusOr<TensorState> st = g.ExportState(1);
    if (!st.ok()) return st.status();
    st->step = kMaxStep + 1;
    return g.ImportState(1, *st);
  });
  add("ImportState missing gnorm_vec", kInvalid, [](ParamGroup& g, Buffers&) {
    absl::StatusOr<TensorState> st = g.ExportState(1);
    if (!st.ok()) return st.status();
    st->gnorm_vec.clear();
    return g.ImportState(1, *st);
  }, 90);
  add("ImportStateRange misaligned", kInvalid, [](ParamGroup& g, Buffers&) {
    absl::StatusOr<TensorState> st = g.ExportStateRange(0, 0, 256);
    if (!st.ok()) return st.status();
    return g.ImportStateRange(0, 64, *st);
  });
  add("ImportStateRange gnorm_vec without clipping", kInvalid, [](ParamGroup& g, Buffers&) {
    absl::StatusOr<TensorState> st = g.ExportStateRange(0, 256, 256);
    if (!st.ok()) return st.status();
    st->gnorm_vec.assign(100, 0.0f);
    return g.ImportStateRange(0, 256, *st);
  });
  // Options.
  add("SetOptions lr", kInvalid, [](ParamGroup& g, Buffers&) {
    AdamWOptions o = g.options();
    o.lr = -1;
    return g.SetOptions(o);
  });
  add("SetOptions layout after a step", kPrecondition, [](ParamGroup& g, Buffers& b) {
    if (absl::Status s = StepOne(g, {0, b.Grad(4500)}); !s.ok()) return s;
    AdamWOptions o = g.options();
    o.min_8bit_size = 5000;
    return g.SetOptions(o);
  });
  add("SetOptions clipping after a step", kPrecondition, [](ParamGroup& g, Buffers& b) {
    if (absl::Status s = StepOne(g, {1, b.Grad(100, DType::kBFloat16)}); !s.ok()) return s;
    AdamWOptions o = g.options();
    o.percentile_clipping = 50;
    return g.SetOptions(o);
  });
  return cases;
}

struct Outcome {
  absl::Status status;
  std::vector<int64_t> steps;  // the group's step counters afterwards
};

Outcome RunCase(Engine& engine, const Case& c) {
  absl::StatusOr<std::unique_ptr<ParamGroup>> g =
      engine.CreateGroup(TestSpec(c.percentile_clipping));
  if (!g.ok()) return {g.status(), {}};
  Buffers buffers;
  Outcome out;
  out.status = c.run(**g, buffers);
  for (int t = 0; t < (*g)->num_tensors(); ++t) out.steps.push_back((*g)->GetStep(t));
  return out;
}

std::unique_ptr<Engine> MakeEngine(Backend backend, absl::Status* why) {
  EngineOptions options;
  options.backend = backend;
  options.num_threads = 2;
  absl::StatusOr<std::unique_ptr<Engine>> e = CreateEngine(options);
  if (!e.ok()) {
    *why = e.status();
    return nullptr;
  }
  return *std::move(e);
}

TEST(EngineParityTest, CpuRejectsEveryBadInput) {
  absl::Status why;
  std::unique_ptr<Engine> cpu = MakeEngine(Backend::kCpu, &why);
  ASSERT_NE(cpu, nullptr) << why;
  for (const Case& c : BadInputs()) {
    const Outcome o = RunCase(*cpu, c);
    EXPECT_EQ(o.status.code(), c.code) << c.name << ": " << o.status;
    EXPECT_FALSE(o.status.message().empty()) << c.name;
  }
}

TEST(EngineParityTest, ReadsOutsideTheGroupAreInert) {
  absl::Status why;
  std::unique_ptr<Engine> cpu = MakeEngine(Backend::kCpu, &why);
  ASSERT_NE(cpu, nullptr) << why;
  absl::StatusOr<std::unique_ptr<ParamGroup>> g = cpu->CreateGroup(TestSpec());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ((*g)->GetStep(-1), -1);
  EXPECT_EQ((*g)->GetStep(2), -1);
  EXPECT_EQ((*g)->ParamStorage(2).data, nullptr);
}

TEST(EngineParityTest, CudaAnswersLikeCpu) {
  absl::Status why;
  std::unique_ptr<Engine> cuda = MakeEngine(Backend::kCuda, &why);
  if (cuda == nullptr) GTEST_SKIP() << "no CUDA engine here: " << why;
  std::unique_ptr<Engine> cpu = MakeEngine(Backend::kCpu, &why);
  ASSERT_NE(cpu, nullptr) << why;
  for (const Case& c : BadInputs()) {
    const Outcome want = RunCase(*cpu, c);
    const Outcome got = RunCase(*cuda, c);
    EXPECT_EQ(got.status.code(), want.status.code()) << c.name << ": " << got.status;
    EXPECT_EQ(got.status.message(), want.status.message()) << c.name;
    EXPECT_EQ(got.steps, want.steps) << c.name;
  }
  absl::StatusOr<std::unique_ptr<ParamGroup>> g = cuda->CreateGroup(TestSpec());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ((*g)->GetStep(-1), -1);
  EXPECT_EQ((*g)->GetStep(2), -1);
  EXPECT_EQ((*g)->ParamStorage(2).data, nullptr);
}

}  // namespace
}  // namespace optd::core
