#include "client/internal/stream_group.h"

#include <thread>
#include <utility>

namespace optd::client::internal {

void StreamGroup::Fail(absl::Status status) {
  bool first = false;
  {
    absl::MutexLock lock(&mu_);
    first = failures_.empty();
    failures_.push_back(std::move(status));
  }
  if (first) {
    for (auto& s : streams_) s->Cancel();
  }
}

void StreamGroup::Run(const std::function<void(size_t)>& fn) {
  std::vector<std::thread> threads;
  threads.reserve(streams_.size());
  for (size_t i = 1; i < streams_.size(); ++i) threads.emplace_back(fn, i);
  if (!streams_.empty()) fn(0);
  for (std::thread& t : threads) t.join();
}

absl::Status StreamGroup::status() const {
  absl::MutexLock lock(&mu_);
  for (const absl::Status& s : failures_) {
    if (s.code() != absl::StatusCode::kCancelled) return s;
  }
  return failures_.empty() ? absl::OkStatus() : failures_.front();
}

}  // namespace optd::client::internal
