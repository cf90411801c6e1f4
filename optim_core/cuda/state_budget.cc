#include "cuda/state_budget.h"

#include <algorithm>

#include "optd/core/options.h"

namespace optd::core::internal::cuda {
namespace {

constexpr int64_t kMaxPageBytes = int64_t{64} << 20;
constexpr int64_t kPageBytesPerBlock = 2 * kBlockSize + 2 * 4;  // two codes each + two scales

}  // namespace

int64_t StateBudget::Available(int64_t held) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::max<int64_t>(0, budget_ - (reserved_ - held));
}

StatePlacement StateBudget::Place(int64_t total, int64_t held) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t left = std::max<int64_t>(0, budget_ - (reserved_ - held));
  StatePlacement p;
  if (total <= left) {
    p.page_budget = -1;
    p.reserved = total;
  } else {
    const int64_t target = std::clamp<int64_t>(left / 8, kPageBytesPerBlock, kMaxPageBytes);
    p.page_elems = std::max<int64_t>(1, target / kPageBytesPerBlock) * kBlockSize;
    p.page_budget = left;
    p.reserved = left;
  }
  reserved_ += p.reserved - held;
  return p;
}

void StateBudget::Hold(int64_t held, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  reserved_ += bytes - held;
}

}  // namespace optd::core::internal::cuda
