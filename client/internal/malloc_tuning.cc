#include "client/internal/malloc_tuning.h"

#include <mutex>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace optd::client::internal {

void TuneMallocForBulkTransfers() {
  static std::once_flag once;
  std::call_once(once, [] {
#if defined(__GLIBC__)
    // Blocks up to 64 MiB come from the heap, and the heap is not trimmed below 1 GiB.
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  });
}

}  // namespace optd::client::internal
