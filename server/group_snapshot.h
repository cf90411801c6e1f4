// A host copy of a whole group (weights, states, step counters) at one version, so that a
// checkpoint file is written without holding the group's mutex (Note [No I/O under a group's
// mutex]). It is a read-only core::ParamGroup, so CheckpointWriter::AddGroup takes it like a live
// group; its mutating methods return FailedPrecondition.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"
#include "server/wire_buffer.h"

namespace optd::server {

// Thread safety: immutable after Copy; const methods may be called from any thread.
class GroupSnapshot final : public core::ParamGroup {
 public:
  // REQUIRES: no step runs on `group` meanwhile (the caller holds its mutex).
  static absl::StatusOr<std::unique_ptr<GroupSnapshot>> Copy(const core::ParamGroup& group);

  const core::GroupSpec& spec() const override { return spec_; }
  absl::Status ReadParam(int tensor, int64_t offset, core::TensorView dst) const override;
  absl::StatusOr<core::TensorState> ExportState(int tensor) const override;
  int64_t GetStep(int tensor) const override;

  absl::Status SetOptions(const core::AdamWOptions&) override { return ReadOnly(); }
  absl::Status WriteParam(int, int64_t, core::ConstTensorView) override { return ReadOnly(); }
  core::TensorView ParamStorage(int tensor) override;
  absl::Status Step(absl::Span<const core::TensorGradient>, const core::StepArgs&) override {
    return ReadOnly();
  }
  absl::Status ApplyRange(const core::RangeGradient&, int64_t, const core::StepArgs&) override {
    return ReadOnly();
  }
  absl::Status SetStep(int, int64_t) override { return ReadOnly(); }
  absl::Status ImportState(int, const core::TensorState&) override { return ReadOnly(); }
  absl::StatusOr<core::TensorState> ExportStateRange(int, int64_t, int64_t) const override {
    return ReadOnly();
  }
  absl::Status ImportStateRange(int, int64_t, const core::TensorState&) override {
    return ReadOnly();
  }
  // The host copies this snapshot holds (weights and states).
  core::MemoryStats GetMemoryStats() const override;
  int64_t LastNonfiniteGradientElements() const override { return 0; }

 private:
  static absl::Status ReadOnly() {
    return absl::FailedPreconditionError("a group snapshot is read-only");
  }
  core::GroupSpec spec_;
  std::vector<WireBuffer> weights_;
  std::vector<core::TensorState> states_;
};

}  // namespace optd::server
