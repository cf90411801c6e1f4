// The CUDA backend's parameter group: weights in device memory, states under a PageManager,
// updates by the fused multi-tensor kernels on the group's own streams.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/adamw_kernels.h"
#include "cuda/engine_counters.h"
#include "cuda/page_manager.h"
#include "optd/core/engine.h"

namespace optd::core::internal::cuda {

// What an engine shares with its groups. Thread safety: budget fields are guarded by mu.
struct EngineShared {
  int device = 0;
  std::shared_ptr<EngineCounters> counters = std::make_shared<EngineCounters>();
  float* qmaps = nullptr;          // device: kSignedQuantMap then kUnsignedQuantMap
  uint8_t* buckets = nullptr;      // device: their search buckets (quant_buckets.h), in qmaps' block
  std::mutex mu;
  int64_t budget_bytes = 0;        // states of all groups, device side
  int64_t reserved_bytes = 0;      // GUARDED_BY(mu)
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
  enum class Pass { kSumSquares, kUpdate };

  CudaGroup(const GroupSpec& spec, std::shared_ptr<EngineShared> shared)
      : spec_(spec), shared_(std::move(shared)) {}

  absl::Status Init();
  absl::Status BuildPages(const AdamWOptions& options);
  void AddUnits(int tensor, int64_t offset, ConstTensorView grad, int32_t step,
                std::vector<Unit>* units) const;
  absl::Status Run(const std::vector<Unit>& units, Pass pass, const Hyper& hyper);
  absl::Status Flush(int begin, int end, Pass pass, const Hyper& hyper, bool staged);
  absl::Status EnsureCapacity(size_t segments, size_t clip_jobs);
  absl::Status EnsureStaging();
  absl::Status EnsurePartials();
  absl::Status Finish();
  absl::Status CopyState(int tensor, int64_t offset, int64_t count, TensorState* state,
                         bool to_device) const;
  Hyper HyperFor(float lr) const;
  bool clipping() const { return spec_.options.percentile_clipping < 100; }

  GroupSpec spec_;
  std::shared_ptr<EngineShared> shared_;
  std::vector<int64_t> numel_;
  std::vector<int64_t> steps_;
  std::vector<uint8_t> seen_scratch_;     // Step: duplicate-tensor check without allocating
  std::vector<void*> params_;              // device
  std::vector<int> first_page_;            // pages of tensor t: [first_page_[t], first_page_[t+1])
  std::unique_ptr<PageManager> pages_;
  int64_t page_budget_ = -1;               // what PageManager::Create was given
  int64_t reserved_ = 0;                   // bytes of the engine budget this group holds
  int64_t page_elems_ = 0;                 // 0: tensors are not split
  int64_t weight_bytes_ = 0;
  int64_t last_nonfinite_ = 0;             // of the last Step or ApplyRange

  float* clip_ = nullptr;                  // device: gnorm_vec[T][100], (unused)[T], scale[T]
  float* partials_ = nullptr;              // device: sum(g^2) per block, when clipping
  unsigned long long* nonfinite_ = nullptr;       // device: NaN/Inf gradient elements this step
  unsigned long long* nonfinite_host_ = nullptr;  // pinned: its value after the step
  std::vector<int64_t> block_offset_;      // first block of tensor t among all the group's
  cudaStream_t stream_ = nullptr;          // compute
  cudaStream_t h2d_ = nullptr;
  cudaStream_t d2h_ = nullptr;

  // Launch descriptors: pinned host staging and their device copies (regions used once a step).
  Segment* host_segments_ = nullptr;
  Segment* device_segments_ = nullptr;
  size_t segment_capacity_ = 0;
  size_t segments_used_ = 0;
  ClipJob* host_jobs_ = nullptr;
  ClipJob* device_jobs_ = nullptr;
  size_t job_capacity_ = 0;

  // Host gradients are copied through two device buffers, alternating between launches.
  char* staging_[2] = {nullptr, nullptr};
  cudaEvent_t staging_free_[2] = {nullptr, nullptr};
  cudaEvent_t staging_ready_ = nullptr;
  int staging_buf_ = 0;
  int64_t staging_used_ = 0;
  std::vector<Segment> batch_;
};

}  // namespace optd::core::internal::cuda
