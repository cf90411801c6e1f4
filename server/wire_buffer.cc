#include "server/wire_buffer.h"

#include <new>

namespace optd::server {

WireBuffer::WireBuffer(size_t size, core::Engine* engine) : size_(size) {
  if (size == 0) return;
  if (engine != nullptr) {
    data_ = static_cast<uint8_t*>(engine->AllocateHost(size));
    if (data_ != nullptr) {
      engine_ = engine;
      return;
    }
  }
  data_ = new uint8_t[size];  // default-initialized: not zeroed
}

void WireBuffer::Free() {
  if (data_ == nullptr) return;
  if (engine_ != nullptr) {
    engine_->FreeHost(data_);
  } else {
    delete[] data_;
  }
  data_ = nullptr;
  size_ = 0;
  engine_ = nullptr;
}

}  // namespace optd::server
