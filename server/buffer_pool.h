// Host buffers kept for reuse, so that the weight snapshots of every step and pull do not fault
// in and zero fresh pages (Note [Allocator settings for the data path] in main.cc: that was a
// third of the server's CPU time in a pull on the development VM).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/wire_buffer.h"

namespace optd::server {

// Thread safety: thread-safe.
class BufferPool {
 public:
  // Keeps at most `max_bytes` of free buffers; new ones come from `engine`'s host memory
  // (WireBuffer), or ordinary memory when it is null.
  BufferPool(int64_t max_bytes, core::Engine* engine) : max_bytes_(max_bytes), engine_(engine) {}
  // A buffer of exactly `size` bytes (contents indeterminate): a kept one, or a new one.
  WireBuffer Take(size_t size);
  // Keeps `buffer` for a later Take while there is room, else frees it.
  void Return(WireBuffer buffer);
  int64_t free_bytes() const;

 private:
  const int64_t max_bytes_;
  core::Engine* const engine_;
  mutable absl::Mutex mu_;
  std::vector<WireBuffer> free_ ABSL_GUARDED_BY(mu_);
  int64_t free_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace optd::server
