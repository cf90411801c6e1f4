// The Colocate call: the lease of one colocated region (docs/colocated.md).
//
// Note [The lease]
// open -> the server admits (region_registry.h) and creates the region, answers opened{region,
// shm_name} -> the client maps it and sends mapped -> the server removes the shm name, makes
// the region findable by its steps and answers ready (a step sent before ready could reach the
// server, on another connection, before the region is findable). The region then lives until the stream ends: a client that
// closes it, exits or is killed ends it (gRPC cancels the call when the connection goes), and the
// region is released once no step uses it (Note [Region lifetime] in colocated_region.h).
// A client that does not confirm within the map timeout loses the region (the name is removed
// and the call ends with DEADLINE_EXCEEDED). A server shutdown ends every lease (UNAVAILABLE), so
// that open leases do not hold the shutdown for its whole grace period.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/message_stream.h"
#include "server/optimizer_core.h"

namespace optd::server {

// Who is asking for a lease.
struct ColocateCaller {
  std::string principal;  // PrincipalOf
  std::string client;     // principal and address, for --max_regions_per_client
  // OK when the caller may lease a region of `group` (a Step on it).
  std::function<absl::Status(const std::string& group)> authorize;
};

// The principal a region is bound to: a digest of the call's bearer token when authentication is
// on (the same token makes the same principal, across token-file reloads), "" when it is off.
std::string PrincipalOf(bool authentication, std::optional<absl::string_view> authorization);

inline constexpr absl::Duration kColocateMapTimeout = absl::Seconds(10);

// Serves one Colocate call on `stream` (Note [The lease]) and returns its status.
absl::Status ServeColocate(OptimizerCore& core, MessageStream* stream,
                           const ColocateCaller& caller,
                           absl::Duration map_timeout = kColocateMapTimeout);

}  // namespace optd::server
