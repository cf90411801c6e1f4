// Sends a streamed step's weight messages from a thread of its own.
//
// Note [Overlapping a step's directions]
// With the sync API a Write blocks the handler until gRPC has serialized the message (a copy of
// up to chunk_bytes) and taken it into the transport, and while it waits no gradient is read or
// applied. This sender lets the handler fill message k+1 (read gradient, journal, update, copy
// the new weights out under the group lock) while message k is serialized and written. gRPC
// allows one Read and one Write at a time on a stream from different threads. Messages are
// written in submission order; after the first failed write nothing more is written (as the
// handler itself would have stopped), and every later Submit/Flush reports the failure. At most
// `depth` messages exist, reused from one chunk to the next (bounded staging, no fresh pages).
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "optd/v1/optd.pb.h"

namespace optd::server {

// Thread safety: one producer thread calls Next/Submit/Flush; the sender's own thread writes.
class StepWeightsSender {
 public:
  // Writes one message; false when the client went away. Called on the sender's thread.
  using WriteFn = std::function<bool(const v1::StepResponse&)>;

  explicit StepWeightsSender(WriteFn write, int depth = 2);
  // Writes what is queued (Flush), then stops the thread.
  ~StepWeightsSender();
  StepWeightsSender(const StepWeightsSender&) = delete;
  StepWeightsSender& operator=(const StepWeightsSender&) = delete;

  // A message to fill; blocks while all `depth` messages are queued or being written. Its
  // fields hold whatever the previous use left there (strings keep their capacity).
  v1::StepResponse* Next();
  // Queues `m` (from Next) for writing. False, without queueing, once a write has failed.
  bool Submit(v1::StepResponse* m);
  // Waits until everything queued is written; false when a write failed.
  bool Flush();

 private:
  void Run();

  const WriteFn write_;
  std::vector<std::unique_ptr<v1::StepResponse>> storage_;
  absl::Mutex mu_;
  std::deque<v1::StepResponse*> free_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::StepResponse*> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

}  // namespace optd::server
