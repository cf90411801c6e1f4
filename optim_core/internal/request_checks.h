// Validation of engine requests shared by the CPU and CUDA engines, so both report the same
// InvalidArgument/FailedPrecondition messages naming the offending field.
#pragma once

#include <cstdint>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "optd/core/engine.h"
#include "optd/core/group_spec.h"

namespace optd::core::internal {

// Whether a view may point to device memory (the CUDA engine) or only host memory (the CPU).
enum class Placement : uint8_t { kHostOnly, kHostOrDevice };

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

// Whether a tensor of `numel` elements keeps 8-bit states under `options`.
inline bool UsesEightBit(int64_t numel, const AdamWOptions& options) {
  return numel >= options.min_8bit_size;
}

}  // namespace optd::core::internal
