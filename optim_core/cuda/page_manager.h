// The page manager: where each page (a block-aligned range of one tensor's optimizer states)
// lives, and the moves that bring it to the device ahead of its update.
//
// Note [Paging policy]: pages that fit the device budget are resident for the manager's lifetime
// (a group replaces its manager when it is placed anew: Note [Placement when a step needs it] in
// state_budget.h).
// The others live in pinned host memory ("home") and pass through a ring of kSlots device slots:
// Acquire copies a page home->slot on the h2d stream (the slot chosen is the least recently used
// one; a slot still holding a clean copy of the page is a hit and moves nothing), and the
// compute stream waits only for that copy, so the copy of page i+1 overlaps the update of page i.
// Release writes the page back slot->home on the d2h stream right after its update (write-behind,
// so both copy engines run at once and a later eviction of the slot costs nothing). Training
// visits pages in the same order every step; for that cyclic pattern keeping a fixed set resident
// and streaming the rest moves the fewest bytes (LRU over all pages would move every page, every
// step). Both directions use explicit copies between pinned host memory and cudaMalloc memory,
// not managed memory: see bench/RESULTS.md, "CUDA engine", for the measurements behind that.
//
// Thread safety: not thread-safe; owned and serialized by one group.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/cuda_resources.h"
#include "cuda/engine_counters.h"

namespace optd::core::internal::cuda {

struct PageSpec {
  int tensor = 0;
  int64_t offset = 0;   // first element, a multiple of 256
  int64_t count = 0;    // elements
  bool eight_bit = true;
};

// Byte offsets of the state arrays inside one page's memory (16-byte aligned sections).
struct PageLayout {
  int64_t state1 = 0;   // 8-bit: codes; 32-bit: m (fp32)
  int64_t state2 = 0;   // 8-bit: codes; 32-bit: v (fp32)
  int64_t absmax1 = 0;  // 8-bit only
  int64_t absmax2 = 0;
  int64_t bytes = 0;
};
PageLayout LayoutOf(int64_t count, bool eight_bit);

class PageManager {
 public:
  static constexpr int kSlots = 3;

  // Places `pages` (whose states start zeroed): resident while they fit `budget_bytes` minus the
  // slots, streamed otherwise. budget_bytes < 0 means everything resident. The streams are
  // borrowed and must outlive the manager. REQUIRES: the group's device is current.
  static absl::StatusOr<std::unique_ptr<PageManager>> Create(
      std::vector<PageSpec> pages, int64_t budget_bytes,
      std::shared_ptr<EngineCounters> counters, cudaStream_t stream, cudaStream_t h2d,
      cudaStream_t d2h);
  ~PageManager();
  PageManager(const PageManager&) = delete;
  PageManager& operator=(const PageManager&) = delete;

  int num_pages() const { return static_cast<int>(pages_.size()); }
  const PageSpec& page(int i) const { return pages_[i].spec; }
  const PageLayout& layout(int i) const { return pages_[i].layout; }
  bool resident(int i) const { return static_cast<bool>(pages_[i].device); }
  bool paging() const { return !slots_.empty(); }
  int64_t device_bytes() const { return device_bytes_; }
  int64_t host_bytes() const { return host_bytes_; }

  // The device address of page i, usable by work enqueued on `compute` after this call.
  absl::StatusOr<char*> Acquire(int i, cudaStream_t compute);
  // Called after the work using page i was enqueued on `compute`: writes a streamed page home.
  absl::Status Release(int i, cudaStream_t compute);
  // After all streams are idle: adds the step's time spent waiting for pages to the counters.
  absl::Status FinishStep();

  // Synchronous copies of bytes [offset, offset + bytes) of page i's memory, through `stream`
  // for resident pages. REQUIRES: no step in flight.
  absl::Status Read(int i, int64_t offset, int64_t bytes, void* dst, cudaStream_t stream) const;
  absl::Status Write(int i, int64_t offset, int64_t bytes, const void* src, cudaStream_t stream);

 private:
  struct Page {
    PageSpec spec;
    PageLayout layout;
    DeviceBuffer device;       // resident pages
    PinnedBuffer host;         // streamed pages: pinned home
    int slot = -1;             // streamed pages: slot holding a valid copy, or -1
    Event compute_ready;       // compute stream reached the page's wait
    Event loaded;              // copy home->slot finished
    bool loaded_this_step = false;
  };
  struct Slot {
    DeviceBuffer device;
    int page = -1;
    int64_t last_use = 0;
    Event free;  // all reads and writes of the slot's current page done
  };

  PageManager(std::shared_ptr<EngineCounters> counters, cudaStream_t h2d, cudaStream_t d2h)
      : counters_(std::move(counters)), h2d_(h2d), d2h_(d2h) {}

  std::vector<Page> pages_;
  std::vector<Slot> slots_;
  std::shared_ptr<EngineCounters> counters_;
  cudaStream_t h2d_;
  cudaStream_t d2h_;
  int64_t clock_ = 0;
  int64_t device_bytes_ = 0;
  int64_t host_bytes_ = 0;
  bool counted_ = false;  // device_bytes_ and host_bytes_ are in the counters
};

}  // namespace optd::core::internal::cuda
