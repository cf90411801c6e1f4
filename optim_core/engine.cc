// The engine factory: picks the backend. The CUDA engine exists only in CUDA builds.
#include <new>

#include "optd/core/engine.h"

#include "cpu/cpu_engine.h"
#ifdef OPTD_WITH_CUDA
#include "internal/cuda_engine_factory.h"
#endif

namespace optd::core {

std::string_view BackendName(Backend b) {
  switch (b) {
    case Backend::kCpu:
      return "cpu";
    case Backend::kCuda:
      return "cuda";
  }
  return "unknown";
}

void* Engine::AllocateHost(size_t bytes) {
  return ::operator new(bytes == 0 ? 1 : bytes, std::align_val_t{64}, std::nothrow);
}

void Engine::FreeHost(void* p) {
  if (p != nullptr) ::operator delete(p, std::align_val_t{64});
}

absl::StatusOr<std::unique_ptr<HostRegistration>> Engine::RegisterHostMemory(void*, int64_t) {
  // Ordinary memory needs no registration for the CPU engine's copies.
  return std::make_unique<HostRegistration>();
}

absl::StatusOr<std::unique_ptr<DeviceMapping>> Engine::OpenIpcMemory(std::string_view, int64_t,
                                                                     int64_t) {
  return absl::FailedPreconditionError(
      "this engine has no device memory: CUDA IPC regions need optd --backend=cuda");
}

bool CudaEngineCompiled() {
#ifdef OPTD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(const EngineOptions& options) {
  switch (options.backend) {
    case Backend::kCpu:
      return cpu::CreateCpuEngine(options);
    case Backend::kCuda:
#ifdef OPTD_WITH_CUDA
      return internal::CreateCudaEngine(options);
#else
      return absl::UnavailableError("backend cuda: this optd was built without CUDA");
#endif
  }
  return absl::InvalidArgumentError("backend: unknown value");
}

}  // namespace optd::core
