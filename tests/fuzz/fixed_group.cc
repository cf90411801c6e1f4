#include "tests/fuzz/fixed_group.h"

#include <cstdio>
#include <cstdlib>

#include "server/convert.h"
#include "server/limits.h"

namespace optd::fuzz {
namespace {

template <typename T>
T Must(absl::StatusOr<T> value, const char* what) {
  if (!value.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(value.status().message()).c_str());
    std::abort();
  }
  return *std::move(value);
}

}  // namespace

v1::CreateGroupRequest FixedGroup::Request() {
  v1::CreateGroupRequest r;
  r.set_group("fuzz");
  auto add = [&r](const char* name, v1::DType dtype, std::initializer_list<int64_t> shape) {
    v1::TensorInfo* t = r.add_tensors();
    t->set_name(name);
    t->set_dtype(dtype);
    for (int64_t d : shape) t->add_shape(d);
  };
  add("a", v1::FLOAT32, {4100});
  add("b", v1::BFLOAT16, {7, 40});
  add("c", v1::FLOAT16, {5});
  return r;
}

FixedGroup::FixedGroup() {
  core::EngineOptions options;
  options.backend = core::Backend::kCpu;
  options.num_threads = 1;
  engine_ = Must(core::CreateEngine(options), "CPU engine");
  metrics_ = Must(server::Metrics::Create(server::MetricsOptions{}), "metrics");
  server::GroupRecord record =
      Must(server::RecordFromCreateRequest(Request(), server::Limits{}), "fixed record");
  auto params = Must(engine_->CreateGroup(record.spec), "fixed group");
  std::shared_ptr<server::GroupMetrics> group_metrics = metrics_->ForGroup(record.name);
  group_ = std::make_unique<server::Group>(std::move(record), std::move(params),
                                           std::move(group_metrics),
                                           /*weights_initialized=*/true, engine_.get());
}

FixedGroup& FixedGroup::Get() {
  static FixedGroup* fixed = new FixedGroup();  // never destroyed: fuzzers exit without cleanup
  return *fixed;
}

}  // namespace optd::fuzz
