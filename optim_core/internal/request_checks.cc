#include "internal/request_checks.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace optd::core::internal {

absl::Status CheckTensorIndex(absl::string_view field, int tensor, int num_tensors) {
  if (tensor < 0 || tensor >= num_tensors) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is ", tensor,
                                                   ", outside the group's ", num_tensors,
                                                   " tensors"));
  }
  return absl::OkStatus();
}

absl::StatusOr<float> StepLearningRate(const StepArgs& args, const AdamWOptions& options) {
  if (!args.lr.has_value()) return options.lr;
  const float lr = *args.lr;
  if (!(lr > 0.0f) || !std::isfinite(lr)) {
    return absl::InvalidArgumentError(absl::StrCat("lr must be > 0, got ", lr));
  }
  return lr;
}

absl::Status CheckView(absl::string_view field, const ConstTensorView& view,
                       const DType* expected_dtype, int64_t expected_numel,
                       Placement placement) {
  if (view.dtype != DType::kFloat32 && view.dtype != DType::kFloat16 &&
      view.dtype != DType::kBFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".dtype has unknown value ", static_cast<int>(view.dtype)));
  }
  if (expected_dtype != nullptr && view.dtype != *expected_dtype) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".dtype is ", std::string(DTypeName(view.dtype)),
                                                   ", expected ",
                                                   std::string(DTypeName(*expected_dtype))));
  }
  if (view.numel != expected_numel) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".numel is ", view.numel, ", expected ", expected_numel));
  }
  if (view.numel > 0 && view.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".data is null"));
  }
  if (view.memory != MemoryKind::kHost &&
      !(placement == Placement::kHostOrDevice && view.memory == MemoryKind::kDevice)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".memory: this engine accepts host memory only"));
  }
  return absl::OkStatus();
}

namespace {

// The cheap test behind CheckView, so the per-step path builds no strings when all is well.
bool ViewOk(const ConstTensorView& view, int64_t expected_numel, Placement placement) {
  const bool dtype_ok = view.dtype == DType::kFloat32 || view.dtype == DType::kFloat16 ||
                        view.dtype == DType::kBFloat16;
  const bool memory_ok = view.memory == MemoryKind::kHost ||
                         (placement == Placement::kHostOrDevice &&
                          view.memory == MemoryKind::kDevice);
  return dtype_ok && memory_ok && view.numel == expected_numel &&
         (view.numel == 0 || view.data != nullptr);
}

}  // namespace

absl::Status CheckStepGradients(const GroupSpec& spec, absl::Span<const TensorGradient> grads,
                                Placement placement, std::vector<uint8_t>& scratch) {
  const int num_tensors = static_cast<int>(spec.tensors.size());
  scratch.assign(num_tensors, 0);
  for (size_t i = 0; i < grads.size(); ++i) {
    const TensorGradient& g = grads[i];
    if (g.tensor < 0 || g.tensor >= num_tensors) {
      return CheckTensorIndex(absl::StrCat("grads[", i, "].tensor"), g.tensor, num_tensors);
    }
    if (scratch[g.tensor]) {
      const std::string field = absl::StrCat("grads[", i, "]");
      return absl::InvalidArgumentError(absl::StrCat(field, ".tensor: tensor ", g.tensor, " (\"",
                                                     spec.tensors[g.tensor].name,
                                                     "\") appears more than once"));
    }
    scratch[g.tensor] = 1;
    const TensorSpec& t = spec.tensors[g.tensor];
    if (!ViewOk(g.grad, t.numel(), placement)) {
      return CheckView(absl::StrCat("grads[", i, "].grad (tensor \"", t.name, "\")"), g.grad,
                       nullptr, t.numel(), placement);
    }
  }
  return absl::OkStatus();
}

absl::Status CheckElementRange(absl::string_view field, int64_t offset, int64_t count,
                               int64_t numel) {
  if (offset < 0 || count < 0 || offset > numel || count > numel - offset) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": elements [", offset, ", +", count,
                                                   ") are outside the tensor's ", numel));
  }
  return absl::OkStatus();
}

absl::Status CheckBlockRange(absl::string_view field, int64_t offset, int64_t count,
                             int64_t numel) {
  if (absl::Status s = CheckElementRange(field, offset, count, numel); !s.ok()) return s;
  if (offset % kBlockSize != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": offset ", offset, " is not a multiple of ", kBlockSize));
  }
  if (count == 0 && numel > 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": the range is empty"));
  }
  if (count % kBlockSize != 0 && offset + count != numel) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": count ", count,
                                                   " is neither a multiple of ", kBlockSize,
                                                   " nor reaches the tensor's end"));
  }
  return absl::OkStatus();
}

}  // namespace optd::core::internal
