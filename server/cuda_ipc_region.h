// CUDA IPC regions (ColocateKind CUDA_IPC): device allocations of a trainer on this host (its
// gradient and parameter storage), exported with cudaIpcGetMemHandle and opened in the engine's
// device context (Engine::OpenIpcMemory). The engine reads a step's gradients from them and
// writes the new weights into them, device to device: on the same GPU no byte crosses the bus,
// on a sibling GPU they go over peer access (docs/colocated.md).
//
// Note [Ordering on the device]
// The trainer synchronizes its stream before it commits a step (its gradients are complete in
// memory); the engine's step and its weight copies end with a synchronize before StepDone is
// sent, so when the trainer reads StepDone its parameters hold the new weights. No IPC events
// are needed: the Step stream's messages are the order.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"
#include "optd/v1/optd.pb.h"
#include "server/colocated_region.h"

namespace optd::server {

// Thread safety: as ColocatedRegion.
class CudaIpcRegion final : public ColocatedRegion {
 public:
  // Opens every buffer of `buffers` through `engine` (which must outlive the region).
  // InvalidArgument naming the buffer for a malformed handle or range; FailedPrecondition when
  // the engine cannot open it (the CPU backend, a handle from another host).
  static absl::StatusOr<std::unique_ptr<CudaIpcRegion>> Create(
      std::string id, RegionOwner owner,
      const google::protobuf::RepeatedPtrField<v1::CudaIpcBuffer>& buffers,
      core::Engine* engine, std::unique_ptr<RegionTicket> ticket);

  absl::Status ReadRange(int buffer, int64_t offset, int64_t bytes, void* dst) const override;
  absl::Status WriteRange(int buffer, int64_t offset, const void* src,
                          int64_t bytes) const override;

 private:
  CudaIpcRegion(std::string id, RegionOwner owner, std::unique_ptr<RegionTicket> ticket)
      : ColocatedRegion(std::move(id), std::move(owner), MemoryKind::kDevice,
                        Transport::kCudaIpc, std::move(ticket)) {}

  std::vector<std::unique_ptr<core::DeviceMapping>> mappings_;
};

}  // namespace optd::server
