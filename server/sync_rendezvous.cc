#include "server/sync_rendezvous.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "server/sync_round.h"
#include "server/widen.h"

namespace optd::server {
namespace {

// This worker's gradient widened to fp32 (averaging sums in fp32).
WorkerGradients Widen(const Group& group, const StepPlan& plan, const GradientSet& gradient) {
  WorkerGradients mine;
  mine.tensors = gradient.Touched();
  mine.lr = plan.args.lr;
  for (int t : mine.tensors) {
    std::vector<float> g(static_cast<size_t>(group.tensor(t).numel()));
    WidenToFloat(gradient.dtype(t), gradient.data(t), group.tensor(t).numel(), g.data());
    mine.grads.push_back(std::move(g));
  }
  return mine;
}

void EndRound(Group& group, const std::shared_ptr<SyncRound>& round)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(group.sync_mu()) {
  round->done = true;
  for (auto& w : round->workers) w.reset();
  group.metrics().SetAccumulationBytes(0);
  group.metrics().SetWorkersPending(0);
  if (group.round() == round) group.round().reset();
}

}  // namespace

absl::StatusOr<SyncResult> JoinSyncRound(Group& group, const StepPlan& plan,
                                         const GradientSet& gradient, int64_t timeout_ms,
                                         const std::atomic<bool>& stopping) {
  const int num_workers = [&] {
    absl::MutexLock lock(&group.mu());
    return group.record().num_workers;
  }();
  WorkerGradients mine = Widen(group, plan, gradient);
  std::shared_ptr<SyncRound> round;
  bool apply = false;
  {
    absl::MutexLock lock(&group.sync_mu());
    std::shared_ptr<SyncRound>& current = group.round();
    if (current != nullptr && !current->done && current->step != plan.step) {
      return absl::FailedPreconditionError(absl::StrCat(
          "begin.step ", plan.step, " of worker ", plan.worker, ": group '", group.name(),
          "' is collecting step ", current->step));
    }
    if (current == nullptr || current->done) {
      current = std::make_shared<SyncRound>(plan.step, num_workers,
                                            absl::Now() + absl::Milliseconds(timeout_ms));
    }
    round = current;
    if (round->workers[static_cast<size_t>(plan.worker)].has_value()) {
      return absl::FailedPreconditionError(absl::StrCat("worker ", plan.worker,
                                                        " already pushed step ", plan.step,
                                                        " of group '", group.name(), "'"));
    }
    round->workers[static_cast<size_t>(plan.worker)] = std::move(mine);
    round->arrived += 1;
    group.metrics().SetAccumulationBytes(round->accumulated_bytes());
    group.metrics().SetWorkersPending(num_workers - round->arrived);  // still missing
    if (round->arrived == num_workers) {
      round->applying = true;
      apply = true;
    } else {
      auto finished = [&round]() { return round->done; };
      auto finished_or_applying = [&round]() { return round->done || round->applying; };
      // Wakes every 100 ms to notice a server shutdown: a SIGTERM should not wait out a long
      // sync_timeout_ms for workers that will not come.
      bool stopping_now = false;
      while (!group.sync_mu().AwaitWithDeadline(
          absl::Condition(&finished_or_applying),
          std::min(round->deadline, absl::Now() + absl::Milliseconds(100)))) {
        if (absl::Now() >= round->deadline) break;
        if (stopping.load()) {
          stopping_now = true;
          break;
        }
      }
      if (!round->done && !round->applying) {
        std::vector<int> missing;
        for (int w = 0; w < num_workers; ++w) {
          if (!round->workers[static_cast<size_t>(w)].has_value()) missing.push_back(w);
        }
        round->result =
            stopping_now
                ? absl::UnavailableError(absl::StrCat(
                      "sync step ", plan.step, " of group '", group.name(),
                      "': the server is shutting down while worker(s) ",
                      absl::StrJoin(missing, ", "), " had not pushed; no update was applied"))
                : absl::DeadlineExceededError(absl::StrCat(
                      "sync step ", plan.step, " of group '", group.name(), "': worker(s) ",
                      absl::StrJoin(missing, ", "), " did not push within sync_timeout_ms=",
                      timeout_ms, "; no update was applied"));
        EndRound(group, round);
      }
      group.sync_mu().Await(absl::Condition(&finished));
    }
  }

  if (apply) {
    WorkerGradients* avg = nullptr;
    absl::Status result = AverageInto(round.get(), &avg);
    int64_t version = 0;
    int64_t nonfinite = 0;
    if (result.ok()) {
      std::vector<core::TensorGradient> grads;
      for (size_t i = 0; i < avg->tensors.size(); ++i) {
        grads.push_back(core::TensorGradient{
            avg->tensors[i],
            core::ConstTensorView{avg->grads[i].data(), core::DType::kFloat32,
                                  static_cast<int64_t>(avg->grads[i].size()),
                                  core::MemoryKind::kHost}});
      }
      core::StepArgs args;
      args.lr = avg->lr;
      absl::MutexLock lock(&group.mu());
      result = group.params().Step(grads, args);
      if (result.ok()) {
        GroupRecord& record = group.record();
        record.version += 1;
        for (auto& s : record.worker_steps) s = plan.step;
        version = record.version;
        nonfinite = group.params().LastNonfiniteGradientElements();
        group.metrics().AddNonfiniteGradientElements(nonfinite);
        group.UpdateByteMetrics();
        group.Publish();
      }
    }
    absl::MutexLock lock(&group.sync_mu());
    round->result = result;
    round->version_after = version;
    round->nonfinite = nonfinite;
    EndRound(group, round);
  }
  absl::MutexLock lock(&group.sync_mu());
  if (!round->result.ok()) return round->result;
  return SyncResult{round->version_after, round->nonfinite};
}

}  // namespace optd::server
