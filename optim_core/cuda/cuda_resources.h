// Owners of CUDA runtime resources: device buffers (cudaMalloc), pinned host buffers
// (cudaMallocHost), streams and events. Each frees what it holds when destroyed, so a group or
// page manager that fails half way through its creation leaks nothing and no destructor lists
// its resources by hand.
//
// Allocation failures: cudaErrorMemoryAllocation is ResourceExhausted (the error is cleared: it
// is not sticky, the engine keeps serving); any other error is Internal naming the CUDA error.
// Destruction ignores errors (a destructor has no one to report to; after a sticky error the
// process is restarted anyway). The caller makes the owning device current before destroying.
//
// Thread safety: like a std::unique_ptr.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cuda/cuda_status.h"

namespace optd::core::internal::cuda {

namespace resources_internal {

// ResourceExhausted for an allocation failure (cleared), else the CUDA error as Internal.
inline absl::Status AllocationStatus(cudaError_t err, absl::string_view exhausted_message,
                                     const char* what) {
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(exhausted_message);
  }
  return CudaStatus(err, what);
}

}  // namespace resources_internal

// `bytes` of device memory from cudaMalloc, or none.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() { reset(); }

  // Contents indeterminate. `exhausted_message` is the ResourceExhausted message; `what` names
  // the call in other errors, e.g. "cudaMalloc(param)".
  static absl::StatusOr<DeviceBuffer> Allocate(int64_t bytes, absl::string_view exhausted_message,
                                               const char* what) {
    DeviceBuffer b;
    const cudaError_t err = cudaMalloc(&b.data_, static_cast<size_t>(bytes));
    if (err != cudaSuccess) {
      b.data_ = nullptr;
      return resources_internal::AllocationStatus(err, exhausted_message, what);
    }
    b.bytes_ = bytes;
    return b;
  }

  void reset() {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  int64_t bytes() const { return bytes_; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// `bytes` of page-locked host memory from cudaMallocHost, or none.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~PinnedBuffer() { reset(); }

  // Contents indeterminate; as DeviceBuffer::Allocate.
  static absl::StatusOr<PinnedBuffer> Allocate(int64_t bytes, absl::string_view exhausted_message,
                                               const char* what) {
    PinnedBuffer b;
    const cudaError_t err = cudaMallocHost(&b.data_, static_cast<size_t>(bytes));
    if (err != cudaSuccess) {
      b.data_ = nullptr;
      return resources_internal::AllocationStatus(err, exhausted_message, what);
    }
    b.bytes_ = bytes;
    return b;
  }

  void reset() {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  int64_t bytes() const { return bytes_; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// A non-blocking stream (it does not synchronize with the legacy default stream).
class Stream {
 public:
  Stream() = default;
  Stream(Stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept {
    std::swap(stream_, o.stream_);
    return *this;
  }
  ~Stream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  static absl::StatusOr<Stream> Create() {
    Stream s;
    const cudaError_t err = cudaStreamCreateWithFlags(&s.stream_, cudaStreamNonBlocking);
    if (err != cudaSuccess) {
      s.stream_ = nullptr;
      return CudaStatus(err, "cudaStreamCreate");
    }
    return s;
  }

  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// An event; `flags` as cudaEventCreateWithFlags (cudaEventDefault records timing).
class Event {
 public:
  Event() = default;
  Event(Event&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  Event& operator=(Event&& o) noexcept {
    std::swap(event_, o.event_);
    return *this;
  }
  ~Event() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }

  static absl::StatusOr<Event> Create(unsigned flags) {
    Event e;
    const cudaError_t err = cudaEventCreateWithFlags(&e.event_, flags);
    if (err != cudaSuccess) {
      e.event_ = nullptr;
      return CudaStatus(err, "cudaEventCreate");
    }
    return e;
  }

  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace optd::core::internal::cuda

// Assigns the value of a StatusOr expression to `lhs`, or returns its status from the enclosing
// function. A macro because it must return from the caller (Abseil 20220623 has no
// ASSIGN_OR_RETURN).
#define OPTD_CUDA_ASSIGN_OR_RETURN(lhs, expr)                              \
  do {                                                                     \
    auto _optd_statusor = (expr);                                          \
    if (!_optd_statusor.ok()) return _optd_statusor.status();              \
    lhs = *std::move(_optd_statusor);                                      \
  } while (0)
