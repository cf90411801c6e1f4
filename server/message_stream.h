// Blocking streams over gRPC's callback reactors, for the raw (grpc::ByteBuffer) data-path
// methods.
//
// Note [Blocking streams over callback reactors]
// Step, UploadWeights, PullWeights, Subscribe, ExportState and ImportState are registered as raw
// callback methods, so that their messages reach the service as grpc::ByteBuffer slices and
// leave it as slices over the server's own memory (Note [Chunk messages without protobuf
// copies]). Their work blocks: an engine step, waiting for a step's other streams or a sync
// round's other workers, a slow client. Reactions must never block, so every call runs its
// handler on a thread of its own (as the sync API did), and the handler sees the call through
// MessageStream; the reactor only moves messages between gRPC and two short queues. The read
// queue lets gRPC receive the next messages while the handler works on one; the write queue
// lets the handler produce the next message while gRPC sends one, and bounds how much a slow
// client can make the server hold (a full queue blocks only that call's own thread).
//
// Note [Who deletes the reactor]
// The reactor has two owners: gRPC, until OnDone, and the handler's thread, until it has
// returned from Finish. Whichever lets go last deletes it (owners_). Deleting in OnDone alone
// was correct by gRPC's contract (OnDone comes after Finish was called), but the handler
// thread's last accesses (the virtual call to DoFinish, gRPC's inline Finish reading the
// reactor) were ordered before the delete only by gRPC's own atomics, which TSan does not see
// when gRPC is not instrumented (docs/testing.md). owners_ is an order TSan sees, and it keeps
// the reactor alive for whatever the handler's thread does after Finish.
//
// Note [gRPC's ordering of reactions, told to TSan]
// gRPC runs no reaction before the reactor's constructor has returned, and OnDone only after
// every other reaction has returned. It keeps that order with atomics inside its own library.
// In the TSan run (docs/testing.md) gRPC is not instrumented, so TSan does not see that order
// and reports the reactor's construction (its mutex) as racing with the first reaction and its
// destruction as racing with the last. StreamBridge states the order to TSan
// (TsanRelease/TsanAcquire; nothing in other builds) with two separate tags: "started"
// (constructor -> each reaction) and "retired" (each reaction's end -> OnDone). No edge is added
// between two reactions, which gRPC may run at the same time, nor between a reaction and the
// handler thread: races there are still reported.
#pragma once

#include <atomic>
#include <deque>
#include <functional>

#include "absl/base/attributes.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "grpcpp/support/status.h"

namespace optd::server {

// One call as its handler sees it. Thread safety: Read and Write from the handler's thread.
class MessageStream {
 public:
  virtual ~MessageStream() = default;
  // The next message; false at the end of the client's stream or once the call is cancelled.
  virtual bool Read(grpc::ByteBuffer* message) = 0;
  // Read that gives up at `deadline`: then false with *timed_out set (the stream goes on).
  virtual bool ReadUntil(grpc::ByteBuffer* message, absl::Time deadline, bool* timed_out) = 0;
  // Queues a message for sending; blocks while the write queue is full. False once the call is
  // broken (the client went away or cancelled); nothing more will be sent.
  virtual bool Write(grpc::ByteBuffer message) = 0;
  virtual bool cancelled() const = 0;
};

// A call's handler: runs on its own thread and returns the call's status.
using StreamHandler = std::function<grpc::Status(MessageStream*)>;

// The queues and their rules, shared by the three reactor shapes below.
// Thread safety: thread-safe.
class StreamBridge : public MessageStream {
 public:
  static constexpr size_t kMaxQueuedReads = 4;
  static constexpr size_t kMaxQueuedWrites = 4;

  bool Read(grpc::ByteBuffer* message) override;
  bool ReadUntil(grpc::ByteBuffer* message, absl::Time deadline, bool* timed_out) override;
  bool Write(grpc::ByteBuffer message) override;
  bool cancelled() const override;

 protected:
  StreamBridge(bool reads, bool writes) : reads_(reads), writes_(writes) {}
  ~StreamBridge() override = default;

  // Starts the handler thread (and the first read). Called once the reactor is set up.
  void Start(StreamHandler handler);
  // From the reactor's reactions.
  void ReadDone(bool ok);
  void WriteDone(bool ok);
  void Cancelled();
  // From OnDone: true when the caller is to delete the reactor now (Note [Who deletes the
  // reactor]).
  [[nodiscard]] bool Done();

  virtual void DoStartRead(grpc::ByteBuffer* into) = 0;
  virtual void DoStartWrite(const grpc::ByteBuffer* message) = 0;
  virtual void DoFinish(const grpc::Status& status) = 0;

 private:
  // Waits until every queued message was written (or the call broke), then finishes the call.
  void FinishCall(const grpc::Status& status);
  // Lets go of one of the two owners; true for the last one (Note [Who deletes the reactor]).
  [[nodiscard]] bool LetGo();

  class Reaction;  // Note [gRPC's ordering of reactions, told to TSan]
  char tsan_started_tag_ = 0;  // only their addresses are used
  char tsan_retired_tag_ = 0;
  std::atomic<int> owners_{2};  // gRPC until OnDone, the handler's thread until after Finish

  const bool reads_;
  const bool writes_;
  mutable absl::Mutex mu_;
  grpc::ByteBuffer read_buffer_;  // gRPC reads into this while read_pending_
  bool read_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<grpc::ByteBuffer> read_queue_ ABSL_GUARDED_BY(mu_);
  // Front element is being written while write_pending_; deque keeps its address stable.
  std::deque<grpc::ByteBuffer> write_queue_ ABSL_GUARDED_BY(mu_);
  bool write_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

// Bidirectional stream (Step).
class BidiStreamCall final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                             public StreamBridge {
 public:
  explicit BidiStreamCall(StreamHandler handler) : StreamBridge(true, true) {
    Start(std::move(handler));
  }
  void OnReadDone(bool ok) override { ReadDone(ok); }
  void OnWriteDone(bool ok) override { WriteDone(ok); }
  void OnCancel() override { Cancelled(); }
  void OnDone() override {
    if (Done()) delete this;
  }

 private:
  // Not inlined: GCC would inline gRPC's StartRead/StartWrite/Finish into the adjustor thunks
  // StreamBridge calls these through, which have no line information, and TSan reports would
  // then name these forwarders instead of the gRPC code that made the access.
  ABSL_ATTRIBUTE_NOINLINE void DoStartRead(grpc::ByteBuffer* into) override { StartRead(into); }
  ABSL_ATTRIBUTE_NOINLINE void DoStartWrite(const grpc::ByteBuffer* m) override {
    StartWrite(m);
  }
  ABSL_ATTRIBUTE_NOINLINE void DoFinish(const grpc::Status& status) override { Finish(status); }
};

// Client stream, one response (UploadWeights, ImportState): the handler fills `response`.
class ReadStreamCall final : public grpc::ServerReadReactor<grpc::ByteBuffer>,
                             public StreamBridge {
 public:
  explicit ReadStreamCall(StreamHandler handler) : StreamBridge(true, false) {
    Start(std::move(handler));
  }
  void OnReadDone(bool ok) override { ReadDone(ok); }
  void OnCancel() override { Cancelled(); }
  void OnDone() override {
    if (Done()) delete this;
  }

 private:
  // Not inlined: see BidiStreamCall.
  ABSL_ATTRIBUTE_NOINLINE void DoStartRead(grpc::ByteBuffer* into) override { StartRead(into); }
  void DoStartWrite(const grpc::ByteBuffer*) override {}
  ABSL_ATTRIBUTE_NOINLINE void DoFinish(const grpc::Status& status) override { Finish(status); }
};

// One request, server stream (PullWeights, Subscribe, ExportState).
class WriteStreamCall final : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                              public StreamBridge {
 public:
  explicit WriteStreamCall(StreamHandler handler) : StreamBridge(false, true) {
    Start(std::move(handler));
  }
  void OnWriteDone(bool ok) override { WriteDone(ok); }
  void OnCancel() override { Cancelled(); }
  void OnDone() override {
    if (Done()) delete this;
  }

 private:
  // Not inlined: see BidiStreamCall.
  void DoStartRead(grpc::ByteBuffer*) override {}
  ABSL_ATTRIBUTE_NOINLINE void DoStartWrite(const grpc::ByteBuffer* m) override {
    StartWrite(m);
  }
  ABSL_ATTRIBUTE_NOINLINE void DoFinish(const grpc::Status& status) override { Finish(status); }
};

}  // namespace optd::server
