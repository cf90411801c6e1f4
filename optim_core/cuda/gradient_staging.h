// Host gradients on their way to a launch: copied on the h2d stream into one of two device
// buffers, alternating between launches, so the copy for the next launch overlaps the current
// one. The buffers are allocated on the first step with host gradients and kept: later steps
// never allocate.
//
// Thread safety: not thread-safe; owned and serialized by one group.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/cuda_resources.h"

namespace optd::core::internal::cuda {

class GradientStaging {
 public:
  static constexpr int64_t kBufferBytes = int64_t{32} << 20;  // per buffer; two buffers

  // The events; the buffers come with Allocate.
  static absl::StatusOr<GradientStaging> Create();

  // Allocates the two buffers unless they are. ResourceExhausted when device memory runs out.
  absl::Status Allocate();
  int64_t device_bytes() const { return buffers_[0].bytes() + buffers_[1].bytes(); }

  // Before a step's first batch: no copy is staged.
  void BeginStep() {
    staged_ = false;
    used_ = 0;
  }
  // Whether `bytes` more fit the current buffer.
  bool Fits(int64_t bytes) const { return used_ + bytes <= kBufferBytes; }
  // Copies `bytes` of host memory at `src` into the current buffer on `h2d` and returns where.
  // The first copy of a batch waits, on `h2d`, until the buffer's previous launch has run.
  // REQUIRES: Allocate() succeeded, Fits(bytes).
  absl::StatusOr<const void*> Copy(const void* src, int64_t bytes, cudaStream_t h2d);
  // Before the batch's launch on `compute`: the launch waits for the batch's copies.
  absl::Status BeforeLaunch(cudaStream_t h2d, cudaStream_t compute);
  // After it: the buffer is free again once `compute` passes here; the next batch takes the
  // other buffer.
  absl::Status AfterLaunch(cudaStream_t compute);

 private:
  DeviceBuffer buffers_[2];
  Event free_[2];   // the buffer's last launch has run
  Event ready_;     // the batch's copies are done
  int current_ = 0;
  int64_t used_ = 0;
  bool staged_ = false;  // the current batch has copies in the current buffer
};

}  // namespace optd::core::internal::cuda
