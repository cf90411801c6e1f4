// Replays every golden case of tests/data/golden through the real API (create, upload param_0,
// one Step per grad_k, read the weights back) on the CPU backend, free-running, and checks the
// drift against bitsandbytes' own final parameter.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/widen.h"
#include "tests/server/npy.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

struct GoldenCase {
  const char* name;
  v1::DType dtype;
  int steps;
  float lr, beta1, beta2, eps, wd;
  int pclip;
};

// From tests/data/golden/manifest.json.
const GoldenCase kCases[] = {
    {"fp32_tail_10000", v1::FLOAT32, 6, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 100},
    {"bf16_matrix_512x384", v1::BFLOAT16, 3, 2e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 100},
    {"fp16_small_3000_32bit_states", v1::FLOAT16, 6, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 100},
    {"fp32_pclip5_20000", v1::FLOAT32, 12, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 5},
    {"fp32_outliers_zeros_65536", v1::FLOAT32, 5, 5e-4f, 0.8f, 0.99f, 1e-6f, 0.0f, 100},
    {"fp16_4096_exact_min8bit", v1::FLOAT16, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 100},
};

core::DType CoreDType(v1::DType d) {
  return d == v1::FLOAT32 ? core::DType::kFloat32
         : d == v1::FLOAT16 ? core::DType::kFloat16
                            : core::DType::kBFloat16;
}

// The .npy array as raw elements of `dtype` (bf16 data is stored as exact float32 values).
Bytes Load(const std::string& path, v1::DType dtype, std::vector<int64_t>* shape = nullptr) {
  auto a = ReadNpy(path);
  EXPECT_TRUE(a.ok()) << a.status();
  if (!a.ok()) return {};
  if (shape != nullptr) *shape = a->shape;
  if (dtype == v1::BFLOAT16 && a->descr == "<f4") {
    Bytes out(static_cast<size_t>(a->numel()) * 2);
    std::vector<float> f(static_cast<size_t>(a->numel()));
    std::memcpy(f.data(), a->data.data(), f.size() * 4);
    server::NarrowFromFloat(f.data(), a->numel(), core::DType::kBFloat16, out.data());
    return out;
  }
  return a->data;
}

std::vector<float> Widen(const Bytes& b, v1::DType dtype) {
  const int64_t n = static_cast<int64_t>(b.size()) / (dtype == v1::FLOAT32 ? 4 : 2);
  std::vector<float> out(static_cast<size_t>(n));
  server::WidenToFloat(CoreDType(dtype), b.data(), n, out.data());
  return out;
}

class GoldenReplayTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenReplayTest, FreeRunningWithinTolerance) {
  const GoldenCase& c = GetParam();
  const char* golden = std::getenv("OPTD_GOLDEN_DIR");  // when run away from the build tree
  const std::string dir = std::string(golden != nullptr ? golden : OPTD_GOLDEN_DIR) + "/" + c.name + "/";
  InProcessServer srv = StartInProcess();
  ASSERT_NE(srv.stub, nullptr);

  std::vector<int64_t> shape;
  const Bytes p0 = Load(dir + "param_0.npy", c.dtype, &shape);
  ASSERT_FALSE(p0.empty());
  v1::CreateGroupRequest create;
  create.set_group(c.name);
  *create.add_tensors() = Tensor("p", c.dtype, shape);
  v1::Hyperparameters* hp = create.mutable_hyperparameters();
  hp->set_lr(c.lr);
  hp->set_beta1(c.beta1);
  hp->set_beta2(c.beta2);
  hp->set_eps(c.eps);
  hp->set_weight_decay(c.wd);
  hp->set_percentile_clipping(c.pclip);
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ASSERT_TRUE(srv.stub->CreateGroup(&ctx, create, &info).ok());
  auto up = Upload(*srv.stub, c.name, "p", c.dtype, p0, /*chunk_elements=*/5000);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_TRUE(up->weights_initialized());

  Bytes returned;
  for (int k = 1; k <= c.steps; ++k) {
    const Bytes g = Load(dir + "grad_" + std::to_string(k) + ".npy", c.dtype);
    StepOptions opts;
    opts.chunk_elements = 4096;  // several chunks per tensor, and a ragged tail
    StepResult r = RunStep(*srv.stub, c.name, k, {{"p", c.dtype, g}}, opts);
    ASSERT_TRUE(r.status.ok()) << "step " << k << ": " << r.status;
    EXPECT_EQ(r.done.step(), k);
    EXPECT_EQ(r.done.version(), k);
    EXPECT_FALSE(r.done.duplicate());
    returned = r.weights["p"];
  }
  int64_t version = 0;
  auto pulled = Pull(*srv.stub, c.name, &version);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(version, c.steps);
  EXPECT_EQ((*pulled)["p"], returned) << "weights streamed back differ from PullWeights";

  const std::vector<float> p = Widen((*pulled)["p"], c.dtype);
  const std::vector<float> ref =
      Widen(Load(dir + "param_" + std::to_string(c.steps) + ".npy", c.dtype), c.dtype);
  const std::vector<float> init = Widen(p0, c.dtype);
  ASSERT_EQ(p.size(), ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    num += (double(p[i]) - ref[i]) * (double(p[i]) - ref[i]);
    den += (double(ref[i]) - init[i]) * (double(ref[i]) - init[i]);
  }
  const double rel = std::sqrt(num) / std::sqrt(den);
  const double bound = c.dtype == v1::FLOAT32 ? 2e-4 : 5e-3;
  EXPECT_LE(rel, bound) << c.name;
  RecordProperty("relative_error", std::to_string(rel));
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenReplayTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace optd::testing
