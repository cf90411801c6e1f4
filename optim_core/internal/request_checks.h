// Validation of engine requests, shared by the CPU and CUDA engines: each ParamGroup method of
// both engines runs its request through one function here before touching anything, so both
// backends accept the same requests and reject the others with the same code and message, naming
// the offending field (engine_parity_test.cc runs the same bad inputs through both).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "optd/core/engine.h"
#include "optd/core/group_spec.h"
#include "optd/core/tensor_state.h"

namespace optd::core::internal {

// Whether a view may point to device memory (the CUDA engine) or only host memory (the CPU).
enum class Placement : uint8_t { kHostOnly, kHostOrDevice };

// The largest step counter a tensor may reach. The CUDA kernels take the counter as int32 (as
// the reference's do); the CPU engine keeps the same bound so both accept the same requests.
inline constexpr int64_t kMaxStep = std::numeric_limits<int32_t>::max();

// The step counter of tensor t (a group's own bookkeeping, read by the checks below).
using StepOf = absl::FunctionRef<int64_t(int tensor)>;

// InvalidArgument unless 0 <= tensor < num_tensors.
absl::Status CheckTensorIndex(absl::string_view field, int tensor, int num_tensors);

// The learning rate of a step: args.lr when set (must be finite and > 0), else options.lr.
absl::StatusOr<float> StepLearningRate(const StepArgs& args, const AdamWOptions& options);

// `view` has a known dtype, the expected element count, non-null data when not empty, and a
// memory kind the engine accepts. `expected_dtype` null: any of the three dtypes.
absl::Status CheckView(absl::string_view field, const ConstTensorView& view,
                       const DType* expected_dtype, int64_t expected_numel,
                       Placement placement);

// The gradients of a whole-tensor step: valid tensor indices, each at most once, element
// counts equal to the tensors'. `scratch` is reused to find duplicates without allocating.
absl::Status CheckStepGradients(const GroupSpec& spec, absl::Span<const TensorGradient> grads,
                                Placement placement, std::vector<uint8_t>& scratch);

// [offset, offset + count) within a tensor of `numel` elements.
absl::Status CheckElementRange(absl::string_view field, int64_t offset, int64_t count,
                               int64_t numel);

// A range for streaming (ApplyRange, ExportStateRange): offset a multiple of kBlockSize,
// count a multiple of kBlockSize or reaching the end, inside the tensor, count > 0.
absl::Status CheckBlockRange(absl::string_view field, int64_t offset, int64_t count,
                             int64_t numel);

// ---- One check per ParamGroup method. ----

// SetOptions: valid options that change no tensor's state layout (8-bit or 32-bit, clipping
// history or not) after its first step (FailedPrecondition naming the option).
absl::Status CheckSetOptions(const GroupSpec& spec, const AdamWOptions& options, StepOf step_of);

// WriteParam ("src") and ReadParam ("dst"): the tensor, the view (the tensor's dtype), and the
// element range [offset, offset + view.numel).
absl::Status CheckParamCopy(const GroupSpec& spec, absl::string_view field, int tensor,
                            int64_t offset, const ConstTensorView& view, Placement placement);

// Step: the learning rate (returned), the gradients, and room in each stepped tensor's counter.
absl::StatusOr<float> CheckStep(const GroupSpec& spec, absl::Span<const TensorGradient> grads,
                                const StepArgs& args, StepOf step_of, Placement placement,
                                std::vector<uint8_t>& scratch);

// ApplyRange: the tensor, no clipping (FailedPrecondition), step in [1, kMaxStep], the learning
// rate (returned), the block range and the gradient view.
absl::StatusOr<float> CheckApplyRange(const GroupSpec& spec, const RangeGradient& range,
                                      int64_t step, const StepArgs& args, Placement placement);

// SetStep: the tensor and step in [0, kMaxStep].
absl::Status CheckSetStep(const GroupSpec& spec, int tensor, int64_t step);

// ExportStateRange: the tensor and the block range.
absl::Status CheckExportStateRange(const GroupSpec& spec, int tensor, int64_t offset,
                                   int64_t count);

// ImportState: the tensor, the state's shapes (ValidateTensorState), its layout (8-bit or
// 32-bit, as the tensor keeps) and step <= kMaxStep.
absl::Status CheckImportState(const GroupSpec& spec, int tensor, const TensorState& state);

// ImportStateRange: the tensor, the layout, the block range the state covers from `offset`,
// the state's shapes for that range and step <= kMaxStep.
absl::Status CheckImportStateRange(const GroupSpec& spec, int tensor, int64_t offset,
                                   const TensorState& state);

}  // namespace optd::core::internal
