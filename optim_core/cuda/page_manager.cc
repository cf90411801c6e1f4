#include "cuda/page_manager.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cuda/cuda_status.h"
#include "optd/core/state_layout.h"

namespace optd::core::internal::cuda {
namespace {

int64_t Align16(int64_t x) { return (x + 15) / 16 * 16; }

}  // namespace

PageLayout LayoutOf(int64_t count, bool eight_bit) {
  PageLayout l;
  if (eight_bit) {
    const int64_t blocks = NumBlocks(count);
    l.state1 = 0;
    l.state2 = Align16(count);
    l.absmax1 = 2 * Align16(count);
    l.absmax2 = l.absmax1 + Align16(blocks * 4);
    l.bytes = l.absmax2 + Align16(blocks * 4);
  } else {
    l.state1 = 0;
    l.state2 = Align16(count * 4);
    l.bytes = 2 * Align16(count * 4);
  }
  return l;
}

absl::StatusOr<std::unique_ptr<PageManager>> PageManager::Create(
    std::vector<PageSpec> pages, int64_t budget_bytes, std::shared_ptr<EngineCounters> counters,
    cudaStream_t stream, cudaStream_t h2d, cudaStream_t d2h) {
  std::unique_ptr<PageManager> pm(new PageManager(std::move(counters), h2d, d2h));
  pm->pages_.resize(pages.size());
  int64_t total = 0, largest = 0;
  for (size_t i = 0; i < pages.size(); ++i) {
    pm->pages_[i].spec = pages[i];
    pm->pages_[i].layout = LayoutOf(pages[i].count, pages[i].eight_bit);
    total += pm->pages_[i].layout.bytes;
    largest = std::max(largest, pm->pages_[i].layout.bytes);
  }
  const bool paging = budget_bytes >= 0 && total > budget_bytes;
  int64_t resident_left = paging ? budget_bytes - kSlots * largest : total;
  for (Page& p : pm->pages_) {
    const int64_t bytes = p.layout.bytes;
    if (bytes == 0) continue;
    if (bytes <= resident_left) {
      OPTD_CUDA_ASSIGN_OR_RETURN(
          p.device, DeviceBuffer::Allocate(bytes,
                                           absl::StrCat("out of device memory allocating ", bytes,
                                                        " bytes of optimizer state"),
                                           "cudaMalloc(state page)"));
      OPTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.device.get(), 0, bytes, stream),
                                "cudaMemsetAsync(state)");
      resident_left -= bytes;
      pm->device_bytes_ += bytes;
    } else {
      OPTD_CUDA_ASSIGN_OR_RETURN(
          p.host, PinnedBuffer::Allocate(bytes,
                                         absl::StrCat("out of pinned host memory allocating ",
                                                      bytes, " bytes of state"),
                                         "cudaMallocHost(state page)"));
      std::memset(p.host.get(), 0, bytes);
      pm->host_bytes_ += bytes;
      OPTD_CUDA_ASSIGN_OR_RETURN(p.compute_ready, Event::Create(cudaEventDefault));
      OPTD_CUDA_ASSIGN_OR_RETURN(p.loaded, Event::Create(cudaEventDefault));
    }
  }
  if (pm->host_bytes_ > 0) {
    pm->slots_.resize(kSlots);
    for (Slot& s : pm->slots_) {
      OPTD_CUDA_ASSIGN_OR_RETURN(
          s.device, DeviceBuffer::Allocate(largest, "out of device memory allocating page slots",
                                           "cudaMalloc(page slot)"));
      pm->device_bytes_ += largest;
      OPTD_CUDA_ASSIGN_OR_RETURN(s.free, Event::Create(cudaEventDisableTiming));
    }
  }
  pm->counters_->state_bytes_device += pm->device_bytes_;
  pm->counters_->state_bytes_host += pm->host_bytes_;
  pm->counted_ = true;
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "cudaStreamSynchronize(init)");
  return pm;
}

PageManager::~PageManager() {
  // The buffers and events free themselves (the reference never frees its paged states).
  if (!counted_) return;  // Create failed before adding to the counters
  counters_->state_bytes_device -= device_bytes_;
  counters_->state_bytes_host -= host_bytes_;
}

absl::StatusOr<char*> PageManager::Acquire(int i, cudaStream_t compute) {
  Page& p = pages_[i];
  if (p.device) return p.device.as<char>();
  ++clock_;
  if (p.slot >= 0) {  // hit: a clean copy is still in its slot
    Slot& s = slots_[p.slot];
    s.last_use = clock_;
    // The previous write-behind reads the slot: the update must not overwrite it before.
    OPTD_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(compute, s.free.get(), 0),
                              "cudaStreamWaitEvent");
    return s.device.as<char>();
  }
  int victim = 0;
  for (int k = 1; k < kSlots; ++k)
    if (slots_[k].last_use < slots_[victim].last_use) victim = k;
  Slot& s = slots_[victim];
  if (s.page >= 0) {
    pages_[s.page].slot = -1;
    counters_->evictions += 1;
  }
  s.page = i;
  s.last_use = clock_;
  p.slot = victim;
  // The slot's previous page must be written back (and its update finished) before the copy.
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(h2d_, s.free.get(), 0), "cudaStreamWaitEvent");
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.device.get(), p.host.get(), p.layout.bytes,
                                            cudaMemcpyHostToDevice, h2d_),
                            "cudaMemcpyAsync(page in)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(p.loaded.get(), h2d_), "cudaEventRecord");
  OPTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(p.compute_ready.get(), compute), "cudaEventRecord");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(compute, p.loaded.get(), 0),
                            "cudaStreamWaitEvent");
  p.loaded_this_step = true;
  counters_->paged_bytes_to_device += p.layout.bytes;
  return s.device.as<char>();
}

absl::Status PageManager::Release(int i, cudaStream_t compute) {
  Page& p = pages_[i];
  if (p.device) return absl::OkStatus();
  Slot& s = slots_[p.slot];
  OPTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.free.get(), compute), "cudaEventRecord");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(d2h_, s.free.get(), 0), "cudaStreamWaitEvent");
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p.host.get(), s.device.get(), p.layout.bytes,
                                            cudaMemcpyDeviceToHost, d2h_),
                            "cudaMemcpyAsync(page out)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.free.get(), d2h_), "cudaEventRecord");
  counters_->paged_bytes_to_host += p.layout.bytes;
  return absl::OkStatus();
}

absl::Status PageManager::FinishStep() {
  int64_t wait_ns = 0;
  for (Page& p : pages_) {
    if (!p.loaded_this_step) continue;
    p.loaded_this_step = false;
    float ms = 0;
    OPTD_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, p.compute_ready.get(), p.loaded.get()),
                              "cudaEventElapsedTime");
    if (ms > 0) wait_ns += static_cast<int64_t>(ms * 1e6);
  }
  counters_->page_wait_nanos += wait_ns;
  return absl::OkStatus();
}

absl::Status PageManager::Read(int i, int64_t offset, int64_t bytes, void* dst,
                               cudaStream_t stream) const {
  const Page& p = pages_[i];
  if (bytes == 0) return absl::OkStatus();
  if (!p.device) {
    std::memcpy(dst, p.host.as<const char>() + offset, bytes);
    return absl::OkStatus();
  }
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, p.device.as<const char>() + offset, bytes, cudaMemcpyDeviceToHost,
                      stream),
      "cudaMemcpyAsync(read state)");
  return CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize(read state)");
}

absl::Status PageManager::Write(int i, int64_t offset, int64_t bytes, const void* src,
                                cudaStream_t stream) {
  Page& p = pages_[i];
  if (bytes == 0) return absl::OkStatus();
  if (!p.device) {
    std::memcpy(p.host.as<char>() + offset, src, bytes);
    if (p.slot >= 0) {  // the slot's copy is stale now
      slots_[p.slot].page = -1;
      slots_[p.slot].last_use = 0;
      p.slot = -1;
    }
    return absl::OkStatus();
  }
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(p.device.as<char>() + offset, src, bytes, cudaMemcpyHostToDevice, stream),
      "cudaMemcpyAsync(write state)");
  return CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize(write state)");
}

}  // namespace optd::core::internal::cuda
