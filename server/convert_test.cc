#include "server/convert.h"

#include <string>

#include "gtest/gtest.h"

namespace optd::server {
namespace {

v1::CreateGroupRequest Request() {
  v1::CreateGroupRequest r;
  r.set_group("g");
  v1::TensorInfo* t = r.add_tensors();
  t->set_name("w");
  t->set_dtype(v1::BFLOAT16);
  t->add_shape(3);
  t->add_shape(5);
  return r;
}

TEST(ConvertTest, CreateRequestDefaults) {
  auto record = RecordFromCreateRequest(Request(), Limits());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->name, "g");
  EXPECT_EQ(record->num_workers, 1);
  EXPECT_EQ(record->mode, v1::SYNC);
  EXPECT_EQ(record->sync_timeout_ms, 60000);
  EXPECT_EQ(record->worker_steps, std::vector<int64_t>{0});
  EXPECT_EQ(record->spec.tensors[0].dtype, core::DType::kBFloat16);
  EXPECT_EQ(record->spec.tensors[0].numel(), 15);
  EXPECT_EQ(record->spec.options.lr, 1e-3f);
  EXPECT_EQ(record->spec.options.percentile_clipping, 100);
}

TEST(ConvertTest, CreateRequestErrorsNameTheField) {
  auto check = [](v1::CreateGroupRequest r, const std::string& field) {
    auto record = RecordFromCreateRequest(r, Limits());
    ASSERT_FALSE(record.ok());
    EXPECT_EQ(record.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(record.status().message()).find(field), std::string::npos)
        << record.status();
  };
  v1::CreateGroupRequest r = Request();
  r.clear_group();
  check(r, "group must not be empty");
  r = Request();
  r.mutable_tensors(0)->set_dtype(v1::DTYPE_UNSPECIFIED);
  check(r, "tensors[0].dtype");
  r = Request();
  r.set_num_workers(-2);
  check(r, "num_workers");
  r = Request();
  r.set_sync_timeout_ms(-1);
  check(r, "sync_timeout_ms");
  r = Request();
  r.set_max_staleness(-1);
  check(r, "max_staleness");
  r = Request();
  r.mutable_hyperparameters()->set_eps(-1);
  check(r, "eps");
  r = Request();
  r.clear_tensors();
  check(r, "tensors must not be empty");
}

TEST(ConvertTest, MergeKeepsUnsetFields) {
  core::AdamWOptions base;
  base.lr = 0.5f;
  base.beta2 = 0.95f;
  v1::Hyperparameters hp;
  hp.set_beta1(0.8f);
  const core::AdamWOptions merged = MergeHyperparameters(hp, base);
  EXPECT_EQ(merged.lr, 0.5f);
  EXPECT_EQ(merged.beta1, 0.8f);
  EXPECT_EQ(merged.beta2, 0.95f);
  v1::Hyperparameters out;
  ToProtoHyperparameters(merged, &out);
  EXPECT_TRUE(out.has_min_8bit_size());
  EXPECT_EQ(out.beta1(), 0.8f);
}

TEST(ConvertTest, WeightBytesCountEveryDtype) {
  core::GroupSpec spec;
  spec.tensors.push_back({"big", core::DType::kFloat32, {5000}});   // 8-bit: 20 blocks
  spec.tensors.push_back({"small", core::DType::kFloat16, {100}});  // 32-bit path
  EXPECT_EQ(WeightBytes(spec), 5000 * 4 + 100 * 2);
}

}  // namespace
}  // namespace optd::server
