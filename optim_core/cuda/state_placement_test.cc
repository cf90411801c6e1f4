// Note [Placement when a step needs it] (state_budget.h): a group paged because older groups
// held the budget becomes resident at its next step once they are gone (a restore), with the
// same bits as a group that was never paged.
#include <memory>
#include <random>
#include <vector>

#include "cuda/gpu_test_util.h"
#include "gtest/gtest.h"
#include "optd/core/engine.h"

namespace optd::core::cuda_test {
namespace {

constexpr int64_t kNumel = (1 << 20) + 300;  // a partial last block

GroupSpec OneTensor() {
  GroupSpec spec;
  spec.tensors.push_back({"w", DType::kFloat32, {kNumel}});
  return spec;
}

// Writes the same weights and runs the same three steps (host gradients, fixed seed).
void RunSteps(ParamGroup& g) {
  std::mt19937_64 rng(11);
  const std::vector<float> w = RandomValues(kNumel, 1.0f, rng);
  ASSERT_TRUE(g.WriteParam(0, 0, {w.data(), DType::kFloat32, kNumel}).ok());
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> grad = RandomValues(kNumel, 0.1f, rng);
    const TensorGradient tg{0, {grad.data(), DType::kFloat32, kNumel}};
    ASSERT_TRUE(g.Step({&tg, 1}, {}).ok());
  }
}

TEST(StatePlacementTest, PagedGroupBecomesResidentWhenTheBudgetFreesUp) {
  OPTD_SKIP_WITHOUT_GPU();
  // The states of one group (about 2.1 MB) fit the budget; those of two do not.
  auto engine = MakeEngine(Backend::kCuda, 3 << 20);
  ASSERT_TRUE(engine);
  auto old_group = engine->CreateGroup(OneTensor());
  ASSERT_TRUE(old_group.ok()) << old_group.status();
  EXPECT_EQ((*old_group)->GetMemoryStats().paged_out_bytes, 0);
  auto restored = engine->CreateGroup(OneTensor());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_GT((*restored)->GetMemoryStats().paged_out_bytes, 0);  // the old group holds the budget

  // One paged step, then the old group goes (a restore replaced it).
  std::mt19937_64 rng(3);
  const std::vector<float> grad = RandomValues(kNumel, 0.1f, rng);
  const TensorGradient tg{0, {grad.data(), DType::kFloat32, kNumel}};
  ASSERT_TRUE((*restored)->Step({&tg, 1}, {}).ok());
  EXPECT_GT((*restored)->GetMemoryStats().paged_out_bytes, 0);
  old_group->reset();

  RunSteps(**restored);
  const MemoryStats m = (*restored)->GetMemoryStats();
  EXPECT_EQ(m.paged_out_bytes, 0);
  EXPECT_EQ(m.state_bytes_host, 0);
  EXPECT_EQ(engine->Stats().state_bytes_host, 0);

  // The same bits as a group that was resident throughout (same first step, same three steps).
  auto reference_engine = MakeEngine(Backend::kCuda);
  ASSERT_TRUE(reference_engine);
  auto reference = reference_engine->CreateGroup(OneTensor());
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_TRUE((*reference)->Step({&tg, 1}, {}).ok());
  RunSteps(**reference);
  auto got = (*restored)->ExportState(0);
  auto want = (*reference)->ExportState(0);
  ASSERT_TRUE(got.ok() && want.ok());
  EXPECT_EQ(got->step, 4);
  EXPECT_EQ(got->step, want->step);
  EXPECT_EQ(got->state1, want->state1);
  EXPECT_EQ(got->state2, want->state2);
  EXPECT_EQ(got->absmax1, want->absmax1);
  EXPECT_EQ(got->absmax2, want->absmax2);
  std::vector<float> a(kNumel), b(kNumel);
  ASSERT_TRUE((*restored)->ReadParam(0, 0, {a.data(), DType::kFloat32, kNumel}).ok());
  ASSERT_TRUE((*reference)->ReadParam(0, 0, {b.data(), DType::kFloat32, kNumel}).ok());
  EXPECT_EQ(a, b);
}

TEST(StatePlacementTest, PagedGroupStaysPagedWhileTheBudgetIsHeld) {
  OPTD_SKIP_WITHOUT_GPU();
  auto engine = MakeEngine(Backend::kCuda, 3 << 20);
  ASSERT_TRUE(engine);
  auto first = engine->CreateGroup(OneTensor());
  auto second = engine->CreateGroup(OneTensor());
  ASSERT_TRUE(first.ok() && second.ok());
  RunSteps(**second);
  EXPECT_GT((*second)->GetMemoryStats().paged_out_bytes, 0);
  EXPECT_EQ((*first)->GetMemoryStats().paged_out_bytes, 0);
}

}  // namespace
}  // namespace optd::core::cuda_test
