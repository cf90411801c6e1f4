#include "internal/request_checks.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "optd/core/state_layout.h"

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

namespace {

absl::Status CheckStepBounds(absl::string_view field, int64_t step, int64_t min) {
  if (step < min) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be >= ", min, ", got ", step));
  }
  if (step > kMaxStep) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be <= ", kMaxStep, ", got ", step));
  }
  return absl::OkStatus();
}

int NumTensors(const GroupSpec& spec) { return static_cast<int>(spec.tensors.size()); }
bool Clipping(const AdamWOptions& options) { return options.percentile_clipping < 100; }

}  // namespace

absl::Status CheckSetOptions(const GroupSpec& spec, const AdamWOptions& options,
                             StepOf step_of) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  const bool clipping_changes = Clipping(options) != Clipping(spec.options);
  for (int i = 0; i < NumTensors(spec); ++i) {
    if (step_of(i) == 0) continue;
    const int64_t numel = spec.tensors[i].numel();
    if (UsesEightBitStates(numel, options) != UsesEightBitStates(numel, spec.options)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "min_8bit_size: changing it from ", spec.options.min_8bit_size, " to ",
          options.min_8bit_size, " would change the state layout of tensor \"",
          spec.tensors[i].name, "\" after its first step"));
    }
    if (clipping_changes) {
      return absl::FailedPreconditionError(absl::StrCat(
          "percentile_clipping: changing it from ", spec.options.percentile_clipping, " to ",
          options.percentile_clipping, " would add or drop the clipping history of tensor \"",
          spec.tensors[i].name, "\" after its first step"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckParamCopy(const GroupSpec& spec, absl::string_view field, int tensor,
                            int64_t offset, const ConstTensorView& view, Placement placement) {
  if (absl::Status s = CheckTensorIndex("tensor", tensor, NumTensors(spec)); !s.ok()) return s;
  const TensorSpec& ts = spec.tensors[tensor];
  if (absl::Status s = CheckView(field, view, &ts.dtype, view.numel, placement); !s.ok()) {
    return s;
  }
  return CheckElementRange("offset", offset, view.numel, ts.numel());
}

absl::StatusOr<float> CheckStep(const GroupSpec& spec, absl::Span<const TensorGradient> grads,
                                const StepArgs& args, StepOf step_of, Placement placement,
                                std::vector<uint8_t>& scratch) {
  absl::StatusOr<float> lr = StepLearningRate(args, spec.options);
  if (!lr.ok()) return lr.status();
  if (absl::Status s = CheckStepGradients(spec, grads, placement, scratch); !s.ok()) return s;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (step_of(grads[i].tensor) >= kMaxStep) {
      return absl::FailedPreconditionError(absl::StrCat(
          "grads[", i, "].tensor: tensor \"", spec.tensors[grads[i].tensor].name,
          "\" has taken ", kMaxStep, " steps, the most its step counter holds"));
    }
  }
  return lr;
}

absl::StatusOr<float> CheckApplyRange(const GroupSpec& spec, const RangeGradient& range,
                                      int64_t step, const StepArgs& args, Placement placement) {
  if (absl::Status s = CheckTensorIndex("range.tensor", range.tensor, NumTensors(spec));
      !s.ok()) {
    return s;
  }
  if (Clipping(spec.options)) {
    return absl::FailedPreconditionError(
        "ApplyRange: percentile_clipping is on and needs the whole gradient; use Step");
  }
  if (absl::Status s = CheckStepBounds("step", step, 1); !s.ok()) return s;
  absl::StatusOr<float> lr = StepLearningRate(args, spec.options);
  if (!lr.ok()) return lr.status();
  const int64_t numel = spec.tensors[range.tensor].numel();
  if (absl::Status s = CheckBlockRange("range", range.offset, range.grad.numel, numel); !s.ok()) {
    return s;
  }
  if (absl::Status s =
          CheckView("range.grad", range.grad, nullptr, range.grad.numel, placement);
      !s.ok()) {
    return s;
  }
  return lr;
}

absl::Status CheckSetStep(const GroupSpec& spec, int tensor, int64_t step) {
  if (absl::Status s = CheckTensorIndex("tensor", tensor, NumTensors(spec)); !s.ok()) return s;
  return CheckStepBounds("step", step, 0);
}

absl::Status CheckExportStateRange(const GroupSpec& spec, int tensor, int64_t offset,
                                   int64_t count) {
  if (absl::Status s = CheckTensorIndex("tensor", tensor, NumTensors(spec)); !s.ok()) return s;
  return CheckBlockRange("range", offset, count, spec.tensors[tensor].numel());
}

namespace {

absl::Status CheckLayout(const GroupSpec& spec, int tensor, const TensorState& state) {
  const int64_t numel = spec.tensors[tensor].numel();
  const bool eight_bit = UsesEightBitStates(numel, spec.options);
  if (state.eight_bit != eight_bit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "eight_bit is ", state.eight_bit ? "true" : "false", " but tensor \"",
        spec.tensors[tensor].name, "\" (", numel, " elements, min_8bit_size ",
        spec.options.min_8bit_size, ") keeps ", eight_bit ? "8-bit" : "32-bit", " states"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckImportState(const GroupSpec& spec, int tensor, const TensorState& state) {
  if (absl::Status s = CheckTensorIndex("tensor", tensor, NumTensors(spec)); !s.ok()) return s;
  if (absl::Status s =
          ValidateTensorState(state, spec.tensors[tensor].numel(), Clipping(spec.options));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckLayout(spec, tensor, state); !s.ok()) return s;
  return CheckStepBounds("step", state.step, 0);
}

absl::Status CheckImportStateRange(const GroupSpec& spec, int tensor, int64_t offset,
                                   const TensorState& state) {
  if (absl::Status s = CheckTensorIndex("tensor", tensor, NumTensors(spec)); !s.ok()) return s;
  if (absl::Status s = CheckLayout(spec, tensor, state); !s.ok()) return s;
  const int64_t count = static_cast<int64_t>(state.eight_bit ? state.state1.size()
                                                             : state.state1_f32.size());
  if (absl::Status s = CheckBlockRange("range", offset, count, spec.tensors[tensor].numel());
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateTensorState(state, count, Clipping(spec.options)); !s.ok()) {
    return s;
  }
  return CheckStepBounds("step", state.step, 0);
}

}  // namespace optd::core::internal
