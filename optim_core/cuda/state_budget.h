// The engine's device budget for optimizer states, shared by its groups, and the decision of
// where a group's states live: resident when they fit what the other groups leave, else paged
// within all of that.
//
// Note [Placement when a step needs it]
// A group is placed when it is created, against what is free then. That is not final: a group
// that was paged because other groups held the budget (a restore creates the new groups while
// the old ones still exist) would stay paged for its lifetime. So a paged group asks again at
// the start of each step (CudaGroup::UpdatePlacement): when the budget available to it has grown
// since it was placed, it is placed anew (resident if it now fits) and its states move, bit for
// bit, to the new pages. Resident groups never move. A paged group holds all the budget that was
// left when it was placed, so groups created after it are paged too until it is destroyed or
// re-placed; the first of them to step after the budget frees up takes what it needs.
//
// Thread safety: StateBudget is thread-safe.
#pragma once

#include <cstdint>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace optd::core::internal::cuda {

// Where one group's states go.
struct StatePlacement {
  int64_t page_budget = -1;  // PageManager::Create's budget; -1: every state resident
  int64_t page_elems = 0;    // elements per page of a paged 8-bit tensor; 0: tensors not split
  int64_t reserved = 0;      // bytes of the engine budget the group holds
  bool paged() const { return page_budget >= 0; }
};

class StateBudget {
 public:
  // REQUIRES: called once, before any group is placed.
  void SetBudget(int64_t bytes) { budget_ = bytes; }
  int64_t budget_bytes() const { return budget_; }

  // The bytes a group that holds `held` now could hold: what the other groups leave.
  int64_t Available(int64_t held) const;
  // Places `total` state bytes of a group that holds `held` bytes now: resident when they fit
  // what the other groups leave, else paged within all of it. The group then holds
  // placement.reserved instead of `held`.
  StatePlacement Place(int64_t total, int64_t held);
  // The group's hold changes from `held` to `bytes` (undoing a Place that could not be applied).
  void Hold(int64_t held, int64_t bytes);
  // A destroyed group returns what it held.
  void Release(int64_t held) { Hold(held, 0); }

 private:
  int64_t budget_ = 0;
  mutable std::mutex mu_;
  int64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;  // held by all groups
};

}  // namespace optd::core::internal::cuda
