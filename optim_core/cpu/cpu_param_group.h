// A parameter group of the CPU engine: weights and states in host memory.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cpu/adam_kernels.h"
#include "cpu/cpu_engine.h"
#include "cpu/host_buffer.h"
#include "optd/core/engine.h"

namespace optd::core::cpu {

// Thread safety: not thread-safe (the ParamGroup contract); distinct groups may step at once,
// their jobs then take turns on the shared pool.
class CpuParamGroup final : public ParamGroup {
 public:
  // Validates `spec` and allocates zero weights and initial states.
  static absl::StatusOr<std::unique_ptr<ParamGroup>> Create(
      const GroupSpec& spec, std::shared_ptr<EngineShared> shared);
  ~CpuParamGroup() override;

  const GroupSpec& spec() const override { return spec_; }
  absl::Status SetOptions(const AdamWOptions& options) override;
  absl::Status WriteParam(int tensor, int64_t offset, ConstTensorView src) override;
  absl::Status ReadParam(int tensor, int64_t offset, TensorView dst) const override;
  TensorView ParamStorage(int tensor) override;
  absl::Status Step(absl::Span<const TensorGradient> grads, const StepArgs& args) override;
  absl::Status ApplyRange(const RangeGradient& range, int64_t step,
                          const StepArgs& args) override;
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
  struct States {
    bool eight_bit = true;
    HostBuffer state1;  // uint8 codes, or fp32 m on the 32-bit path
    HostBuffer state2;  // uint8 codes, or fp32 v on the 32-bit path
    HostBuffer absmax1;
    HostBuffer absmax2;
    std::vector<float> gnorm_vec;  // kGnormHistory entries when clipping is on
  };
  struct Tensor {
    int64_t numel = 0;
    int64_t step = 0;
    HostBuffer param;
    States states;
  };
  // One tensor's share of a step.
  struct Work {
    int tensor = 0;
    bool eight_bit = true;
    TensorBuffers buffers;
    StepConstants constants;
    int64_t first = 0;  // blocks on the 8-bit path, elements on the 32-bit path
    int64_t end = 0;
  };
  // A slice of one Work that one thread runs.
  struct Task {
    int work = 0;
    int64_t first = 0;
    int64_t end = 0;
  };

  CpuParamGroup(GroupSpec spec, std::shared_ptr<EngineShared> shared);

  // Initial states of a tensor of `numel` elements under `options`.
  static absl::StatusOr<States> NewStates(int64_t numel, const AdamWOptions& options);
  static int64_t StateBytes(const States& s);
  // Recomputes state_bytes_ and passes the difference to the engine's counter.
  void UpdateStateBytes();
  // Tensor i's buffers, without a gradient.
  TensorBuffers Buffers(int i);
  // Parallel sums of g^2 over works_[i] for every i, into sums (one per work).
  void SumSquaresOfWorks(std::vector<double>& sums);
  bool clipping() const { return spec_.options.percentile_clipping < 100; }
  // Splits works_ into tasks_ and runs them on the pool.
  void RunWorks();

  GroupSpec spec_;
  std::shared_ptr<EngineShared> shared_;
  std::vector<Tensor> tensors_;
  int64_t weight_bytes_ = 0;  // what this group adds to the engine's counters
  int64_t state_bytes_ = 0;
  int64_t last_nonfinite_ = 0;  // of the last Step or ApplyRange

  // Scratch reused across steps so a step does not allocate once the group has warmed up.
  std::vector<uint8_t> seen_scratch_;
  std::vector<Work> works_;
  std::vector<Task> tasks_;
  std::vector<double> partial_sums_;
  std::vector<double> work_sums_;
  std::vector<int64_t> task_nonfinite_;
};

}  // namespace optd::core::cpu
