// A step of one worker while its gradient is being gathered: the streams that carry it (one, or
// K concurrent ones), the gradient buffers they fill, and the outcome they all report.
//
// Note [A step over K streams]
// A trainer may spread one step over K streams on K connections (StepBegin.streams), so that
// the bytes move on several cores and TCP connections at once. Each stream joins the PendingStep
// of (worker, step); chunks from any of them land in one GradientSet; the stream that commits
// last applies the step (or takes it to the sync round) and resolves the PendingStep; the others
// wait for that outcome. Any failure (a bad chunk, a stream that ends without its commit, a
// missing stream past the group's sync_timeout_ms) fails the PendingStep: nothing was applied,
// and every stream reports the failure. Because the gradient is applied only once complete,
// there is nothing to undo.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/chunk_checks.h"
#include "server/gradient_set.h"
#include "server/group.h"
#include "server/interval_set.h"

namespace optd::server {

// What every stream of a step reports.
struct StepOutcome {
  int64_t version = 0;
  int64_t nonfinite = 0;   // NaN/Inf gradient elements of the update, as the engine counted them
  bool duplicate = false;  // a retry of a step already applied: nothing was applied again
  // The weights to return (touched tensors, or all); null when none are asked for.
  std::shared_ptr<const WeightSnapshot> weights;
};

// Thread safety: thread-safe.
class PendingStep {
 public:
  // Joins (or opens) the pending step (worker, step) of `group` as stream `index` of `streams`,
  // for attempt `attempt` (StepBegin.attempt: a failed attempt is replaced by a join with
  // another non-zero value). InvalidArgument when the stream count differs from the other
  // streams' or the index is out of range or taken. `timeout` bounds the wait for the others.
  static absl::StatusOr<std::shared_ptr<PendingStep>> Join(Group& group, int worker, int64_t step,
                                                           int streams, int index,
                                                           absl::Duration timeout,
                                                           v1::WeightsReturn weights,
                                                           uint64_t attempt);
  ~PendingStep();

  int worker() const { return worker_; }
  int64_t step() const { return step_; }

  // Accepts chunk `c`: returns where its bytes go (write them without holding anything). Fails
  // with the step's failure once it failed.
  absl::StatusOr<void*> Reserve(const Group& group, const CheckedChunk& c);
  // A colocated step's range will have its new weights written at bytes [offset, offset + bytes)
  // of region buffer `buffer`: InvalidArgument when that overlaps another range's destination
  // in this step (on any of its streams), so that no two writes race on the same bytes.
  absl::Status ReserveWeightsDestination(int buffer, int64_t offset, int64_t bytes);
  // A whole-tensor chunk read in place from a region (GradientSet::AttachInPlace).
  absl::Status AttachInPlace(const Group& group, const CheckedChunk& c, const void* data,
                             core::MemoryKind kind);
  // Tensor `tensor`'s new weights go to `data` in a region, written by the engine as the step
  // commits (CommitStep), not through the snapshot.
  struct InPlaceWeights {
    int tensor = 0;
    void* data = nullptr;
    core::MemoryKind kind = core::MemoryKind::kHost;
  };
  void AddInPlaceWeights(const InPlaceWeights& w);
  std::vector<InPlaceWeights> in_place_weights() const;

  // Stream `index` committed. True when every stream has: the caller then calls Complete() and
  // Resolve(). The step's failure once it failed.
  absl::StatusOr<bool> Commit(int index);
  // After the last commit: InvalidArgument when a touched tensor is incomplete or nothing came.
  absl::Status CheckComplete(const Group& group);
  // The gathered gradient; valid after the last commit, until Resolve.
  const GradientSet& gradient() const { return *gradient_; }
  // What the step's streams asked back, together: ALL if any stream asked for ALL, else UPDATED
  // if any asked for UPDATED, else NONE. Each stream then sends what it asked for itself.
  v1::WeightsReturn weights_wanted() const;

  // Ends the step with `outcome` (or its error) for every stream, and forgets it in the group.
  void Resolve(Group& group, absl::StatusOr<StepOutcome> outcome);
  // Fails the step (the first failure wins) and forgets it in the group.
  void Fail(Group& group, const absl::Status& status);
  // Waits for the outcome. Fails the step with DeadlineExceeded naming the missing streams when
  // they did not all commit in time, with Unavailable when `stopping` becomes true.
  absl::StatusOr<StepOutcome> Await(Group& group, const std::atomic<bool>& stopping);

 private:
  PendingStep(int worker, int64_t step, int streams, absl::Time deadline, uint64_t attempt,
              std::shared_ptr<GradientPool> pool);
  void Forget(Group& group);

  const int worker_;
  const int64_t step_;
  const int streams_;
  const absl::Time deadline_;
  const uint64_t attempt_;
  const std::shared_ptr<GradientPool> pool_;
  mutable absl::Mutex mu_;
  std::unique_ptr<GradientSet> gradient_;  // reserved ranges are written outside mu_
  std::vector<bool> joined_ ABSL_GUARDED_BY(mu_);  // Join reads these under steps_mu and mu_
  std::vector<bool> committed_ ABSL_GUARDED_BY(mu_);
  int joins_ ABSL_GUARDED_BY(mu_) = 0;
  v1::WeightsReturn weights_wanted_ ABSL_GUARDED_BY(mu_) = v1::NONE;
  int commits_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int, IntervalSet> weights_destinations_ ABSL_GUARDED_BY(mu_);  // by region buffer
  std::vector<InPlaceWeights> in_place_weights_ ABSL_GUARDED_BY(mu_);
  bool resolved_ ABSL_GUARDED_BY(mu_) = false;
  absl::StatusOr<StepOutcome> outcome_ ABSL_GUARDED_BY(mu_);
};

}  // namespace optd::server
