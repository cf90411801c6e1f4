// The colocated regions the server holds: admission against the region limits, and lookup by id
// for the steps that name one.
//
// A step finds a region only by its id and only for its owner: the group of the step must be the
// region's group, and the caller the principal that opened it (with authentication on). The id
// is 128 random bits (RandomHex128), but it travels over the same channel as the data, so it is
// not treated as a credential: the owner checks hold whoever learns it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/colocated_region.h"
#include "server/limits.h"
#include "server/metrics.h"

namespace optd::server {

// Thread safety: thread-safe. Tickets and regions may outlive the registry's use but not the
// registry itself (the server destroys its calls first).
class RegionRegistry {
 public:
  // `metrics` (optd_colocated_regions) must outlive the registry.
  RegionRegistry(const Limits& limits, Metrics* metrics) : limits_(limits), metrics_(metrics) {}
  // Releases the regions still registered (their tickets come back here first).
  ~RegionRegistry();

  // Admits a region of `bytes` bytes for `client` before anything is allocated for it:
  // FailedPrecondition when --max_regions is 0 (colocation is off); InvalidArgument when bytes
  // is not in [1, --max_region_bytes] (it could never fit); ResourceExhausted naming
  // --max_regions, --max_regions_per_client or --max_region_total_bytes when the regions held
  // now leave no room (Note [Which code a limit returns] in limits.h). The ticket holds the
  // region's share until it is destroyed.
  absl::StatusOr<std::unique_ptr<RegionTicket>> Admit(const std::string& client, int64_t bytes);

  // Makes `region` findable (its lease is open and the client mapped it).
  void Insert(std::shared_ptr<ColocatedRegion> region);
  // The lease ended: the region cannot be found any more; it is released once no step holds it
  // (Note [Region lifetime] in colocated_region.h).
  void Remove(const std::string& id);

  // The region `id` for a step of `group` by `principal`: InvalidArgument for an empty or
  // malformed id, NotFound when no open region has it, InvalidArgument when it belongs to
  // another group, PermissionDenied when another principal opened it. `field` names the
  // request field in the messages.
  absl::StatusOr<std::shared_ptr<ColocatedRegion>> Find(const std::string& id,
                                                        const std::string& group,
                                                        const std::string& principal,
                                                        const char* field) const;

  // Regions admitted and not yet released.
  int open() const;

 private:
  class Ticket;
  void Release(const std::string& client, int64_t bytes);

  const Limits limits_;
  Metrics* const metrics_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<ColocatedRegion>> regions_ ABSL_GUARDED_BY(mu_);
  int admitted_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t admitted_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> per_client_ ABSL_GUARDED_BY(mu_);
};

}  // namespace optd::server
