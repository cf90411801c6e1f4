#include "client/internal/chunk_plan.h"

#include <algorithm>
#include <numeric>

#include "client/internal/wire.h"

namespace optd::client::internal {

std::vector<std::vector<ChunkRef>> DealChunks(absl::Span<const ConstBuffer> buffers,
                                              int64_t chunk_bytes, int streams) {
  std::vector<ChunkRef> chunks;
  std::vector<int64_t> sizes;
  int64_t total = 0;
  for (size_t i = 0; i < buffers.size(); ++i) {
    const ConstBuffer& b = buffers[i];
    const int64_t per = ElementsPerChunk(chunk_bytes, b.dtype);
    for (int64_t off = 0; off < b.numel; off += per) {
      const int64_t n = std::min(per, b.numel - off);
      chunks.push_back({i, off, n});
      sizes.push_back(n * DTypeSize(b.dtype));
      total += sizes.back();
    }
  }
  const size_t used = std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(streams),
                                                           chunks.size()));
  std::vector<std::vector<ChunkRef>> runs(used);
  size_t next = 0;
  int64_t left = total;
  for (size_t s = 0; s < used; ++s) {
    const size_t later = used - 1 - s;  // streams after this one, each needs a chunk
    if (later == 0) {
      runs[s].assign(chunks.begin() + static_cast<ptrdiff_t>(next), chunks.end());
      break;
    }
    const int64_t share = left / static_cast<int64_t>(later + 1);
    int64_t run = 0;
    while (next < chunks.size() - later) {
      // Stop when taking the next chunk would overshoot the share by more than stopping
      // undershoots it.
      if (!runs[s].empty() && run + sizes[next] - share > share - run) break;
      run += sizes[next];
      runs[s].push_back(chunks[next++]);
    }
    left -= run;
  }
  return runs;
}

std::vector<std::vector<size_t>> DealTensors(absl::Span<const int64_t> bytes, int streams) {
  const size_t used = std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(streams),
                                                           bytes.size()));
  std::vector<size_t> order(bytes.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return bytes[a] > bytes[b]; });
  std::vector<std::vector<size_t>> groups(used);
  std::vector<int64_t> load(used, 0);
  for (size_t t : order) {
    const size_t g = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    groups[g].push_back(t);
    load[g] += bytes[t];
  }
  std::vector<std::vector<size_t>> nonempty;
  for (auto& g : groups) {
    if (g.empty()) continue;  // empty tensors weigh nothing and may share a group
    std::sort(g.begin(), g.end());
    nonempty.push_back(std::move(g));
  }
  if (nonempty.empty()) nonempty.emplace_back();
  return nonempty;
}

}  // namespace optd::client::internal
