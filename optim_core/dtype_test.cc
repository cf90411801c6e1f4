#include "optd/core/dtype.h"

#include <string>

#include "gtest/gtest.h"

namespace optd::core {
namespace {

TEST(DTypeTest, NamesRoundTrip) {
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    absl::StatusOr<DType> parsed = ParseDType(DTypeName(t));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, t);
  }
}

TEST(DTypeTest, AcceptsTorchSpellings) {
  EXPECT_EQ(*ParseDType("torch.float32"), DType::kFloat32);
  EXPECT_EQ(*ParseDType("fp32"), DType::kFloat32);
  EXPECT_EQ(*ParseDType("torch.half"), DType::kFloat16);
  EXPECT_EQ(*ParseDType("fp16"), DType::kFloat16);
  EXPECT_EQ(*ParseDType("torch.bfloat16"), DType::kBFloat16);
  EXPECT_EQ(*ParseDType("BF16"), DType::kBFloat16);
}

TEST(DTypeTest, RejectsUnknownNamingTheValue) {
  for (const char* bad : {"float64", "int8", "", "torch.", "bfloat"}) {
    absl::StatusOr<DType> r = ParseDType(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(r.status().message()).find(std::string("\"") + bad + "\""),
              std::string::npos)
        << r.status().message();
    EXPECT_NE(std::string(r.status().message()).find("dtype"), std::string::npos);
  }
}

TEST(DTypeTest, Sizes) {
  EXPECT_EQ(DTypeSize(DType::kFloat32), 4u);
  EXPECT_EQ(DTypeSize(DType::kFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
}

}  // namespace
}  // namespace optd::core
