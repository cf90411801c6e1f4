// Host shared-memory regions (ColocateKind SHM): a POSIX shared memory object the server creates,
// maps and hands to one client by an unguessable name, which it removes once the client mapped it.
//
// Note [Shared memory handshake]
// 1. The server creates "/optd-<128 random bits>" with O_CREAT | O_EXCL and mode 0600 (only the
//    server's user can open it; O_EXCL: nobody created it first), reserves its pages
//    (posix_fallocate, so that a full /dev/shm fails here with RESOURCE_EXHAUSTED instead of a
//    SIGBUS on first touch), maps it and registers the mapping with the engine (page-locked on
//    CUDA). The name goes to the client over the authenticated Colocate stream.
// 2. The client opens and maps it, and confirms (ColocateMapped).
// 3. The server removes the name (shm_unlink): nothing is left in /dev/shm, and no other
//    process can open the object any more; the two mappings keep the memory alive. A client
//    that never confirms loses the region after a short timeout (colocate_service.h).
//
// Note [Truncated mappings]
// A client that holds the object open could ftruncate it smaller; the server's accesses to the
// pages past the new end would then raise SIGBUS. Every copy to or from a region therefore runs
// under a SIGBUS guard (a thread-local jump target the handler returns to), and such a copy fails
// with DataLoss instead of killing the server. A SIGBUS outside a guarded copy goes to the handler
// that was installed before (or the default action).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"
#include "server/colocated_region.h"

namespace optd::server {

// Thread safety: as ColocatedRegion; Unlink may be called from any thread, more than once.
class ShmRegion final : public ColocatedRegion {
 public:
  // Creates, sizes, maps and registers (with `engine`, which must outlive the region) a new
  // object of `bytes` bytes (Note [Shared memory handshake], step 1). ResourceExhausted when
  // /dev/shm has no room; Internal naming the call for other failures.
  static absl::StatusOr<std::unique_ptr<ShmRegion>> Create(std::string id, RegionOwner owner,
                                                           int64_t bytes, core::Engine* engine,
                                                           std::unique_ptr<RegionTicket> ticket);
  // Unregisters, unmaps, and unlinks the name if that was not done yet.
  ~ShmRegion() override;

  // The name to shm_open, e.g. "/optd-3f...".
  const std::string& name() const { return name_; }
  // Removes the name (Note [Shared memory handshake], step 3). Idempotent.
  void Unlink();

  absl::Status ReadRange(int buffer, int64_t offset, int64_t bytes, void* dst) const override;
  absl::Status WriteRange(int buffer, int64_t offset, const void* src,
                          int64_t bytes) const override;

 private:
  ShmRegion(std::string id, RegionOwner owner, std::unique_ptr<RegionTicket> ticket,
            std::string name)
      : ColocatedRegion(std::move(id), std::move(owner), MemoryKind::kHost, Transport::kShm,
                        std::move(ticket)),
        name_(std::move(name)) {}

  const std::string name_;
  void* map_ = nullptr;
  int64_t bytes_ = 0;
  std::unique_ptr<core::HostRegistration> registration_;
  std::atomic<bool> unlinked_{false};
};

}  // namespace optd::server
