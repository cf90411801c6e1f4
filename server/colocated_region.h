// A colocated region: memory that the server and a trainer on its host both map, leased over a
// Colocate stream, whose steps name ranges in it instead of carrying bytes (docs/colocated.md).
//
// Note [Region lifetime]
// A region lives while its lease (the Colocate stream that opened it) is open and while any step
// uses it: the registry (region_registry.h) holds one reference while the lease is open, each
// step that names the region holds another for the step's duration. When the lease ends (the
// client closes it, exits or is killed: gRPC cancels the stream) the registry drops its
// reference, so no new step can find the region; the mapping itself goes with the last
// reference, once no step is using it. The admission ticket is released with it, so the
// limits count what the server actually holds.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/metrics.h"

namespace optd::server {

// Where a region's memory lies: host memory (shared memory the server maps) or device memory
// (another process's CUDA allocations opened through IPC handles).
enum class MemoryKind { kHost, kDevice };

// One buffer of a region: for host memory a pointer the server may read and write; for device
// memory a device pointer in the server's context.
struct RegionBuffer {
  void* data = nullptr;
  int64_t bytes = 0;
};

// Who a region belongs to (Note [Region lifetime]).
struct RegionOwner {
  std::string group;
  // The authenticated caller (a digest of its bearer token); "" without authentication.
  std::string principal;
  // The client, for --max_regions_per_client: its principal and address.
  std::string client;
};

// What the registry's admission holds for a region; releasing it (destruction) frees the
// region's share of the limits. Thread safety: destroyed once, from any thread.
class RegionTicket {
 public:
  virtual ~RegionTicket() = default;
};

// Thread safety: the fields are immutable after creation; ReadRange and WriteRange may run on
// many threads at once (callers keep the ranges they write disjoint).
class ColocatedRegion {
 public:
  virtual ~ColocatedRegion() = default;
  ColocatedRegion(const ColocatedRegion&) = delete;
  ColocatedRegion& operator=(const ColocatedRegion&) = delete;

  const std::string& id() const { return id_; }
  const RegionOwner& owner() const { return owner_; }
  MemoryKind memory() const { return memory_; }
  Transport transport() const { return transport_; }
  const std::vector<RegionBuffer>& buffers() const { return buffers_; }
  // Whether the engine may read gradients from the region and write weights into it directly
  // (Note [Steps read in place] in step_runner.cc): device memory it opened, or host memory
  // page-locked for its DMA (a shared-memory region on a CUDA server: a client that truncates
  // the object cannot fault a DMA, unlike the CPU's own reads, which stay guarded copies).
  bool engine_reads_in_place() const { return engine_reads_in_place_; }

  // Copies `bytes` bytes at byte `offset` of buffer `buffer` into host memory `dst` (a step's
  // gradient buffer), or `src` into the region. REQUIRES: the range was checked against the
  // buffer (region_chunk_checks.h). DataLoss when the memory is gone under the server (a shared
  // memory object the client cut short: Note [Truncated mappings] in shm_region.h), Internal
  // for a device error.
  [[nodiscard]] virtual absl::Status ReadRange(int buffer, int64_t offset, int64_t bytes,
                                               void* dst) const = 0;
  [[nodiscard]] virtual absl::Status WriteRange(int buffer, int64_t offset, const void* src,
                                                int64_t bytes) const = 0;

 protected:
  ColocatedRegion(std::string id, RegionOwner owner, MemoryKind memory, Transport transport,
                  std::unique_ptr<RegionTicket> ticket)
      : id_(std::move(id)),
        owner_(std::move(owner)),
        memory_(memory),
        transport_(transport),
        ticket_(std::move(ticket)) {}
  // Set by the subclass once its memory is mapped.
  std::vector<RegionBuffer> buffers_;
  bool engine_reads_in_place_ = false;

 private:
  const std::string id_;
  const RegionOwner owner_;
  const MemoryKind memory_;
  const Transport transport_;
  const std::unique_ptr<RegionTicket> ticket_;  // released last, after the subclass unmapped
};

// 128 random bits from the kernel, as 32 lowercase hex digits: region ids and shm names, which
// must not be guessable (a guessed name could be opened by another local user's process before
// the client; a guessed id alone grants nothing, see region_registry.h, but costs nothing either).
// Internal when the kernel's random source fails.
absl::StatusOr<std::string> RandomHex128();

}  // namespace optd::server
