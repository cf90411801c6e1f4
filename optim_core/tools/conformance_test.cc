#include "tools/conformance.h"

#include <string>

#include "gtest/gtest.h"

namespace optd::tools {
namespace {

const std::string kGolden = OPTD_GOLDEN_DIR;

std::unique_ptr<core::Engine> CpuEngine() {
  core::EngineOptions o;
  o.num_threads = 2;
  return *core::CreateEngine(o);
}

TEST(ConformanceTest, ManifestFolderExpandsToAllCases) {
  absl::StatusOr<std::vector<GoldenCase>> cases = LoadCases(kGolden);
  ASSERT_TRUE(cases.ok()) << cases.status();
  EXPECT_EQ(cases->size(), 6u);
  bool saw_clipping = false;
  for (const GoldenCase& c : *cases) {
    if (c.name == "fp32_pclip5_20000") {
      saw_clipping = true;
      EXPECT_EQ(c.options.percentile_clipping, 5);
      EXPECT_EQ(c.steps, 12);
    }
    if (c.name == "bf16_matrix_512x384") {
      EXPECT_EQ(c.dtype, core::DType::kBFloat16);
      EXPECT_FLOAT_EQ(c.options.beta2, 0.95f);
      EXPECT_FLOAT_EQ(c.options.weight_decay, 0.1f);
      EXPECT_EQ(c.shape, (std::vector<int64_t>{512, 384}));
    }
    EXPECT_EQ(c.options.min_8bit_size, 4096);
  }
  EXPECT_TRUE(saw_clipping);
}

TEST(ConformanceTest, CaseFolderFindsItsManifestEntry) {
  absl::StatusOr<std::vector<GoldenCase>> cases = LoadCases(kGolden + "/fp16_small_3000_32bit_states/");
  ASSERT_TRUE(cases.ok()) << cases.status();
  ASSERT_EQ(cases->size(), 1u);
  EXPECT_EQ((*cases)[0].dtype, core::DType::kFloat16);
  EXPECT_EQ(LoadCases(kGolden + "/no_such_case").status().code(), absl::StatusCode::kNotFound);
}

TEST(ConformanceTest, CpuEnginePassesBothModes) {
  auto engine = CpuEngine();
  absl::StatusOr<std::vector<GoldenCase>> cases = LoadCases(kGolden + "/fp32_tail_10000");
  ASSERT_TRUE(cases.ok());
  for (Mode mode : {Mode::kTeacher, Mode::kFree}) {
    absl::StatusOr<CaseResult> r = RunCase(*engine, (*cases)[0], mode, DefaultTolerances());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->pass) << r->line;
    EXPECT_NE(r->line.find("PASS"), std::string::npos);
  }
}

TEST(ConformanceTest, DetectsADeviationFromTheReference) {
  // The same case with a different learning rate must fail: the tool can see errors.
  auto engine = CpuEngine();
  absl::StatusOr<std::vector<GoldenCase>> cases = LoadCases(kGolden + "/fp32_tail_10000");
  ASSERT_TRUE(cases.ok());
  GoldenCase c = (*cases)[0];
  c.options.lr *= 1.01f;
  absl::StatusOr<CaseResult> r = RunCase(*engine, c, Mode::kTeacher, DefaultTolerances());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->pass) << r->line;
  EXPECT_NE(r->line.find("FAIL"), std::string::npos);
  // And tighter tolerances are tighter.
  EXPECT_GT(DefaultTolerances().param_fp32, TightTolerances().param_fp32);
  EXPECT_GT(TightTolerances().codes_identical, DefaultTolerances().codes_identical);
}

}  // namespace
}  // namespace optd::tools
