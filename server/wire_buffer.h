// A byte buffer that is not zero-filled on allocation, for the server's data path.
//
// Note [Uninitialized staging]
// Gradient buffers and weight snapshots are overwritten in full right after allocation (by the
// chunks of a step, by ParamGroup::ReadParam). std::vector<uint8_t>(n) would first write n zero
// bytes: a whole extra pass over memory that is fresh (page faults) and as large as the tensor,
// measured at several percent of a step on the 2-core dev machine. This buffer leaves the bytes
// indeterminate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "optd/core/engine.h"

namespace optd::server {

// Thread safety: not thread-safe. Move-only.
class WireBuffer {
 public:
  WireBuffer() = default;
  // Ordinary memory.
  explicit WireBuffer(size_t size) : WireBuffer(size, nullptr) {}
  // Memory from engine->AllocateHost (page-locked on CUDA, so the engine's copies run at full
  // bus speed); ordinary memory when `engine` is null or the engine has none to give.
  WireBuffer(size_t size, core::Engine* engine);
  ~WireBuffer() { Free(); }
  WireBuffer(WireBuffer&& other) noexcept { *this = std::move(other); }
  WireBuffer& operator=(WireBuffer&& other) noexcept {
    if (this != &other) {
      Free();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      engine_ = std::exchange(other.engine_, nullptr);
    }
    return *this;
  }
  WireBuffer(const WireBuffer&) = delete;
  WireBuffer& operator=(const WireBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

 private:
  void Free();

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  core::Engine* engine_ = nullptr;  // non-null when data_ came from engine_->AllocateHost
};

}  // namespace optd::server
