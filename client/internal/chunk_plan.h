// How a call's tensors are spread over concurrent streams: chunks of a step or an upload dealt
// over K streams as contiguous runs of about equal bytes; whole tensors of a pull dealt over K
// calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "optd/client/types.h"

namespace optd::client::internal {

// Elements [offset, offset + numel) of buffers[buffer].
struct ChunkRef {
  size_t buffer = 0;
  int64_t offset = 0;
  int64_t numel = 0;
};

// Cuts `buffers` into chunks of ElementsPerChunk(chunk_bytes, dtype) elements (block-aligned;
// a tensor's last chunk may be shorter; empty tensors give none) and deals them, in order, over
// min(streams, chunks) streams as contiguous runs of about equal bytes: each run takes chunks
// while that brings it nearer its share of what is left. Returns one run per stream used; a
// single empty run when there is no chunk at all.
// REQUIRES: streams >= 1.
std::vector<std::vector<ChunkRef>> DealChunks(absl::Span<const ConstBuffer> buffers,
                                              int64_t chunk_bytes, int streams);

// Deals whole tensors of sizes `bytes` over at most `streams` groups, balancing bytes (the
// largest first, each onto the lightest group). Returns the non-empty groups' tensor indices,
// ascending; a single empty group when `bytes` is empty.
// REQUIRES: streams >= 1.
std::vector<std::vector<size_t>> DealTensors(absl::Span<const int64_t> bytes, int streams);

}  // namespace optd::client::internal
