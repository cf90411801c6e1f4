// Validation of incoming tensor chunks against a group's tensors: the one place that decides
// whether a gradient or upload chunk names a real tensor, a dtype that fits and a range inside
// it (shared by Step and UploadWeights).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "optd/core/dtype.h"
#include "server/chunk_codec.h"
namespace optd::server {
class Group;
}  // namespace optd::server

namespace optd::server {

// A chunk that passed its checks: elements [offset, offset + n) of tensor `tensor`, in `dtype`.
struct CheckedChunk {
  int tensor = 0;
  int64_t offset = 0;
  int64_t n = 0;
  core::DType dtype = core::DType::kFloat32;
};

// A gradient chunk: known tensor, dtype no wider than the tensor's, whole elements, a non-empty
// block-aligned range that is a multiple of 256 elements or reaches the tensor's end.
absl::StatusOr<CheckedChunk> CheckGradientChunk(const Group& group, const ChunkRef& chunk);

// The same rules for a gradient range that lies in a colocated region (RegionChunk's tensor,
// offset, count and dtype; the region side is checked by region_chunk_checks.h). Messages name
// the region_gradient fields.
absl::StatusOr<CheckedChunk> CheckRegionGradientRange(const Group& group,
                                                      const std::string& tensor, int64_t offset,
                                                      int64_t count, v1::DType dtype);

// An upload chunk: known tensor, the tensor's own dtype, whole elements, inside the tensor.
absl::StatusOr<CheckedChunk> CheckUploadChunk(const Group& group, const ChunkRef& chunk);

}  // namespace optd::server
