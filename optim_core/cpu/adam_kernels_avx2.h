// AVX2 version of the 8-bit block update, bit-identical to the portable one in adam_kernels.cc
// (same operations in the same order; no FMA). The portable build targets x86-64-v2, so this
// file's functions are compiled for AVX2 + F16C and chosen at run time.
#pragma once

#include <cstdint>

#include "cpu/adam_kernels.h"

namespace optd::core::cpu {

// Whether this CPU runs the AVX2 kernels (AVX2, F16C and FMA).
bool Avx2Available();

// Updates full blocks [first_block, end_block) (each of exactly kBlockSize elements).
// REQUIRES: Avx2Available(); every block in the range is full.
int64_t Update8BitFullBlocksAvx2(const TensorBuffers& t, const StepConstants& k,
                                 int64_t first_block, int64_t end_block);

// out[i] = m[i] / a by the kernel's reciprocal-and-correction method (for its test).
// Exact where |m[i] / a| >= 2^-24. REQUIRES: Avx2Available(); n a multiple of 8;
// 2^-60 <= a <= 2^100.
void DivideByBlockMaxForTesting(const float* m, int64_t n, float a, float* out);

}  // namespace optd::core::cpu
