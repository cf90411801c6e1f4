#include "cuda/ipc_memory.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace optd::core::cuda {
namespace {

// Thread safety: destroyed once, from any thread.
class CudaIpcMapping final : public DeviceMapping {
 public:
  CudaIpcMapping(int device, void* base, char* data, int64_t bytes)
      : DeviceMapping(data, bytes), device_(device), base_(base) {}

  absl::Status Read(int64_t offset, int64_t n, void* dst) const override {
    return Copy(dst, data() + offset, n, "device to host");
  }
  absl::Status Write(int64_t offset, const void* src, int64_t n) const override {
    return Copy(data() + offset, src, n, "host to device");
  }
  ~CudaIpcMapping() override {
    cudaError_t err = cudaSetDevice(device_);
    if (err == cudaSuccess) err = cudaIpcCloseMemHandle(base_);
    if (err != cudaSuccess) {
      // Not sticky; the mapping then stays until the process exits.
      cudaGetLastError();
      std::fprintf(stderr, "optd: cudaIpcCloseMemHandle failed: %s\n", cudaGetErrorName(err));
    }
  }

 private:
  // cudaMemcpy with cudaMemcpyDefault (unified addressing tells the direction): synchronous.
  absl::Status Copy(void* dst, const void* src, int64_t n, const char* what) const {
    cudaError_t err = cudaSetDevice(device_);
    if (err == cudaSuccess) err = cudaMemcpy(dst, src, static_cast<size_t>(n), cudaMemcpyDefault);
    if (err == cudaSuccess) return absl::OkStatus();
    cudaGetLastError();
    return absl::InternalError(absl::StrCat("CUDA IPC copy ", what, " of ", n, " bytes failed: ",
                                            cudaGetErrorName(err)));
  }

  const int device_;
  void* const base_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceMapping>> OpenIpc(int device, std::string_view handle,
                                                       int64_t offset, int64_t bytes) {
  if (handle.size() != sizeof(cudaIpcMemHandle_t)) {
    return absl::InvalidArgumentError(absl::StrCat("a CUDA IPC memory handle has ",
                                                   sizeof(cudaIpcMemHandle_t), " bytes, not ",
                                                   handle.size()));
  }
  if (offset < 0 || bytes <= 0) {
    return absl::InvalidArgumentError("CUDA IPC range: offset < 0 or bytes <= 0");
  }
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle.data(), sizeof(h));
  void* base = nullptr;
  cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) err = cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat(
        "cudaIpcOpenMemHandle failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
        "): the handle must come from another process on this host, for memory it still holds"));
  }
  // The extent of the allocation the handle opened, from the driver: the range must lie in it.
  // (The driver entry point is looked up through the runtime, so that optd needs no link against
  // libcuda: a CUDA build still starts on a machine without a GPU driver.)
  CUdeviceptr alloc_base = 0;
  size_t alloc_bytes = 0;
  CUresult r = CUDA_ERROR_NOT_FOUND;
  using GetAddressRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000, cudaEnableDefault,
                                       &found) ==
          cudaSuccess &&
      found == cudaDriverEntryPointSuccess && fn != nullptr) {
    r = reinterpret_cast<GetAddressRange>(fn)(&alloc_base, &alloc_bytes,
                                              reinterpret_cast<CUdeviceptr>(base));
  }
  // Bytes of the allocation from `base` (where the handle opened) to its end.
  const int64_t extent =
      r == CUDA_SUCCESS
          ? static_cast<int64_t>(alloc_bytes) -
                static_cast<int64_t>(reinterpret_cast<CUdeviceptr>(base) - alloc_base)
          : -1;
  if (r != CUDA_SUCCESS || offset > extent || bytes > extent - offset) {
    cudaIpcCloseMemHandle(base);
    cudaGetLastError();
    if (r != CUDA_SUCCESS)
      return absl::InternalError(absl::StrCat("cuMemGetAddressRange failed: error ", r));
    return absl::InvalidArgumentError(absl::StrCat("CUDA IPC range [", offset, ", ",
                                                   offset + bytes, ") lies past the end of the ",
                                                   extent, "-byte allocation"));
  }
  return std::make_unique<CudaIpcMapping>(device, base, static_cast<char*>(base) + offset, bytes);
}

}  // namespace optd::core::cuda
