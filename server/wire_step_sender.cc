#include "server/wire_step_sender.h"

#include <utility>

namespace optd::server {

StepWeightsSender::StepWeightsSender(WriteFn write, int depth) : write_(std::move(write)) {
  absl::MutexLock lock(&mu_);
  for (int i = 0; i < (depth < 1 ? 1 : depth); ++i) {
    storage_.push_back(std::make_unique<v1::StepResponse>());
    free_.push_back(storage_.back().get());
  }
  thread_ = std::thread([this] { Run(); });
}

StepWeightsSender::~StepWeightsSender() {
  Flush();
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

v1::StepResponse* StepWeightsSender::Next() {
  absl::MutexLock lock(&mu_);
  auto has_free = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !free_.empty(); };
  mu_.Await(absl::Condition(&has_free));
  v1::StepResponse* m = free_.front();
  free_.pop_front();
  return m;
}

bool StepWeightsSender::Submit(v1::StepResponse* m) {
  absl::MutexLock lock(&mu_);
  if (failed_) {
    free_.push_back(m);
    return false;
  }
  queue_.push_back(m);
  return true;
}

bool StepWeightsSender::Flush() {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return queue_.empty() && !writing_; };
  mu_.Await(absl::Condition(&idle));
  return !failed_;
}

void StepWeightsSender::Run() {
  for (;;) {
    v1::StepResponse* m = nullptr;
    bool skip = false;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stop_ and nothing left
      m = queue_.front();
      queue_.pop_front();
      writing_ = true;
      skip = failed_;
    }
    const bool ok = !skip && write_(*m);
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) failed_ = true;
    free_.push_back(m);
  }
}

}  // namespace optd::server
