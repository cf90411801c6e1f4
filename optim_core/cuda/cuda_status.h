// Conversion of CUDA runtime errors into absl::Status (Internal, naming the CUDA error), so that no
// device error ever terminates the process.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace optd::core::internal::cuda {

// OK for cudaSuccess, else Internal("<what>: cudaErrorXxx (message)").
inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

}  // namespace optd::core::internal::cuda

// Returns from the enclosing function (which returns absl::Status or StatusOr) on a CUDA error.
// A macro because it must return from the caller; Abseil 20220623 has no RETURN_IF_ERROR.
#define OPTD_CUDA_RETURN_IF_ERROR(expr, what)                                        \
  do {                                                                               \
    absl::Status _optd_cuda_status = ::optd::core::internal::cuda::CudaStatus((expr), (what)); \
    if (!_optd_cuda_status.ok()) return _optd_cuda_status;                           \
  } while (0)

#define OPTD_CUDA_RETURN_IF_NOT_OK(expr)                   \
  do {                                               \
    absl::Status _optd_status = (expr);              \
    if (!_optd_status.ok()) return _optd_status;     \
  } while (0)
