// The CUDA engine: device selection, the state budget, and the factory hook that engine.cc calls.
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <vector>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cuda/cuda_group.h"
#include "cuda/cuda_resources.h"
#include "cuda/cuda_status.h"
#include "cuda/host_registration.h"
#include "cuda/ipc_memory.h"
#include "cuda/quant_buckets.h"
#include "internal/cuda_engine_factory.h"
#include "optd/core/engine.h"
#include "optd/core/group_spec.h"
#include "optd/core/quant_maps.h"

namespace optd::core::internal {
namespace {

using cuda::BuildBuckets;
using cuda::CudaGroup;
using cuda::kSignedBucketSteps;
using cuda::kUnsignedBucketSteps;
using cuda::kSignedBuckets;
using cuda::kUnsignedBuckets;
using cuda::EngineShared;

// Thread safety: thread-safe (groups are independent; the budget is thread-safe).
class CudaEngine final : public Engine {
 public:
  explicit CudaEngine(std::shared_ptr<EngineShared> shared) : shared_(std::move(shared)) {}

  Backend backend() const override { return Backend::kCuda; }

  absl::StatusOr<std::unique_ptr<ParamGroup>> CreateGroup(const GroupSpec& spec) override {
    absl::Status valid = ValidateGroupSpec(spec);
    if (!valid.ok()) return valid;
    absl::StatusOr<std::unique_ptr<CudaGroup>> g = CudaGroup::Create(spec, shared_);
    if (!g.ok()) return g.status();
    return std::unique_ptr<ParamGroup>(std::move(*g));
  }

  EngineStats Stats() const override {
    EngineStats s;
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(shared_->device) == cudaSuccess &&
        cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      s.device_total_bytes = static_cast<int64_t>(total_b);
      s.device_free_bytes = static_cast<int64_t>(free_b);
    } else {
      cudaGetLastError();
    }
    s.device_budget_bytes = shared_->budget.budget_bytes();
    const cuda::EngineCounters& c = *shared_->counters;
    s.weight_bytes_device = c.weight_bytes_device.load();
    s.weight_bytes_host = 0;
    s.state_bytes_device = c.state_bytes_device.load();
    s.state_bytes_host = c.state_bytes_host.load();
    s.paged_bytes_to_device = c.paged_bytes_to_device.load();
    s.paged_bytes_to_host = c.paged_bytes_to_host.load();
    s.evictions = c.evictions.load();
    s.page_wait_seconds = static_cast<double>(c.page_wait_nanos.load()) * 1e-9;
    s.nonfinite_gradient_elements = c.nonfinite_gradient_elements.load();
    return s;
  }

  void* AllocateHost(size_t bytes) override {
    void* p = nullptr;
    if (cudaSetDevice(shared_->device) != cudaSuccess ||
        cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocPortable) != cudaSuccess) {
      cudaGetLastError();  // not sticky: the caller falls back or reports ResourceExhausted
      return nullptr;
    }
    return p;
  }

  void FreeHost(void* p) override {
    if (p != nullptr) cudaFreeHost(p);
  }

  absl::StatusOr<std::unique_ptr<HostRegistration>> RegisterHostMemory(void* data,
                                                                       int64_t bytes) override {
    return ::optd::core::cuda::RegisterHost(shared_->device, data, bytes);
  }

  absl::StatusOr<std::unique_ptr<DeviceMapping>> OpenIpcMemory(std::string_view handle,
                                                               int64_t offset,
                                                               int64_t bytes) override {
    return ::optd::core::cuda::OpenIpc(shared_->device, handle, offset, bytes);
  }

 private:
  std::shared_ptr<EngineShared> shared_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(const EngineOptions& options) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA device: cudaGetDeviceCount failed with ",
                     cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
  }
  if (count == 0) return absl::UnavailableError("no usable CUDA device: the driver reports 0 devices");
  if (options.device < 0 || options.device >= count)
    return absl::InvalidArgumentError(
        absl::StrCat("device ", options.device, " out of range [0, ", count, ")"));
  if (options.device_budget_bytes < 0 || options.device_reserve_bytes < 0)
    return absl::InvalidArgumentError(
        "device_budget_bytes and device_reserve_bytes must be >= 0");
  auto shared = std::make_shared<EngineShared>();
  shared->device = options.device;
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device), "cudaSetDevice");
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&shared->sm_count, cudaDevAttrMultiProcessorCount, options.device),
      "cudaDeviceGetAttribute");
  size_t free_b = 0, total_b = 0;
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  shared->budget.SetBudget(
      options.device_budget_bytes > 0
          ? options.device_budget_bytes
          : std::max<int64_t>(0, static_cast<int64_t>(free_b) - options.device_reserve_bytes));
  std::vector<uint8_t> buckets(kSignedBuckets + kUnsignedBuckets);
  if (BuildBuckets(kSignedQuantMap, true, buckets.data()) > kSignedBucketSteps ||
      BuildBuckets(kUnsignedQuantMap, false, buckets.data() + kSignedBuckets) >
          kUnsignedBucketSteps)
    return absl::InternalError("quantization tables too dense for the search buckets");
  OPTD_CUDA_ASSIGN_OR_RETURN(
      shared->tables,
      cuda::DeviceBuffer::Allocate(static_cast<int64_t>(512 * sizeof(float) + buckets.size()),
                                   "out of device memory for the quantization tables",
                                   "cudaMalloc(qmaps)"));
  shared->qmaps = shared->tables.as<float>();
  shared->buckets = reinterpret_cast<uint8_t*>(shared->qmaps + 512);
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemcpy(shared->buckets, buckets.data(), buckets.size(),
                                       cudaMemcpyHostToDevice),
                            "cudaMemcpy(buckets)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemcpy(shared->qmaps, kSignedQuantMap, 256 * sizeof(float),
                                       cudaMemcpyHostToDevice),
                            "cudaMemcpy(qmap1)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemcpy(shared->qmaps + 256, kUnsignedQuantMap,
                                       256 * sizeof(float), cudaMemcpyHostToDevice),
                            "cudaMemcpy(qmap2)");
  return std::unique_ptr<Engine>(new CudaEngine(std::move(shared)));
}

}  // namespace optd::core::internal
