// The colocated data path of the C++ client (docs/colocated.md): a trainer on the server's host
// leases a region of memory that both processes map; its steps then name ranges in the region
// instead of sending bytes, and the server writes the new weights into the region.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "optd/client/types.h"

namespace optd::client {

// A leased colocated region: the mapping in this process and the lease (a Colocate call) that
// keeps the server's side alive. Destroying it unmaps the region and ends the lease; the server
// then releases its side once no step uses it. A process that dies ends the lease too.
// Thread safety: the accessors may be called from any thread; the memory is the caller's to
// order (write a step's gradients before the step, read its weights after it returns).
class ColocatedRegion {
 public:
  ~ColocatedRegion();
  ColocatedRegion(const ColocatedRegion&) = delete;
  ColocatedRegion& operator=(const ColocatedRegion&) = delete;

  // The server's id of the region (what steps name).
  const std::string& id() const;
  // The group the region belongs to.
  const std::string& group() const;
  // Buffers of the region: one for shared memory; those given for CUDA IPC.
  int num_buffers() const;
  // The address and size of buffer `buffer` in this process: the mapping of shared memory; for
  // CUDA IPC the device address given with the buffer (CudaIpcBuffer::data, may be null).
  void* data(int buffer = 0) const;
  int64_t bytes(int buffer = 0) const;

  // The mapping and the call (gRPC types stay out of this header).
  struct Impl;
  explicit ColocatedRegion(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

// One device buffer of this process for a CUDA IPC region (docs/colocated.md): `handle` is the
// 64 bytes of the cudaIpcMemHandle_t of the allocation that holds it (cudaIpcGetMemHandle on the
// allocation's base), `offset` its byte offset in that allocation, `bytes` its size, `device`
// its CUDA device; `data`, optional, its device address here (returned by ColocatedRegion::data).
struct CudaIpcBuffer {
  std::string handle;
  int64_t offset = 0;
  int64_t bytes = 0;
  int device = 0;
  void* data = nullptr;
};

// One gradient range of a colocated step: elements [offset, offset + count) of `tensor`, in
// `dtype`, at byte `buffer_offset` of region buffer `buffer`. The rules of a step's chunks hold
// (offset a multiple of 256 elements; count a multiple of 256 or reaching the tensor's end).
// After the step the new weights of the range, in the tensor's dtype, are written at byte
// `weights_buffer_offset` of buffer `weights_buffer` (unset: not written).
struct RegionRange {
  std::string tensor;
  int64_t offset = 0;
  int64_t count = 0;
  DType dtype = DType::kFloat32;
  int32_t buffer = 0;
  int64_t buffer_offset = 0;
  std::optional<int64_t> weights_buffer_offset;
  int32_t weights_buffer = 0;
};

}  // namespace optd::client
