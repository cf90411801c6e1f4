#include "cuda/launch_batcher.h"

#include <cstring>

#include "cuda/cuda_status.h"
#include "optd/core/state_layout.h"

namespace optd::core::internal::cuda {

absl::Status LaunchBatcher::Reserve(size_t segments, size_t clip_jobs) {
  if (segments > segment_capacity_) {
    host_segments_.reset();
    device_segments_.reset();
    segment_capacity_ = 0;
    const int64_t bytes = static_cast<int64_t>(segments * sizeof(Segment));
    OPTD_CUDA_ASSIGN_OR_RETURN(
        host_segments_, PinnedBuffer::Allocate(bytes, "out of pinned host memory for launch "
                                                      "descriptors",
                                               "cudaMallocHost(segments)"));
    OPTD_CUDA_ASSIGN_OR_RETURN(
        device_segments_,
        DeviceBuffer::Allocate(bytes, "out of device memory for launch descriptors",
                               "cudaMalloc(segments)"));
    segment_capacity_ = segments;
  }
  if (clip_jobs > job_capacity_) {
    host_jobs_.reset();
    device_jobs_.reset();
    job_capacity_ = 0;
    const int64_t bytes = static_cast<int64_t>(clip_jobs * sizeof(ClipJob));
    OPTD_CUDA_ASSIGN_OR_RETURN(
        host_jobs_, PinnedBuffer::Allocate(bytes, "out of pinned host memory for clipping jobs",
                                           "cudaMallocHost(jobs)"));
    OPTD_CUDA_ASSIGN_OR_RETURN(
        device_jobs_, DeviceBuffer::Allocate(bytes, "out of device memory for clipping jobs",
                                             "cudaMalloc(jobs)"));
    job_capacity_ = clip_jobs;
  }
  return absl::OkStatus();
}

void LaunchBatcher::Add(Segment s) {
  s.first_block = blocks_;
  blocks_ += NumBlocks(s.numel);
  batch_.push_back(s);
}

void LaunchBatcher::Clear() {
  batch_.clear();
  blocks_ = 0;
}

absl::Status LaunchBatcher::Launch(LaunchPass pass, const LaunchParams& base,
                                   GradientStaging& staging, cudaStream_t h2d,
                                   cudaStream_t stream) {
  const size_t n = batch_.size();
  if (segments_used_ + n > segment_capacity_)
    return absl::InternalError("launch descriptor buffer too small");  // sized before the step
  Segment* host = host_segments_.as<Segment>() + segments_used_;
  Segment* dev = device_segments_.as<Segment>() + segments_used_;
  std::memcpy(host, batch_.data(), n * sizeof(Segment));
  segments_used_ += n;
  OPTD_CUDA_RETURN_IF_NOT_OK(staging.BeforeLaunch(h2d, stream));
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dev, host, n * sizeof(Segment), cudaMemcpyHostToDevice, stream),
      "cudaMemcpyAsync(segments)");
  LaunchParams lp = base;
  lp.segments = dev;
  lp.num_segments = static_cast<int>(n);
  lp.total_blocks = blocks_;
  OPTD_CUDA_RETURN_IF_ERROR(pass == LaunchPass::kUpdate ? LaunchAdamWUpdate(lp, stream)
                                                        : LaunchGradSumSquares(lp, stream),
                            pass == LaunchPass::kUpdate ? "AdamWUpdateKernel"
                                                        : "SumSquaresKernel");
  OPTD_CUDA_RETURN_IF_NOT_OK(staging.AfterLaunch(stream));
  Clear();
  return absl::OkStatus();
}

absl::Status LaunchBatcher::LaunchClip(int num_jobs, cudaStream_t stream) {
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(device_jobs_.get(), host_jobs_.get(), num_jobs * sizeof(ClipJob),
                      cudaMemcpyHostToDevice, stream),
      "cudaMemcpyAsync(jobs)");
  return CudaStatus(LaunchClipScale(device_jobs_.as<ClipJob>(), num_jobs, stream),
                    "ClipScaleKernel");
}

}  // namespace optd::core::internal::cuda
