// The one commit of a gathered step: apply it (or take it through the sync round), bump the
// group's version, record the worker's step and the metrics, publish the new version to
// subscribers, and copy the weights the streams will send back.
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"
#include "server/group.h"
#include "server/pending_step.h"
#include "server/step_plan.h"

namespace optd::server {

struct CommitContext {
  bool sync = false;          // N > 1 workers in SYNC mode
  int64_t timeout_ms = 0;     // the group's sync_timeout_ms
  const std::atomic<bool>* stopping = nullptr;
};

// REQUIRES: every stream of `pending` committed and its gradient is complete. Holds the group's
// mutex only for the engine step and the copies; never for network I/O. Resolves `pending` with
// the outcome as soon as the update is applied, before the weights are copied back (Note
// [Sending a step's weights while they are copied]); on failure the caller resolves it.
absl::StatusOr<StepOutcome> CommitStep(Group& group, const StepPlan& plan, PendingStep& pending,
                                       const CommitContext& context);

}  // namespace optd::server
