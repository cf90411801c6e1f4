// The CUDA backend's parameter group: weights in device memory, states under a PageManager,
// updates by the fused multi-tensor kernels on the group's own streams.
//
// The parts, each in its own unit: the state budget and placement (state_budget.h), pages
// (page_manager.h), host-gradient staging (gradient_staging.h), launch batching
// (launch_batcher.h), clipping memory (clip_buffers.h), resource owners (cuda_resources.h).
// This file holds the group: validation (internal/request_checks), cutting a step into units
// and running them; cuda_group_state.cc holds the weight and state copies.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/adamw_kernels.h"
#include "cuda/clip_buffers.h"
#include "cuda/cuda_resources.h"
#include "cuda/engine_counters.h"
#include "cuda/gradient_staging.h"
#include "cuda/launch_batcher.h"
#include "cuda/page_manager.h"
#include "cuda/state_budget.h"
#include "optd/core/engine.h"

namespace optd::core::internal::cuda {

// What an engine shares with its groups; groups keep it alive, so a group may outlive the engine.
// Thread safety: the counters are atomic and the budget is thread-safe; the rest is set before
// the first group is created and read-only after.
struct EngineShared {
  int device = 0;
  std::shared_ptr<EngineCounters> counters = std::make_shared<EngineCounters>();
  DeviceBuffer tables;             // kSignedQuantMap, kUnsignedQuantMap, then their buckets
  float* qmaps = nullptr;          // device: kSignedQuantMap then kUnsignedQuantMap, in tables
  uint8_t* buckets = nullptr;      // device: their search buckets (quant_buckets.h), in tables
  StateBudget budget;              // states of all groups, device side
  int sm_count = 132;              // multiprocessors of the device
  ~EngineShared();
};

// Thread safety: not thread-safe (see ParamGroup); distinct groups may run concurrently.
class CudaGroup final : public ParamGroup {
 public:
  // REQUIRES: spec validated.
  static absl::StatusOr<std::unique_ptr<CudaGroup>> Create(const GroupSpec& spec,
                                                           std::shared_ptr<EngineShared> shared);
  ~CudaGroup() override;

  const GroupSpec& spec() const override { return spec_; }
  absl::Status SetOptions(const AdamWOptions& options) override;
  absl::Status WriteParam(int tensor, int64_t offset, ConstTensorView src) override;
  absl::Status ReadParam(int tensor, int64_t offset, TensorView dst) const override;
  TensorView ParamStorage(int tensor) override;
  absl::Status Step(absl::Span<const TensorGradient> grads, const StepArgs& args) override;
  absl::Status ApplyRange(const RangeGradient& range, int64_t step, const StepArgs& args) override;
  int64_t GetStep(int tensor) const override;
  absl::Status SetStep(int tensor, int64_t step) override;
  absl::StatusOr<TensorState> ExportState(int tensor) const override;
  absl::Status ImportState(int tensor, const TensorState& state) override;
  absl::StatusOr<TensorState> ExportStateRange(int tensor, int64_t offset,
                                               int64_t count) const override;
  absl::Status ImportStateRange(int tensor, int64_t offset, const TensorState& state) override;
  MemoryStats GetMemoryStats() const override;
  int64_t LastNonfiniteGradientElements() const override { return last_nonfinite_; }

 private:
  // A piece of an update: one tensor range inside one page.
  struct Unit {
    int tensor = 0;
    int page = 0;
    int64_t offset = 0;
    int64_t count = 0;
    ConstTensorView grad;  // exactly the unit's elements
    int32_t step = 1;
  };

  CudaGroup(const GroupSpec& spec, std::shared_ptr<EngineShared> shared)
      : spec_(spec), shared_(std::move(shared)) {}

  absl::Status Init();
  // Builds the pages of `options`' layout under placement_ (states zeroed).
  absl::Status BuildPages(const AdamWOptions& options);
  // Note [Placement when a step needs it] (state_budget.h): a paged group is placed anew when
  // the budget available to it grew, and its states move to the new pages.
  absl::Status UpdatePlacement();
  void AddUnits(int tensor, int64_t offset, ConstTensorView grad, int32_t step,
                std::vector<Unit>* units) const;
  absl::Status Run(const std::vector<Unit>& units, LaunchPass pass, const Hyper& hyper);
  absl::Status Finish();
  absl::Status CopyState(int tensor, int64_t offset, int64_t count, TensorState* state,
                         bool to_device) const;
  Hyper HyperFor(float lr) const;
  LaunchParams BaseLaunchParams(const Hyper& hyper) const;
  bool clipping() const { return spec_.options.percentile_clipping < 100; }

  GroupSpec spec_;
  std::shared_ptr<EngineShared> shared_;
  // Declared first, destroyed last: everything below may have work enqueued on them.
  Stream stream_;  // compute
  Stream h2d_;
  Stream d2h_;

  std::vector<int64_t> numel_;
  std::vector<int64_t> steps_;
  std::vector<uint8_t> seen_scratch_;     // Step: duplicate-tensor check without allocating
  std::vector<DeviceBuffer> params_;
  int64_t weight_bytes_ = 0;
  int64_t state_bytes_ = 0;               // the states' layout, all pages (LayoutOf)
  StatePlacement placement_;              // placement_.reserved is held in shared_->budget
  std::vector<int> first_page_;           // pages of tensor t: [first_page_[t], first_page_[t+1])
  std::unique_ptr<PageManager> pages_;

  ClipBuffers clip_;
  DeviceBuffer nonfinite_;                // unsigned long long: NaN/Inf gradient elements
  PinnedBuffer nonfinite_host_;           // its value after the step
  int64_t last_nonfinite_ = 0;            // of the last Step or ApplyRange
  GradientStaging staging_;
  LaunchBatcher batcher_;
};

}  // namespace optd::core::internal::cuda
