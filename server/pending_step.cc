#include "server/pending_step.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace optd::server {

PendingStep::PendingStep(int worker, int64_t step, int streams, absl::Time deadline,
                         uint64_t attempt, std::shared_ptr<GradientPool> pool)
    : worker_(worker),
      step_(step),
      streams_(streams),
      deadline_(deadline),
      attempt_(attempt),
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
                                                               int index, absl::Duration timeout,
                                                               v1::WeightsReturn weights,
                                                               uint64_t attempt) {
  absl::MutexLock lock(&group.steps_mu());
  auto& pending = group.pending();
  const absl::Time now = absl::Now();
  // Failed steps whose other streams never came (Note [A failed step stays to fail its
  // latecomers]) are dropped once their deadline passed.
  for (auto it = pending.begin(); it != pending.end();) {
    PendingStep& old = *it->second;
    absl::MutexLock plock(&old.mu_);
    it = old.resolved_ && old.deadline_ < now ? pending.erase(it) : std::next(it);
  }
  auto it = pending.find({worker, step});
  if (it != pending.end() && attempt != 0) {
    // Note [A failed step stays to fail its latecomers]: but not a retry, which carries another
    // attempt value; the failed attempt is forgotten and the retry starts afresh.
    bool replace = false;
    {
      PendingStep& old = *it->second;
      absl::MutexLock plock(&old.mu_);
      replace = old.resolved_ && !old.outcome_.ok() && old.attempt_ != attempt;
    }
    if (replace) {
      pending.erase(it);
      it = pending.end();
    }
  }
  std::shared_ptr<PendingStep> p;
  if (it == pending.end()) {
    p.reset(new PendingStep(worker, step, streams, now + timeout, attempt,
                            group.gradient_pool()));
    it = pending.emplace(std::make_pair(worker, step), p).first;
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
  ++p->joins_;
  if (weights == v1::ALL || (weights == v1::UPDATED && p->weights_wanted_ == v1::NONE)) {
    p->weights_wanted_ = weights;
  }
  if (p->resolved_) {
    // A latecomer of a step that already failed: it fails the same way, at once.
    if (p->joins_ == p->streams_) pending.erase(it);
    return p->outcome_.status();
  }
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

absl::Status PendingStep::AttachInPlace(const Group& group, const CheckedChunk& c,
                                       const void* data, core::MemoryKind kind) {
  absl::MutexLock lock(&mu_);
  if (resolved_ && !outcome_.ok()) return outcome_.status();
  if (commits_ == streams_) {
    return absl::FailedPreconditionError(
        absl::StrCat("step ", step_, " received a chunk after all its streams committed"));
  }
  return gradient_->AttachInPlace(group, c, data, kind, step_);
}

void PendingStep::AddInPlaceWeights(const InPlaceWeights& w) {
  absl::MutexLock lock(&mu_);
  in_place_weights_.push_back(w);
}

std::vector<PendingStep::InPlaceWeights> PendingStep::in_place_weights() const {
  absl::MutexLock lock(&mu_);
  return in_place_weights_;
}

absl::Status PendingStep::ReserveWeightsDestination(int buffer, int64_t offset, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (!weights_destinations_[buffer].InsertDisjoint(offset, offset + bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "region_gradient.weights_buffer_offset ", offset, " (", bytes, " bytes in buffer ", buffer,
        ") overlaps the weights destination of another range of step ", step_));
  }
  return absl::OkStatus();
}

v1::WeightsReturn PendingStep::weights_wanted() const {
  absl::MutexLock lock(&mu_);
  return weights_wanted_;
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
  bool forget = false;
  {
    absl::MutexLock lock(&mu_);
    if (resolved_) return;
    resolved_ = true;
    outcome_ = std::move(outcome);
    // Note [A failed step stays to fail its latecomers]
    // A stream that fails may do so before its sibling streams have even begun. Were the failed
    // step forgotten at once, a late sibling would open a fresh one and wait out the timeout
    // for streams that already gave up. So a failed step stays until all its streams have
    // joined (each latecomer fails at once) or its deadline has passed. A retry is not a
    // latecomer: it carries another StepBegin.attempt, and Join replaces the failed step.
    forget = outcome_.ok() || joins_ == streams_;
  }
  if (forget) Forget(group);
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
