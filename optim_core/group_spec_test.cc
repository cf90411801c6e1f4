#include "optd/core/group_spec.h"

#include <string>

#include "gtest/gtest.h"

namespace optd::core {
namespace {

void ExpectRejected(const GroupSpec& spec, const std::string& needle) {
  const absl::Status s = ValidateGroupSpec(spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << needle;
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s.message();
}

TEST(GroupSpecTest, NumelIsTheProductAndScalarIsOne) {
  EXPECT_EQ((TensorSpec{"s", DType::kFloat32, {}}).numel(), 1);
  EXPECT_EQ((TensorSpec{"m", DType::kFloat32, {3, 5, 7}}).numel(), 105);
  EXPECT_EQ((TensorSpec{"z", DType::kFloat32, {3, 0}}).numel(), 0);
}

TEST(GroupSpecTest, TensorsPast2To31ElementsAreValidAndCountedIn64Bits) {
  // Validated without allocating anything: 2^32 elements.
  GroupSpec spec;
  spec.tensors.push_back({"huge", DType::kBFloat16, {1 << 20, 1 << 12}});
  EXPECT_TRUE(ValidateGroupSpec(spec).ok());
  EXPECT_EQ(spec.tensors[0].numel(), int64_t{1} << 32);
  // The number of 256-blocks and the byte size stay exact in int64.
  EXPECT_EQ((spec.tensors[0].numel() + 255) / 256, int64_t{1} << 24);
  EXPECT_EQ(spec.tensors[0].numel() * 2, int64_t{1} << 33);
}

TEST(GroupSpecTest, RejectsOverflowingElementCount) {
  GroupSpec spec;
  spec.tensors.push_back({"w", DType::kFloat32, {int64_t{1} << 40, int64_t{1} << 40}});
  ExpectRejected(spec, "tensors[0].shape: element count overflows int64");
}

TEST(GroupSpecTest, RejectsEmptyAndDuplicateNames) {
  GroupSpec spec;
  spec.tensors.push_back({"a", DType::kFloat32, {4}});
  spec.tensors.push_back({"", DType::kFloat32, {4}});
  ExpectRejected(spec, "tensors[1].name is empty");
  GroupSpec dup;
  dup.tensors.push_back({"a", DType::kFloat32, {4}});
  dup.tensors.push_back({"a", DType::kFloat16, {8}});
  ExpectRejected(dup, "tensors[1].name \"a\" is a duplicate");
}

TEST(GroupSpecTest, RejectsNegativeDim) {
  GroupSpec spec;
  spec.tensors.push_back({"a", DType::kFloat32, {4, -2}});
  ExpectRejected(spec, "tensors[0].shape[1] is negative");
}

TEST(GroupSpecTest, RejectsUnknownDType) {
  GroupSpec spec;
  spec.tensors.push_back({"a", static_cast<DType>(9), {4}});
  ExpectRejected(spec, "tensors[0].dtype");
}

TEST(GroupSpecTest, ReportsBadOptions) {
  GroupSpec spec;
  spec.options.amsgrad = true;
  ExpectRejected(spec, "options: PagedAdamW8bit does not support amsgrad=True");
}

}  // namespace
}  // namespace optd::core
