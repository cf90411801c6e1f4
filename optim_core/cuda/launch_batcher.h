// Batching of segments into kernel launches: a group appends the segments of a step's units, and
// each Launch turns the batch into one multi-tensor launch. The launch descriptors go through
// pinned host memory to device memory sized before the step (regions used once a step), so a
// step never allocates.
//
// Thread safety: not thread-safe; owned and serialized by one group.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "cuda/adamw_kernels.h"
#include "cuda/cuda_resources.h"
#include "cuda/gradient_staging.h"

namespace optd::core::internal::cuda {

enum class LaunchPass { kSumSquares, kUpdate };

class LaunchBatcher {
 public:
  // Room for `segments` launch descriptors and `clip_jobs` clipping jobs in one step; keeps what
  // it has when that is enough.
  absl::Status Reserve(size_t segments, size_t clip_jobs);
  int64_t device_bytes() const { return device_segments_.bytes() + device_jobs_.bytes(); }
  int64_t host_bytes() const { return host_segments_.bytes() + host_jobs_.bytes(); }

  // Appends `s` to the batch; its first_block is set here.
  void Add(Segment s);
  bool empty() const { return batch_.empty(); }
  // Launches the batch as one kernel of `pass` on `stream` (with `base`'s tables, device counts
  // and hyperparameters) after `staging`'s copies, and empties it. REQUIRES: !empty().
  absl::Status Launch(LaunchPass pass, const LaunchParams& base, GradientStaging& staging,
                      cudaStream_t h2d, cudaStream_t stream);
  // Drops a batch that will not be launched (after an error).
  void Clear();

  // The clipping jobs of this step (Reserve'd count), written by the caller, then launched.
  ClipJob* clip_jobs() { return host_jobs_.as<ClipJob>(); }
  absl::Status LaunchClip(int num_jobs, cudaStream_t stream);

  // After the step's streams are idle: the descriptor regions may be reused.
  void EndStep() { segments_used_ = 0; }

 private:
  PinnedBuffer host_segments_;
  DeviceBuffer device_segments_;
  size_t segment_capacity_ = 0;
  size_t segments_used_ = 0;
  PinnedBuffer host_jobs_;
  DeviceBuffer device_jobs_;
  size_t job_capacity_ = 0;
  std::vector<Segment> batch_;
  int64_t blocks_ = 0;  // blocks of 256 in the batch
};

}  // namespace optd::core::internal::cuda
