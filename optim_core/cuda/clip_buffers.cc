#include "cuda/clip_buffers.h"

#include <utility>

#include "cuda/cuda_status.h"

namespace optd::core::internal::cuda {

absl::StatusOr<ClipBuffers> ClipBuffers::Create(std::vector<int64_t> block_offset,
                                                cudaStream_t stream) {
  ClipBuffers c;
  c.block_offset_ = std::move(block_offset);
  const size_t n = static_cast<size_t>(c.num_tensors());
  if (n > 0) {
    const size_t bytes = n * (kGnormHistory + 2) * sizeof(float);
    OPTD_CUDA_ASSIGN_OR_RETURN(
        c.clip_, DeviceBuffer::Allocate(static_cast<int64_t>(bytes),
                                        "out of device memory for the clipping history",
                                        "cudaMalloc(clip)"));
    OPTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(c.clip_.get(), 0, bytes, stream),
                              "cudaMemsetAsync");
  }
  return c;
}

absl::Status ClipBuffers::EnsurePartials() {
  if (partials_ || block_offset_.back() == 0) return absl::OkStatus();
  OPTD_CUDA_ASSIGN_OR_RETURN(
      partials_,
      DeviceBuffer::Allocate(block_offset_.back() * static_cast<int64_t>(sizeof(float)),
                             "out of device memory for gradient norm partials",
                             "cudaMalloc(partials)"));
  return absl::OkStatus();
}

absl::Status ClipBuffers::ClearHistory(cudaStream_t stream) {
  if (!clip_) return absl::OkStatus();
  return CudaStatus(cudaMemsetAsync(clip_.get(), 0,
                                    static_cast<size_t>(num_tensors()) * kGnormHistory *
                                        sizeof(float),
                                    stream),
                    "cudaMemsetAsync(gnorm_vec)");
}

}  // namespace optd::core::internal::cuda
