// Admission of new groups against the group count and the memory really free: a group that
// would not fit is refused before the engine allocates anything for it.
//
// Note [What a group costs, and what is free]
// A group needs its weights and states where the engine keeps them (host on the CPU backend;
// on CUDA the weights and the states that fit the engine's budget on the device, the rest in
// pinned host memory), plus host working copies the server makes lazily: two weight snapshots
// (what a step returns and Subscribe/PullWeights send) and one gradient buffer, each about the
// size of the weights (kWorkingCopies). Host memory is counted for every group whether it has
// been touched yet or not (the CPU engine's calloc costs nothing until first use, so free memory
// alone would let a 16 TiB group in):
//   room = min(MemAvailable, cgroup limit - cgroup working set) + this process's RSS
//          - --memory_reserve_bytes - what the live groups need - groups being created
// and, under an address-space limit (ulimit -v, prlimit --as), also
//   room <= RLIMIT_AS - VmSize - --memory_reserve_bytes - groups being created
//           - the live groups' working copies (counted as not allocated yet: exceeding the
//             limit later would kill the process, so this errs on the side of refusing).
// Device memory is allocated for real by cudaMalloc, so the device check is simply the need
// against the engine's device_free_bytes minus the reserve. The live groups' needs come from the
// engine's own byte counters (core::EngineStats), which are exact. Not counted: extra gradient
// buffers of concurrent async steps (one per worker in flight) and gRPC's message buffers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "optd/core/engine.h"
#include "server/limits.h"

namespace optd::server {

// Host copies of the weights the server makes per group (Note [What a group costs...]).
inline constexpr int64_t kWorkingCopies = 3;

// What this process may still allocate on the host, as the kernel reports it now. -1: unknown or
// unlimited.
struct HostMemory {
  int64_t available = -1;           // min(MemAvailable, cgroup limit - cgroup working set)
  int64_t resident = 0;             // VmRSS of this process
  int64_t address_space_room = -1;  // RLIMIT_AS - VmSize; -1 when there is no such limit
};
HostMemory ReadHostMemory();

// Bytes a group needs on the host and on the device.
struct MemoryNeed {
  int64_t host = 0;
  int64_t device = 0;
};
// `stats` tells the CUDA engine's state budget left (states beyond it are paged from the host).
MemoryNeed GroupMemoryNeed(const GroupBytes& bytes, core::Backend backend,
                           const core::EngineStats& stats);
// What the engine's live groups need, from its byte counters; and the host working copies part
// of it.
MemoryNeed LiveMemoryNeed(const core::EngineStats& stats);
int64_t LiveWorkingCopies(const core::EngineStats& stats);

// Thread safety: thread-safe.
class GroupAdmission {
 public:
  // A group admitted and not yet in the registry: holds its slot and bytes until destroyed
  // (destroy it after the group was inserted, or when its creation failed).
  class Ticket {
   public:
    ~Ticket();
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

   private:
    friend class GroupAdmission;
    Ticket(GroupAdmission* owner, bool slot, MemoryNeed need)
        : owner_(owner), slot_(slot), need_(need) {}
    GroupAdmission* const owner_;
    const bool slot_;
    const MemoryNeed need_;
  };

  // `engine` must outlive this. `live_groups` returns the number of groups in the registry; it is
  // called under this object's mutex, so it must not call back into it.
  GroupAdmission(core::Engine* engine, Limits limits, std::function<int()> live_groups);

  // Admits group `name` of `spec` (already checked with CheckGroupSpec). `new_name`: the group
  // adds to the count (false when it replaces a group of the same name). ResourceExhausted
  // naming --max_groups, or the memory that is short and --memory_reserve_bytes.
  absl::StatusOr<std::unique_ptr<Ticket>> Admit(const std::string& name,
                                                const core::GroupSpec& spec, bool new_name);

 private:
  void Release(bool slot, MemoryNeed need);

  core::Engine* const engine_;
  const Limits limits_;
  const int64_t reserve_;
  const std::function<int()> live_groups_;
  absl::Mutex mu_;
  int pending_groups_ ABSL_GUARDED_BY(mu_) = 0;
  MemoryNeed pending_ ABSL_GUARDED_BY(mu_);
};

}  // namespace optd::server
