#include "server/step_commit.h"

#include <vector>

#include "absl/strings/str_cat.h"

#include "server/sync_rendezvous.h"

namespace optd::server {
namespace {

// The tensors whose weights go back: the touched ones (UPDATED), all (ALL), none (NONE), for
// what the step's streams asked together.
std::vector<int> ReturnedTensors(const Group& group, v1::WeightsReturn wanted,
                                 const std::vector<int>& touched) {
  if (wanted == v1::NONE) return {};
  if (wanted == v1::UPDATED) return touched;
  std::vector<int> all(static_cast<size_t>(group.num_tensors()));
  for (int t = 0; t < group.num_tensors(); ++t) all[static_cast<size_t>(t)] = t;
  return all;
}

}  // namespace

absl::StatusOr<StepOutcome> CommitStep(Group& group, const StepPlan& plan, PendingStep& pending,
                                       const CommitContext& context) {
  const GradientSet& gradient = pending.gradient();
  const std::vector<int> touched = gradient.Touched();
  // Tensors whose new weights the engine writes straight into a region need no snapshot.
  const std::vector<PendingStep::InPlaceWeights> in_place = pending.in_place_weights();
  std::vector<int> returned = ReturnedTensors(group, pending.weights_wanted(), touched);
  for (const PendingStep::InPlaceWeights& w : in_place) std::erase(returned, w.tensor);
  StepOutcome outcome;
  if (context.sync) {
    auto result = JoinSyncRound(group, plan, gradient, context.timeout_ms,
                                *context.stopping);
    if (!result.ok()) return result.status();
    outcome.version = result->version;
    outcome.nonfinite = result->nonfinite;
    if (!returned.empty()) {
      // This worker has not begun its next step, so the round's version is still current.
      absl::MutexLock lock(&group.mu());
      auto snap = group.Snapshot(returned);
      if (!snap.ok()) return snap.status();
      outcome.weights = *std::move(snap);
    }
    return outcome;
  }

  absl::MutexLock lock(&group.mu());
  GroupRecord& record = group.record();
  int64_t& last = record.worker_steps[static_cast<size_t>(plan.worker)];
  if (plan.step <= last) {
    // A retry that raced the original past the begin check: acknowledged, not applied again.
    outcome.version = record.version;
    outcome.duplicate = true;
    return outcome;
  }
  const std::vector<core::TensorGradient> grads = gradient.Gradients(group);
  if (absl::Status s = group.params().Step(grads, plan.args); !s.ok()) return s;
  // Note [Steps read in place] (step_runner.cc): the new weights, straight into the region.
  for (const PendingStep::InPlaceWeights& w : in_place) {
    const core::TensorSpec& spec = group.tensor(w.tensor);
    absl::Status s = group.params().ReadParam(
        w.tensor, 0, core::TensorView{w.data, spec.dtype, spec.numel(), w.kind});
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("step ", plan.step, " was applied but its new "
                                                 "weights of tensor '", spec.name,
                                                 "' could not be written into the region: ",
                                                 s.message()));
    }
  }
  record.version += 1;
  last = plan.step;
  outcome.version = record.version;
  outcome.nonfinite = group.params().LastNonfiniteGradientElements();
  group.metrics().AddNonfiniteGradientElements(outcome.nonfinite);
  group.UpdateByteMetrics();
  // One copy serves both the subscribers (every tensor) and the streams (what they asked for).
  const bool publish = group.has_subscribers();
  std::shared_ptr<WeightSnapshot> snap;
  if (publish || !returned.empty()) {
    snap = group.BeginSnapshot(publish ? std::vector<int>{} : returned);
    outcome.weights = snap;
  }
  // The other streams start sending as the copy proceeds.
  pending.Resolve(group, outcome);
  if (snap != nullptr) {
    if (absl::Status s = group.FillSnapshot(*snap); !s.ok()) return s;
    if (publish) group.Publish(snap);
  }
  return outcome;
}

}  // namespace optd::server
