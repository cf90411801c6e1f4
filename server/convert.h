// Conversions between optd.v1 messages and optim_core types, with validation that names the
// request field at fault.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "optd/core/dtype.h"
#include "optd/core/options.h"
#include "optd/v1/optd.pb.h"
#include "server/checkpoint_file.h"
#include "server/limits.h"

namespace optd::server {

// Default payload bytes per TensorChunk / StateChunk message (docs/wire.md: 1 to 4 MiB is
// the sweet spot; 4 MiB halves the per-message overhead of 1 MiB and stays under 16 MiB limits).
inline constexpr int64_t kDefaultChunkBytes = int64_t{4} << 20;

// Elements of `dtype` per weights message the server sends: chunk_bytes' worth, rounded down to
// whole blocks of 256, at least one block (receivers may rely on block-aligned ranges).
inline int64_t ElementsPerMessage(int64_t chunk_bytes, core::DType dtype) {
  const int64_t esize = static_cast<int64_t>(core::DTypeSize(dtype));
  const int64_t blocks = chunk_bytes / esize / core::kBlockSize;
  return (blocks > 0 ? blocks : 1) * core::kBlockSize;
}

// InvalidArgument naming `field` for DTYPE_UNSPECIFIED or an unknown value.
absl::StatusOr<core::DType> FromProtoDType(v1::DType dtype, std::string_view field);
v1::DType ToProtoDType(core::DType dtype);
// core::DTypeName as absl::string_view (Debian's Abseil does not alias std::string_view, so
// absl::StrCat does not take the latter).
inline absl::string_view DTypeStr(core::DType dtype) {
  const std::string_view name = core::DTypeName(dtype);
  return absl::string_view(name.data(), name.size());
}

// `base` with the fields set in `hp` replaced (unset fields keep base's values). Not validated.
core::AdamWOptions MergeHyperparameters(const v1::Hyperparameters& hp, core::AdamWOptions base);
// Every field set.
void ToProtoHyperparameters(const core::AdamWOptions& options, v1::Hyperparameters* hp);

// Validates a CreateGroupRequest (group name, tensors, hyperparameters, workers, mode, timeouts)
// against the engine's rules and `limits`, and turns it into a record at version 0. The counts
// (tensors, workers) are checked before anything of their size is allocated.
absl::StatusOr<GroupRecord> RecordFromCreateRequest(const v1::CreateGroupRequest& request,
                                                    const Limits& limits);

// The rules every group record obeys, whether it comes from CreateGroup or from a checkpoint
// file: CheckGroupSpec, num_workers in [1, max_workers], mode SYNC or ASYNC,
// sync_timeout_ms > 0, max_staleness >= 0, version >= 0, one worker step >= 0 per worker.
// InvalidArgument naming the field.
[[nodiscard]] absl::Status ValidateRecord(const GroupRecord& record, const Limits& limits);

// Bytes of the group's weights as they travel (numel x dtype size, summed; INT64_MAX if that
// overflows): the size of a weight snapshot. What the engine holds is core::MemoryStats.
int64_t WeightBytes(const core::GroupSpec& spec);

}  // namespace optd::server
