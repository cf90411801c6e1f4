#include "server/cuda_ipc_region.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace optd::server {

absl::StatusOr<std::unique_ptr<CudaIpcRegion>> CudaIpcRegion::Create(
    std::string id, RegionOwner owner,
    const google::protobuf::RepeatedPtrField<v1::CudaIpcBuffer>& buffers, core::Engine* engine,
    std::unique_ptr<RegionTicket> ticket) {
  if (buffers.empty()) {
    return absl::InvalidArgumentError("open.buffers: a CUDA_IPC region needs at least one buffer");
  }
  std::unique_ptr<CudaIpcRegion> region(
      new CudaIpcRegion(std::move(id), std::move(owner), std::move(ticket)));
  region->engine_reads_in_place_ = true;
  for (int i = 0; i < buffers.size(); ++i) {
    const v1::CudaIpcBuffer& b = buffers[i];
    auto mapping = engine->OpenIpcMemory(b.handle(), b.offset(), b.bytes());
    if (!mapping.ok()) {
      return absl::Status(mapping.status().code(),
                          absl::StrCat("open.buffers[", i, "]: ", mapping.status().message()));
    }
    region->buffers_.push_back(RegionBuffer{(*mapping)->data(), (*mapping)->bytes()});
    region->mappings_.push_back(*std::move(mapping));
  }
  return region;
}

absl::Status CudaIpcRegion::ReadRange(int buffer, int64_t offset, int64_t bytes,
                                      void* dst) const {
  return mappings_[static_cast<size_t>(buffer)]->Read(offset, bytes, dst);
}

absl::Status CudaIpcRegion::WriteRange(int buffer, int64_t offset, const void* src,
                                       int64_t bytes) const {
  return mappings_[static_cast<size_t>(buffer)]->Write(offset, src, bytes);
}

}  // namespace optd::server
