#include "internal/request_checks.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "optd/core/state_layout.h"

namespace optd::core::internal {
namespace {

void ExpectInvalid(const absl::Status& s, const std::string& needle) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s.message();
}

TEST(RequestChecksTest, RangesPast2To31AreExact) {
  const int64_t numel = int64_t{1} << 32;  // {1 << 20, 1 << 12}: checked without allocating
  EXPECT_TRUE(CheckBlockRange("range", int64_t{3} << 30, int64_t{1} << 30, numel).ok());
  EXPECT_TRUE(CheckBlockRange("range", numel - 256, 256, numel).ok());
  ExpectInvalid(CheckBlockRange("range", numel - 256, 512, numel), "outside");
  ExpectInvalid(CheckBlockRange("range", (int64_t{1} << 31) + 1, 256, numel),
                "offset 2147483649 is not a multiple of 256");
  // A tail range that reaches the end needs no multiple of 256.
  EXPECT_TRUE(CheckBlockRange("range", numel, 3, numel + 3).ok());
  // Offsets near int64's limit do not overflow.
  ExpectInvalid(CheckElementRange("offset", INT64_MAX - 1, 10, numel), "outside");
}

TEST(RequestChecksTest, StepGradients) {
  GroupSpec spec;
  spec.tensors.push_back({"a", DType::kFloat32, {1 << 20, 1 << 12}});
  spec.tensors.push_back({"b", DType::kBFloat16, {3}});
  std::vector<uint8_t> scratch;
  float data[3] = {};
  // A gradient's dtype may differ from the parameter's; its element count may not.
  TensorGradient ok{1, {data, DType::kFloat32, 3}};
  EXPECT_TRUE(CheckStepGradients(spec, {&ok, 1}, Placement::kHostOnly, scratch).ok());
  TensorGradient short_grad{0, {data, DType::kFloat32, 3}};
  ExpectInvalid(CheckStepGradients(spec, {&short_grad, 1}, Placement::kHostOnly, scratch),
                "grads[0].grad (tensor \"a\").numel is 3, expected 4294967296");
  TensorGradient device{1, {data, DType::kFloat32, 3, MemoryKind::kDevice}};
  ExpectInvalid(CheckStepGradients(spec, {&device, 1}, Placement::kHostOnly, scratch),
                "memory");
  EXPECT_TRUE(CheckStepGradients(spec, {&device, 1}, Placement::kHostOrDevice, scratch).ok());
  TensorGradient null_data{1, {nullptr, DType::kFloat32, 3}};
  ExpectInvalid(CheckStepGradients(spec, {&null_data, 1}, Placement::kHostOnly, scratch),
                "data is null");
  TensorGradient negative{-1, {data, DType::kFloat32, 3}};
  ExpectInvalid(CheckStepGradients(spec, {&negative, 1}, Placement::kHostOnly, scratch),
                "grads[0].tensor is -1");
}

TEST(RequestChecksTest, LearningRateOverride) {
  AdamWOptions o;
  EXPECT_EQ(*StepLearningRate({}, o), o.lr);
  StepArgs args;
  args.lr = 0.5f;
  EXPECT_EQ(*StepLearningRate(args, o), 0.5f);
  args.lr = -1.0f;
  ExpectInvalid(StepLearningRate(args, o).status(), "lr must be > 0, got -1");
}

TEST(RequestChecksTest, EightBitLayoutIsStrictlyBelowMin8BitSize) {
  AdamWOptions o;  // min_8bit_size 4096
  EXPECT_TRUE(UsesEightBitStates(4096, o));
  EXPECT_FALSE(UsesEightBitStates(4095, o));
}

TEST(RequestChecksTest, CeilDivIsExactNearInt64Max) {
  EXPECT_EQ(NumBlocks(0), 0);
  EXPECT_EQ(NumBlocks(1), 1);
  EXPECT_EQ(NumBlocks(256), 1);
  EXPECT_EQ(NumBlocks(257), 2);
  EXPECT_EQ(CeilDiv(INT64_MAX, 256), INT64_MAX / 256 + 1);
}

TEST(RequestChecksTest, StepCountersStopAtInt32Max) {
  GroupSpec spec;
  spec.tensors.push_back({"w", DType::kFloat32, {300}});
  EXPECT_TRUE(CheckSetStep(spec, 0, kMaxStep).ok());
  ExpectInvalid(CheckSetStep(spec, 0, kMaxStep + 1), "step must be <= 2147483647");
  ExpectInvalid(CheckSetStep(spec, 0, -1), "step must be >= 0, got -1");
  std::vector<float> g(300);
  const TensorGradient grad{0, {g.data(), DType::kFloat32, 300, MemoryKind::kHost}};
  std::vector<uint8_t> scratch;
  const absl::StatusOr<float> lr = CheckStep(
      spec, {&grad, 1}, {}, [](int) { return kMaxStep; }, Placement::kHostOnly, scratch);
  EXPECT_EQ(lr.status().code(), absl::StatusCode::kFailedPrecondition) << lr.status();
  EXPECT_TRUE(CheckStep(spec, {&grad, 1}, {}, [](int) { return kMaxStep - 1; },
                        Placement::kHostOnly, scratch)
                  .ok());
}

}  // namespace
}  // namespace optd::core::internal
