// The element math of one PagedAdamW8bit step on the CPU: the 8-bit blockwise path and the
// 32-bit path. Plain functions over index ranges; cpu_param_group.cc splits a step into such
// ranges and runs them on the engine's thread pool.
#pragma once

#include <cstdint>

#include "optd/core/dtype.h"
#include "optd/core/options.h"

namespace optd::core::cpu {

// Scalars of one tensor's step, computed once outside the element loops.
struct StepConstants {
  float beta1 = 0;
  float beta2 = 0;
  float one_minus_beta1 = 0;
  float one_minus_beta2 = 0;
  float step_size = 0;     // -lr * sqrt(1 - beta2^t) / (1 - beta1^t)
  float eps_term = 0;      // sqrt(1 - beta2^t) * eps
  float decay_factor = 1;  // 1 - lr * weight_decay; exactly 1 when weight_decay is 0
  float gnorm_scale = 1;   // percentile clipping's factor
};

// Exact arithmetic: powf for beta^t, true division and sqrt (the reference uses approximate
// intrinsics; see the spec's note on the ~3e-5 relative difference).
StepConstants MakeStepConstants(const AdamWOptions& options, float lr, int64_t step,
                                float gnorm_scale);

// One tensor's buffers. `grad` holds elements [grad_offset, grad_offset + grad_numel) of the
// tensor (a whole-tensor gradient has grad_offset 0).
struct TensorBuffers {
  void* param = nullptr;
  DType param_dtype = DType::kFloat32;
  const void* grad = nullptr;
  DType grad_dtype = DType::kFloat32;
  int64_t grad_offset = 0;
  int64_t numel = 0;  // of the whole tensor
  // 8-bit path.
  uint8_t* state1 = nullptr;
  uint8_t* state2 = nullptr;
  float* absmax1 = nullptr;
  float* absmax2 = nullptr;
  // 32-bit path.
  float* state1_f32 = nullptr;
  float* state2_f32 = nullptr;
};

// Updates blocks [first_block, end_block) (of kBlockSize elements; the last may be partial),
// with the AVX2 kernel where the CPU has it (bit-identical results either way).
// Returns the number of non-finite gradient elements seen.
int64_t Update8BitBlocks(const TensorBuffers& t, const StepConstants& k, int64_t first_block,
                         int64_t end_block);

// The same with the portable code only (tests compare it with the AVX2 kernel).
int64_t Update8BitBlocksPortable(const TensorBuffers& t, const StepConstants& k,
                                 int64_t first_block, int64_t end_block);

// Updates elements [begin, end) on the 32-bit path. Returns the non-finite gradient count.
int64_t Update32Bit(const TensorBuffers& t, const StepConstants& k, int64_t begin, int64_t end);

// Sum of g^2 over elements [begin, end) of `grad` (fp32 products, double accumulation).
double SumSquares(const void* grad, DType dtype, int64_t begin, int64_t end);

}  // namespace optd::core::cpu
