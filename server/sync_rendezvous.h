// Path for N > 1 workers in SYNC mode: the workers' complete gradients meet in the group's
// SyncRound; the last to arrive averages them (Note [Sync averaging order]) and applies one
// update; a worker missing past sync_timeout_ms fails the step for everyone, and nothing is
// applied.
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"
#include "server/gradient_set.h"
#include "server/group.h"
#include "server/step_plan.h"

namespace optd::server {

struct SyncResult {
  int64_t version = 0;    // the group's version after the update
  int64_t nonfinite = 0;  // NaN/Inf elements of the averaged gradient, as the engine counted them
};

// Joins this worker's gradient (complete) to the round of plan.step and returns once the round
// was applied or failed. Holds the group's mutex only to apply. FailedPrecondition when the group is collecting another step or this worker already
// pushed this one.
absl::StatusOr<SyncResult> JoinSyncRound(Group& group, const StepPlan& plan,
                                         const GradientSet& gradient, int64_t timeout_ms,
                                         const std::atomic<bool>& stopping);

}  // namespace optd::server
