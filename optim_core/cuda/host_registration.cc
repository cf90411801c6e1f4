#include "cuda/host_registration.h"

#include <cuda_runtime.h>

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace optd::core::cuda {
namespace {

// Thread safety: destroyed once.
class CudaHostRegistration final : public HostRegistration {
 public:
  explicit CudaHostRegistration(void* data) : data_(data) {}
  ~CudaHostRegistration() override {
    if (cudaHostUnregister(data_) != cudaSuccess) {
      // Not sticky; the pages stay locked until the mapping goes, which frees them anyway.
      const cudaError_t err = cudaGetLastError();
      std::fprintf(stderr, "optd: cudaHostUnregister failed: %s\n", cudaGetErrorName(err));
    }
  }

 private:
  void* const data_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HostRegistration>> RegisterHost(int device, void* data,
                                                               int64_t bytes) {
  if (data == nullptr || bytes <= 0) {
    return absl::InvalidArgumentError("RegisterHostMemory: null data or bytes <= 0");
  }
  cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) {
    err = cudaHostRegister(data, static_cast<size_t>(bytes), cudaHostRegisterPortable);
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    return absl::InternalError(absl::StrCat("cudaHostRegister of ", bytes, " bytes failed: ",
                                            cudaGetErrorName(err), " (", cudaGetErrorString(err),
                                            ")"));
  }
  return std::make_unique<CudaHostRegistration>(data);
}

}  // namespace optd::core::cuda
