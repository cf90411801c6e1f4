// The concurrent streams of one client call: a step spread over K streams, an upload or a pull
// spread over K calls.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "client/internal/blocking_stream.h"

namespace optd::client::internal {

// The first failure cancels every stream of the group: the other calls end at once instead of
// running to their own end, and a step's server undoes the whole step. The result is the first
// real failure: the first reported that is not the CANCELLED of a stream cancelled here.
// Thread safety: thread-safe.
class StreamGroup {
 public:
  explicit StreamGroup(std::vector<std::unique_ptr<BlockingStream>> streams)
      : streams_(std::move(streams)) {}

  size_t size() const { return streams_.size(); }
  BlockingStream& stream(size_t i) { return *streams_[i]; }

  // Records a failure of one of the streams and cancels them all.
  void Fail(absl::Status status);
  // Runs fn(i) for every stream i: stream 0 on the calling thread, the others on threads of
  // their own. Returns when every fn has returned.
  void Run(const std::function<void(size_t)>& fn);
  // OK, or the first real failure (see the class comment).
  absl::Status status() const;

 private:
  std::vector<std::unique_ptr<BlockingStream>> streams_;
  mutable absl::Mutex mu_;
  std::vector<absl::Status> failures_ ABSL_GUARDED_BY(mu_);  // in the order reported
};

}  // namespace optd::client::internal
