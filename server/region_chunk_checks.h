// Validation of a RegionChunk against its group and its step's region: the one place that decides
// whether a range names a real tensor range (chunk_checks.h) and bytes inside the region.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "optd/v1/optd.pb.h"
#include "server/chunk_checks.h"
#include "server/colocated_region.h"

namespace optd::server {

class Group;

// A region range that passed its checks.
struct CheckedRegionRange {
  CheckedChunk chunk;          // the tensor range and the gradient's dtype
  int buffer = 0;              // where the gradient lies
  int64_t buffer_offset = 0;   // bytes
  int64_t bytes = 0;           // chunk.n * the gradient's element size
  bool writes_weights = false;
  int weights_buffer = 0;      // where the new weights go, in the tensor's dtype
  int64_t weights_offset = 0;  // bytes
  int64_t weights_bytes = 0;   // chunk.n * the tensor's element size
};

// The tensor range follows CheckRegionGradientRange. The region side: buffer indices inside the
// region's buffers, byte offsets >= 0 and multiples of their element size (the gradient's dtype,
// the tensor's for the weights), and [offset, offset + bytes) inside the buffer (computed without
// overflow). InvalidArgument naming the field.
absl::StatusOr<CheckedRegionRange> CheckRegionChunk(const Group& group,
                                                    const ColocatedRegion& region,
                                                    const v1::RegionChunk& chunk);

}  // namespace optd::server
