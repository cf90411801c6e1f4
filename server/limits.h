// Admission limits of the server: what one request may ask for, checked before anything is
// allocated for it. Memory is in limits_memory.h, concurrent streams in limits_streams.h.
//
// Note [Which code a limit returns]
// A request that could never succeed on this server, whatever else happens (a name outside the
// alphabet, more tensors or workers than allowed, a group larger than --max_group_bytes, an lr
// above --max_lr, a duplicate tensor), gets INVALID_ARGUMENT: retrying it is pointless. A request
// refused because of what the server holds right now (the number of groups, free memory, open
// streams) gets RESOURCE_EXHAUSTED: it may succeed once something is deleted or a stream ends.
// Every message names the limit and the flag that sets it, so an operator can act on it and a
// user can see which rule they broke.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/repeated_field.h"
#include "optd/core/group_spec.h"

namespace optd::server {

// The limits, one flag each in server/main.cc (the flag has the field's name). Plain values,
// fixed at start-up.
struct Limits {
  // Groups the server holds at once (--max_groups).
  int max_groups = 10000;
  // Tensors in one group (--max_tensors_per_group). Each costs about 700 bytes of bookkeeping
  // beyond its data, and the group's description (GetGroup, ListGroups) must fit one message.
  int max_tensors_per_group = 65536;
  // Bytes of a group or tensor name (--max_name_bytes). See Note [Names].
  int max_name_bytes = 256;
  // num_workers of a group (--max_workers): each worker costs a step counter and, in async mode,
  // possibly a gradient buffer of the group's size.
  int max_workers = 1024;
  // Weight + state bytes of one group (--max_group_bytes); 0 = only the memory check
  // (limits_memory.h) bounds a group.
  int64_t max_group_bytes = 0;
  // Largest learning rate a group or a step may use (--max_lr). lr = 1e30 turns every weight to
  // +-inf in one step; no AdamW schedule comes near 1e3.
  float max_lr = 1e3f;
  // ListGroups: groups per page when the request does not say (at most max_list_page_size),
  // and the most a request may ask for (--max_list_page_size).
  int default_list_page_size = 1000;
  int max_list_page_size = 10000;
  // Host and device memory kept free when admitting a group (--memory_reserve_bytes): room for
  // gRPC's buffers, the CUDA context and everything else that is not a group
  // (limits_memory.h).
  int64_t memory_reserve_bytes = int64_t{1} << 30;
  // Data-path calls running at once (--max_streams), and per client address
  // (--max_streams_per_peer; 0 = no per-address bound: behind a proxy or a Kubernetes Service
  // every client may share one address). See limits_streams.h.
  int max_streams = 1024;
  int max_streams_per_peer = 0;
  // Colocated regions (docs/colocated.md, region_registry.h): open at once (--max_regions; 0 =
  // the colocated data path is off) and per client (--max_regions_per_client: a client is a
  // bearer token and an address); bytes of one region (--max_region_bytes) and of all of them
  // together (--max_region_total_bytes). Each region is memory (host shared memory for SHM)
  // held for as long as its lease is open, and a thread that waits on the lease.
  int max_regions = 64;
  int max_regions_per_client = 8;
  int64_t max_region_bytes = int64_t{64} << 30;
  int64_t max_region_total_bytes = int64_t{128} << 30;
};

// OK, or InvalidArgument naming the first field that is out of range (every count >= 1, the
// default page no larger than the largest, max_lr > 0, bytes >= 0).
[[nodiscard]] absl::Status ValidateLimits(const Limits& limits);

// Note [Names]
// Group and tensor names end up in log lines, metric labels, file metadata and the scopes of
// access tokens, so they are restricted to a safe alphabet: ASCII letters, digits, '.', '_',
// '-' and '/', 1 to --max_name_bytes bytes, not starting with '/', and without "..". This
// excludes NUL, newlines and every other control character (a newline in a name could forge a
// server log line), spaces, quotes and non-ASCII bytes. '/' is allowed for hierarchy
// ("job-17/layer0"; optd.torch names its groups "<prefix>/<param_group>").

// OK, or INVALID_ARGUMENT naming `field` and the rule broken. The name is quoted escaped and
// shortened in the message (it may be megabytes of control characters).
[[nodiscard]] absl::Status CheckName(std::string_view name, std::string_view field,
                                     const Limits& limits);

// A name as it may appear in a message or a log line: control characters and non-ASCII bytes
// C-escaped, at most `max_bytes` of it (then "...").
std::string PrintableName(std::string_view name, size_t max_bytes = 128);

// A status message made safe for one log line: control characters and non-ASCII bytes escaped
// as in PrintableName (backslashes kept), at most 2 KiB.
std::string LogSafe(std::string_view message);

// Weight and state bytes of a group as the engine lays them out (states: 8-bit codes and block
// scales, or fp32 m and v below min_8bit_size, plus the clipping history).
struct GroupBytes {
  int64_t weights = 0;
  int64_t states = 0;
};
// Computed with overflow checks; nullopt when a sum passes int64 (a group of 2^62 fp32 elements).
std::optional<GroupBytes> CountGroupBytes(const core::GroupSpec& spec);

// The spec of a new or restored group, whole: names (group and tensors), the number of tensors,
// the engine's rules (core::ValidateGroupSpec), lr, and weight + state bytes against
// max_group_bytes (counted without allocating, with overflow checks: a group declaring 2^62
// elements is refused, not wrapped). InvalidArgument naming the field (and the flag of a limit).
[[nodiscard]] absl::Status CheckGroupSpec(const std::string& group, const core::GroupSpec& spec,
                                          const Limits& limits);

// num_workers within [1, max_workers]; InvalidArgument naming the flag.
[[nodiscard]] absl::Status CheckNumWorkers(int64_t num_workers, const Limits& limits);

// lr within (0, max_lr], finite. `field` names where it came from ("begin.lr",
// "hyperparameters.lr"). For StepBegin.lr: the step code calls this with "begin.lr".
[[nodiscard]] absl::Status CheckLearningRate(float lr, std::string_view field,
                                             const Limits& limits);

// The `tensors` field of PullWeights and ExportState: at most max_tensors_per_group names, none
// twice (a tensor listed N times used to be copied N times). InvalidArgument naming the
// duplicate.
[[nodiscard]] absl::Status CheckTensorList(
    const google::protobuf::RepeatedPtrField<std::string>& names, const Limits& limits);

}  // namespace optd::server
