#include "server/pending_step.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace optd::server {

PendingStep::PendingStep(int worker, int64_t step, int streams, absl::Time deadline,
                         std::shared_ptr<GradientPool> pool)
    : worker_(worker),
      step_(step),
      streams_(streams),
      deadline_(deadline),
      pool_(std::move(pool)),
      gradient_(pool_->Take()),
      joined_(static_cast<size_t>(streams)),
      committed_(static_cast<size_t>(streams)),
      outcome_(absl::UnknownError("step not resolved")) {}

PendingStep::~PendingStep() {
  // Every stream that could still write into the buffers holds a reference: they are idle now.
  pool_->Return(std::move(gradient_));
}

absl::StatusOr<std::shared_ptr<PendingStep>> PendingStep::Join(Group& group, int worker,
                                                               int64_t step, int streams,
                                                               int index, absl::Duration timeout) {
  absl::MutexLock lock(&group.steps_mu());
  auto& pending = group.pending();
  auto it = pending.find({worker, step});
  std::shared_ptr<PendingStep> p;
  if (it == pending.end()) {
    p.reset(new PendingStep(worker, step, streams, absl::Now() + timeout, group.gradient_pool()));
    pending.emplace(std::make_pair(worker, step), p);
  } else {
    p = it->second;
  }
  absl::MutexLock plock(&p->mu_);
  if (streams != p->streams_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "begin.streams ", streams, " of step ", step, " (worker ", worker,
        ") differs from the step's other streams (", p->streams_, ")"));
  }
  if (p->joined_[static_cast<size_t>(index)]) {
    return absl::InvalidArgumentError(absl::StrCat("begin.stream_index ", index, " of step ",
                                                   step, " (worker ", worker,
                                                   ") is already open on another stream"));
  }
  p->joined_[static_cast<size_t>(index)] = true;
  return p;
}

absl::StatusOr<void*> PendingStep::Reserve(const Group& group, const CheckedChunk& c) {
  absl::MutexLock lock(&mu_);
  if (resolved_ && !outcome_.ok()) return outcome_.status();
  if (commits_ == streams_) {
    return absl::FailedPreconditionError(
        absl::StrCat("step ", step_, " received a chunk after all its streams committed"));
  }
  return gradient_->Reserve(group, c, step_);
}

void PendingStep::AddNonfinite(int64_t n) {
  absl::MutexLock lock(&mu_);
  nonfinite_ += n;
}

int64_t PendingStep::nonfinite() const {
  absl::MutexLock lock(&mu_);
  return nonfinite_;
}

absl::StatusOr<bool> PendingStep::Commit(int index) {
  absl::MutexLock lock(&mu_);
  if (resolved_ && !outcome_.ok()) return outcome_.status();
  if (!committed_[static_cast<size_t>(index)]) {
    committed_[static_cast<size_t>(index)] = true;
    ++commits_;
  }
  return commits_ == streams_;
}

absl::Status PendingStep::CheckComplete(const Group& group) {
  absl::MutexLock lock(&mu_);
  return gradient_->CheckComplete(group, step_);
}

void PendingStep::Forget(Group& group) {
  absl::MutexLock lock(&group.steps_mu());
  auto& pending = group.pending();
  auto it = pending.find({worker_, step_});
  if (it != pending.end() && it->second.get() == this) pending.erase(it);
}

void PendingStep::Resolve(Group& group, absl::StatusOr<StepOutcome> outcome) {
  {
    absl::MutexLock lock(&mu_);
    if (resolved_) return;
    resolved_ = true;
    outcome_ = std::move(outcome);
  }
  Forget(group);
}

void PendingStep::Fail(Group& group, const absl::Status& status) { Resolve(group, status); }

absl::StatusOr<StepOutcome> PendingStep::Await(Group& group, const std::atomic<bool>& stopping) {
  absl::Status failure;
  {
    absl::MutexLock lock(&mu_);
    while (!resolved_) {
      // Wakes every 100 ms to notice a server shutdown.
      absl::Time wake = absl::Now() + absl::Milliseconds(100);
      if (commits_ < streams_) wake = std::min(wake, deadline_);
      auto resolved = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return resolved_; };
      mu_.AwaitWithDeadline(absl::Condition(&resolved), wake);
      if (resolved_ || commits_ == streams_) continue;  // the last stream is applying it
      if (stopping.load()) {
        failure = absl::UnavailableError(absl::StrCat(
            "step ", step_, " (worker ", worker_,
            "): the server is shutting down before all its streams committed; nothing was "
            "applied"));
        break;
      }
      if (absl::Now() >= deadline_) {
        std::vector<int> missing;
        for (int i = 0; i < streams_; ++i) {
          if (!committed_[static_cast<size_t>(i)]) missing.push_back(i);
        }
        failure = absl::DeadlineExceededError(absl::StrCat(
            "step ", step_, " (worker ", worker_, "): stream(s) ", absl::StrJoin(missing, ", "),
            " of ", streams_, " did not commit in time (the group's sync_timeout_ms); nothing "
            "was applied"));
        break;
      }
    }
    if (failure.ok()) return outcome_;
  }
  Fail(group, failure);
  absl::MutexLock lock(&mu_);
  return outcome_;
}

}  // namespace optd::server
