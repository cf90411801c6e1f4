// What an engine reports about a group: the NaN/Inf gradient elements of its last update and the
// memory it holds (core::MemoryStats). The CPU half runs everywhere; the CUDA half skips, saying
// why, where there is no usable device.
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "optd/core/engine.h"
#include "optd/core/state_layout.h"

namespace optd::core {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

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

GroupSpec TestSpec() {
  GroupSpec spec;
  spec.tensors.push_back({"w", DType::kFloat32, {5000}});  // 8-bit: 20 blocks
  spec.tensors.push_back({"b", DType::kFloat16, {100}});   // the 32-bit path
  return spec;
}

// Three steps: 3 non-finite elements (2 on the 8-bit path, 1 on the 32-bit path), then none,
// then one through ApplyRange. Returns the count after each.
std::vector<int64_t> NonfiniteCounts(Engine& engine) {
  absl::StatusOr<std::unique_ptr<ParamGroup>> g = engine.CreateGroup(TestSpec());
  EXPECT_TRUE(g.ok()) << g.status();
  if (!g.ok()) return {};
  std::vector<int64_t> out{(*g)->LastNonfiniteGradientElements()};
  std::vector<float> w(5000, 0.01f);
  std::vector<uint16_t> b(100, 0x3c00);  // fp16 1.0
  w[7] = std::nanf("");
  w[4999] = -kInf;
  b[3] = 0x7c00;  // fp16 +Inf
  const TensorGradient grads[] = {{0, {w.data(), DType::kFloat32, 5000}},
                                  {1, {b.data(), DType::kFloat16, 100}}};
  EXPECT_TRUE((*g)->Step(grads, {}).ok());
  out.push_back((*g)->LastNonfiniteGradientElements());
  w[7] = 0.5f;
  w[4999] = 0.5f;
  EXPECT_TRUE((*g)->Step({grads, 1}, {}).ok());
  out.push_back((*g)->LastNonfiniteGradientElements());
  w[300] = kInf;
  EXPECT_TRUE(
      (*g)->ApplyRange({0, 256, {w.data() + 256, DType::kFloat32, 256}}, 3, {}).ok());
  out.push_back((*g)->LastNonfiniteGradientElements());
  return out;
}

TEST(EngineReportTest, CpuCountsNonfiniteGradientElementsPerUpdate) {
  absl::Status why;
  std::unique_ptr<Engine> cpu = MakeEngine(Backend::kCpu, &why);
  ASSERT_NE(cpu, nullptr) << why;
  EXPECT_EQ(NonfiniteCounts(*cpu), (std::vector<int64_t>{0, 3, 0, 1}));
  // The engine-wide counter sums the same counts.
  EXPECT_EQ(cpu->Stats().nonfinite_gradient_elements, 4);
}

TEST(EngineReportTest, CpuMemoryIsWhatItAllocated) {
  absl::Status why;
  std::unique_ptr<Engine> cpu = MakeEngine(Backend::kCpu, &why);
  ASSERT_NE(cpu, nullptr) << why;
  GroupSpec spec = TestSpec();
  spec.options.percentile_clipping = 90;
  absl::StatusOr<std::unique_ptr<ParamGroup>> g = cpu->CreateGroup(spec);
  ASSERT_TRUE(g.ok()) << g.status();
  const MemoryStats m = (*g)->GetMemoryStats();
  EXPECT_EQ(m.weight_bytes_host, 5000 * 4 + 100 * 2);
  EXPECT_EQ(m.state_bytes_host,
            2 * 5000 + 2 * 4 * NumBlocks(5000) + 2 * 4 * 100 + 2 * 4 * kGnormHistory);
  EXPECT_EQ(m.weight_bytes_device + m.state_bytes_device + m.buffer_bytes_device, 0);
  EXPECT_EQ(m.paged_out_bytes, 0);
  const EngineStats s = cpu->Stats();
  EXPECT_EQ(s.weight_bytes_host, m.weight_bytes_host);
  EXPECT_EQ(s.state_bytes_host, m.state_bytes_host);
}

TEST(EngineReportTest, CudaCountsLikeCpuAndHoldsItsGroupOnTheDevice) {
  absl::Status why;
  std::unique_ptr<Engine> cuda = MakeEngine(Backend::kCuda, &why);
  if (cuda == nullptr) GTEST_SKIP() << "no CUDA engine here: " << why;
  EXPECT_EQ(NonfiniteCounts(*cuda), (std::vector<int64_t>{0, 3, 0, 1}));
  absl::StatusOr<std::unique_ptr<ParamGroup>> g = cuda->CreateGroup(TestSpec());
  ASSERT_TRUE(g.ok()) << g.status();
  const MemoryStats m = (*g)->GetMemoryStats();
  EXPECT_EQ(m.weight_bytes_device, 5000 * 4 + 100 * 2);
  EXPECT_EQ(m.weight_bytes_host, 0);
  // Resident states, in 16-byte aligned sections: at least what the layout needs.
  EXPECT_GE(m.state_bytes_device, 2 * 5000 + 2 * 4 * NumBlocks(5000) + 2 * 4 * 100);
  EXPECT_EQ(m.state_bytes_host, 0);
  EXPECT_EQ(m.paged_out_bytes, 0);
  EXPECT_GT(m.buffer_bytes_device, 0);
}

}  // namespace
}  // namespace optd::core
