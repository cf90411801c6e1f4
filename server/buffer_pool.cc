#include "server/buffer_pool.h"

#include <utility>

namespace optd::server {

WireBuffer BufferPool::Take(size_t size) {
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].size() == size) {
        WireBuffer b = std::move(free_[i]);
        free_[i] = std::move(free_.back());
        free_.pop_back();
        free_bytes_ -= static_cast<int64_t>(size);
        return b;
      }
    }
  }
  return WireBuffer(size, engine_);
}

void BufferPool::Return(WireBuffer buffer) {
  if (buffer.empty()) return;
  absl::MutexLock lock(&mu_);
  if (free_bytes_ + static_cast<int64_t>(buffer.size()) > max_bytes_) return;
  free_bytes_ += static_cast<int64_t>(buffer.size());
  free_.push_back(std::move(buffer));
}

int64_t BufferPool::free_bytes() const {
  absl::MutexLock lock(&mu_);
  return free_bytes_;
}

}  // namespace optd::server
