#include "cuda/gradient_staging.h"

#include <utility>

#include "cuda/cuda_status.h"

namespace optd::core::internal::cuda {

absl::StatusOr<GradientStaging> GradientStaging::Create() {
  GradientStaging s;
  OPTD_CUDA_ASSIGN_OR_RETURN(s.ready_, Event::Create(cudaEventDisableTiming));
  for (Event& e : s.free_) OPTD_CUDA_ASSIGN_OR_RETURN(e, Event::Create(cudaEventDisableTiming));
  return s;
}

absl::Status GradientStaging::Allocate() {
  for (DeviceBuffer& b : buffers_) {
    if (b) continue;
    OPTD_CUDA_ASSIGN_OR_RETURN(
        b, DeviceBuffer::Allocate(kBufferBytes, "out of device memory for gradient staging",
                                  "cudaMalloc(staging)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<const void*> GradientStaging::Copy(const void* src, int64_t bytes,
                                                  cudaStream_t h2d) {
  if (!staged_) {
    OPTD_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(h2d, free_[current_].get(), 0),
                              "cudaStreamWaitEvent");
    used_ = 0;
    staged_ = true;
  }
  char* dst = buffers_[current_].as<char>() + used_;
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, h2d),
                            "cudaMemcpyAsync(gradient)");
  used_ += (bytes + 255) / 256 * 256;  // each copy starts 256-byte aligned
  return dst;
}

absl::Status GradientStaging::BeforeLaunch(cudaStream_t h2d, cudaStream_t compute) {
  if (!staged_) return absl::OkStatus();
  OPTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(ready_.get(), h2d), "cudaEventRecord");
  return CudaStatus(cudaStreamWaitEvent(compute, ready_.get(), 0), "cudaStreamWaitEvent");
}

absl::Status GradientStaging::AfterLaunch(cudaStream_t compute) {
  if (!staged_) return absl::OkStatus();
  OPTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(free_[current_].get(), compute), "cudaEventRecord");
  current_ ^= 1;
  used_ = 0;
  staged_ = false;
  return absl::OkStatus();
}

}  // namespace optd::core::internal::cuda
