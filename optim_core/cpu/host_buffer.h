// An owned, zero-filled block of host memory. calloc, so huge buffers cost nothing until
// touched, and an allocation failure is a status instead of an exception.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace optd::core::cpu {

// Thread safety: like a std::vector.
class HostBuffer {
 public:
  HostBuffer() = default;
  HostBuffer(HostBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)),
                                        bytes_(std::exchange(o.bytes_, 0)) {}
  HostBuffer& operator=(HostBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~HostBuffer() { std::free(data_); }

  // `count` elements of `elem_size` bytes, zeroed. ResourceExhausted naming `what` on failure.
  static absl::StatusOr<HostBuffer> Allocate(int64_t count, size_t elem_size,
                                             const char* what) {
    HostBuffer b;
    if (count == 0) return b;
    b.data_ = std::calloc(static_cast<size_t>(count), elem_size);
    if (b.data_ == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "out of host memory allocating ", what, " (", count, " x ", elem_size, " bytes)"));
    }
    b.bytes_ = count * static_cast<int64_t>(elem_size);
    return b;
  }

  template <typename T>
  T* as() {
    return static_cast<T*>(data_);
  }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data_);
  }
  void* data() { return data_; }
  const void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace optd::core::cpu
