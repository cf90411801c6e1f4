// Device memory of another process, opened through a CUDA IPC handle (Engine::OpenIpcMemory on
// CUDA).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"

namespace optd::core::cuda {

// Opens the allocation that `handle` (the 64 bytes of a cudaIpcMemHandle_t) names in `device`'s
// context and returns bytes [offset, offset + bytes) of it. The allocation may live on another
// device of the host: peer access is enabled on first use (cudaIpcMemLazyEnablePeerAccess).
// InvalidArgument for a handle of the wrong size or a range past the allocation's end (checked
// against the driver's own extent of the allocation, so a client cannot make the engine read or
// write past its memory); FailedPrecondition when the driver refuses the handle (another host, a
// process without access to the exporter, an allocation already freed, or a handle exported by
// this very process).
absl::StatusOr<std::unique_ptr<DeviceMapping>> OpenIpc(int device, std::string_view handle,
                                                       int64_t offset, int64_t bytes);

}  // namespace optd::core::cuda
