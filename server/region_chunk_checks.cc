#include "server/region_chunk_checks.h"

#include "absl/strings/str_cat.h"
#include "server/convert.h"
#include "server/group.h"

namespace optd::server {
namespace {

// `bytes` bytes of `dtype` at byte `offset` of buffer `buffer` of `region`; the fields are named
// `buffer_field` and `offset_field`.
absl::Status CheckPlace(const ColocatedRegion& region, int buffer, int64_t offset, int64_t bytes,
                        core::DType dtype, const char* buffer_field, const char* offset_field) {
  const auto& buffers = region.buffers();
  if (buffer < 0 || static_cast<size_t>(buffer) >= buffers.size()) {
    return absl::InvalidArgumentError(absl::StrCat("region_gradient.", buffer_field, " ", buffer,
                                                   " is outside [0, ", buffers.size(),
                                                   ") (the buffers of region ", region.id(), ")"));
  }
  const int64_t esize = static_cast<int64_t>(core::DTypeSize(dtype));
  if (offset < 0 || offset % esize != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "region_gradient.", offset_field, " ", offset, " must be >= 0 and a multiple of ", esize,
        " (", DTypeStr(dtype), ")"));
  }
  const int64_t size = buffers[static_cast<size_t>(buffer)].bytes;
  if (bytes > size || offset > size - bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "region_gradient.", offset_field, " ", offset, " + ", bytes, " bytes is outside buffer ",
        buffer, " of region ", region.id(), " (", size, " bytes)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CheckedRegionRange> CheckRegionChunk(const Group& group,
                                                    const ColocatedRegion& region,
                                                    const v1::RegionChunk& chunk) {
  auto c = CheckRegionGradientRange(group, chunk.tensor(), chunk.offset(), chunk.count(),
                                    chunk.dtype());
  if (!c.ok()) return c.status();
  CheckedRegionRange r;
  r.chunk = *c;
  // n is inside a tensor whose bytes fit int64 (CheckGroupSpec), so these products do too.
  r.buffer = chunk.buffer();
  r.buffer_offset = chunk.buffer_offset();
  r.bytes = c->n * static_cast<int64_t>(core::DTypeSize(c->dtype));
  if (absl::Status s = CheckPlace(region, r.buffer, r.buffer_offset, r.bytes, c->dtype, "buffer",
                                  "buffer_offset");
      !s.ok()) {
    return s;
  }
  if (!chunk.has_weights_buffer_offset()) return r;
  const core::DType weights_dtype = group.tensor(c->tensor).dtype;
  r.writes_weights = true;
  r.weights_buffer = chunk.weights_buffer();
  r.weights_offset = chunk.weights_buffer_offset();
  r.weights_bytes = c->n * static_cast<int64_t>(core::DTypeSize(weights_dtype));
  if (absl::Status s = CheckPlace(region, r.weights_buffer, r.weights_offset, r.weights_bytes,
                                  weights_dtype, "weights_buffer", "weights_buffer_offset");
      !s.ok()) {
    return s;
  }
  return r;
}

}  // namespace optd::server
