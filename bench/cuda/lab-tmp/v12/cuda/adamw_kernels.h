// Host interface of the fused multi-tensor PagedAdamW8bit kernels. Everything a launch needs is
// described by plain structs built on the host; the launchers take a stream and never allocate.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace optd::core::internal::cuda {

// One contiguous, block-aligned range of one tensor (a whole tensor, a page of it, or a streamed
// range). Pointers are already offset to the range's first element / first block. Element types
// use the numeric values of optd::core::DType (0 fp32, 1 fp16, 2 bf16).
struct Segment {
  void* param = nullptr;
  const void* grad = nullptr;
  uint8_t* state1 = nullptr;     // 8-bit path: codes into the signed table
  uint8_t* state2 = nullptr;     // 8-bit path: codes into the unsigned table
  float* absmax1 = nullptr;      // 8-bit path: one scale per 256 elements
  float* absmax2 = nullptr;
  float* m = nullptr;            // 32-bit path states
  float* v = nullptr;
  const float* gnorm_scale = nullptr;  // device scalar from percentile clipping; null means 1
  float* partials = nullptr;     // norm kernel: sum(g^2) of each block of this range
  int64_t numel = 0;             // elements in this range
  int64_t first_block = 0;       // prefix sum of blocks of 256 over the launch's segments
  int32_t step = 1;              // the tensor's step counter t for this update
  uint8_t param_dtype = 0;
  uint8_t grad_dtype = 0;
  uint8_t eight_bit = 1;
  uint8_t grad_aligned = 1;      // grad pointer allows 8/16-byte vector loads
};

struct Hyper {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.f;
};

// A launch over `num_segments` segments living in device memory, ordered by first_block.
struct LaunchParams {
  const Segment* segments = nullptr;   // device memory
  int num_segments = 0;
  int64_t total_blocks = 0;            // sum of ceil(numel / 256)
  const float* qmap1 = nullptr;        // device copies of the two tables
  const float* qmap2 = nullptr;
  const uint8_t* buckets1 = nullptr;   // device: kSignedBuckets bounds for qmap1
  const uint8_t* buckets2 = nullptr;   // device: kUnsignedBuckets bounds for qmap2
  int sm_count = 132;                  // multiprocessors of the device (sizes the grid)
  unsigned long long* nonfinite = nullptr;  // device: += gradient elements that are NaN or Inf
  Hyper hyper;
};

// The update of every segment, one launch.
cudaError_t LaunchAdamWUpdate(const LaunchParams& params, cudaStream_t stream);

// Writes sum(g^2) of every block of 256 of every segment into the segment's partials.
cudaError_t LaunchGradSumSquares(const LaunchParams& params, cudaStream_t stream);

// Percentile clipping of one tensor: writes its gnorm_vec slot(s) from *sumsq and the scale.
// The tensor's sum(g^2) is the sum of its block partials in a fixed order (deterministic: a
// paged or chunked step gives the same bits as a resident one).
struct ClipJob {
  const float* partials = nullptr;
  int64_t num_blocks = 0;
  float* gnorm_vec = nullptr;    // 100 floats, device
  float* scale = nullptr;        // out: gnorm_scale
  int32_t step = 1;
  int32_t percentile = 100;
};
cudaError_t LaunchClipScale(const ClipJob* jobs, int num_jobs, cudaStream_t stream);

}  // namespace optd::core::internal::cuda
