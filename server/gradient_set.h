// One worker's gradient for one step, gathered from its chunks (which may arrive on several
// streams at once) into whole-tensor buffers in the wire dtype.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"
#include "server/chunk_checks.h"
#include "server/interval_set.h"
#include "server/wire_buffer.h"

namespace optd::server {

class Group;

// Thread safety: not thread-safe; Reserve, CheckComplete and Reset run under the owning
// PendingStep's mutex. The bytes of reserved ranges are then written without it, concurrently:
// ranges never overlap (Reserve refuses overlaps), so the writers never touch the same bytes.
class GradientSet {
 public:
  // Buffers come from `engine`'s host memory (page-locked on CUDA); may be null.
  GradientSet(int num_tensors, core::Engine* engine)
      : engine_(engine), tensors_(static_cast<size_t>(num_tensors)) {}

  // Forgets what arrived; keeps the buffers for the next step (a new buffer of a few GB would
  // page-fault on every step).
  void Reset();
  // Accepts chunk `c` of step `step`: InvalidArgument if it overlaps a chunk already accepted or
  // its dtype differs from the tensor's earlier chunks. Returns where its bytes go.
  absl::StatusOr<void*> Reserve(const Group& group, const CheckedChunk& c, int64_t step);
  // Accepts a whole-tensor chunk `c` whose bytes stay where they are, in memory of `kind` the
  // engine reads directly (a colocated region: Note [Steps read in place] in step_runner.cc).
  // InvalidArgument as Reserve. REQUIRES: c covers the whole tensor; `data` outlives the step.
  absl::Status AttachInPlace(const Group& group, const CheckedChunk& c, const void* data,
                             core::MemoryKind kind, int64_t step);
  // InvalidArgument when a touched tensor is not fully covered, or nothing arrived.
  absl::Status CheckComplete(const Group& group, int64_t step) const;
  // Tensors that received a gradient, ascending.
  std::vector<int> Touched() const;
  // Whole-tensor views of the touched tensors, for ParamGroup::Step (the region's memory for
  // attached ones).
  std::vector<core::TensorGradient> Gradients(const Group& group) const;
  core::DType dtype(int t) const { return tensors_[static_cast<size_t>(t)].dtype; }
  const void* data(int t) const { return tensors_[static_cast<size_t>(t)].data.data(); }
  // Bytes of buffers held.
  int64_t bytes() const;

 private:
  struct Tensor {
    WireBuffer data;  // Note [Uninitialized staging]: every byte is written before use
    core::DType dtype = core::DType::kFloat32;
    bool touched = false;
    const void* in_place = nullptr;  // AttachInPlace: where the gradient lies
    core::MemoryKind in_place_kind = core::MemoryKind::kHost;
    IntervalSet covered;
  };
  core::Engine* const engine_;
  std::vector<Tensor> tensors_;
};

}  // namespace optd::server
