// Page-locking memory that someone else allocated (Engine::RegisterHostMemory on CUDA).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"

namespace optd::core::cuda {

// cudaHostRegister of [data, data + bytes) on `device` (portable: every device may copy from it
// by DMA); the registration is undone when the returned object is destroyed. Internal naming
// the CUDA error when the driver refuses (the error is not sticky and is cleared).
absl::StatusOr<std::unique_ptr<HostRegistration>> RegisterHost(int device, void* data,
                                                               int64_t bytes);

}  // namespace optd::core::cuda
