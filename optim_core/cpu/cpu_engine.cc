#include "cpu/cpu_engine.h"

#include "absl/strings/str_cat.h"
#include "cpu/cpu_param_group.h"

namespace optd::core::cpu {

CpuEngine::CpuEngine(const EngineOptions& options)
    : shared_(std::make_shared<EngineShared>(options.num_threads)) {}

absl::StatusOr<std::unique_ptr<ParamGroup>> CpuEngine::CreateGroup(const GroupSpec& spec) {
  return CpuParamGroup::Create(spec, shared_);
}

EngineStats CpuEngine::Stats() const {
  EngineStats s;
  s.weight_bytes_host = shared_->weight_bytes.load(std::memory_order_relaxed);
  s.state_bytes_host = shared_->state_bytes.load(std::memory_order_relaxed);
  s.nonfinite_gradient_elements =
      shared_->nonfinite_gradient_elements.load(std::memory_order_relaxed);
  return s;
}

absl::StatusOr<std::unique_ptr<Engine>> CreateCpuEngine(const EngineOptions& options) {
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads must be >= 0 (0 = all cores), got ", options.num_threads));
  }
  return std::unique_ptr<Engine>(new CpuEngine(options));
}

}  // namespace optd::core::cpu
