// A blocking stream of raw messages (grpc::ByteBuffer) over gRPC's public callback API.
//
// Note [Blocking stream over a reactor]
// The data path needs raw ByteBuffer messages both ways: the request's payload is a slice over
// the caller's memory (wire.h) and the response's is copied from gRPC's slices straight into
// the caller's buffers (DecodeStepResponse). gRPC 1.51's public API offers raw messages only
// through the generic stub, whose streaming calls are asynchronous: a ClientBidiReactor gets a
// callback when each read or write completes. Client-streaming (UploadWeights) and
// server-streaming (PullWeights, Subscribe) methods are called as bidi streams: on the wire an
// HTTP/2 stream is the same whatever the method's declared shape.
//
// The client's callers want plain blocking calls on their own threads, so this class adapts
// the reactor:
// - Write() queues the message and returns; it blocks only while `max_pending_writes` messages
//   are queued or in flight (each holds a slice over caller memory, so the bound is on how far
//   the writer runs ahead, not on memory). The reactor starts the next queued write from
//   OnWriteDone, so a stream of writes flows without a thread hop per message.
// - Reads run ahead: the reactor keeps one read outstanding until `max_ready_reads` messages
//   wait to be taken, and Read() blocks until one is there. Taking a received ByteBuffer moves
//   slice references, never bytes.
// - Finish() reads and drops what is left (gRPC delivers the status only after every message
//   has been read), then blocks until OnDone and returns the status.
// Reactions only move messages between queues and start the next operation; they never block
// (a mutex held for a few instructions) and never touch the caller's buffers.
//
// Reads and writes are started from the caller's threads (outside reactions), which the API
// allows under a hold: one hold is added before StartCall and removed in Finish(), once the
// caller will start nothing more.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/client_context.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/client_callback.h"
#include "grpcpp/support/status.h"

namespace optd::client::internal {

// Thread safety: Write()/WritesDone() from one thread, Read() from one thread (it may be
// another), Finish() once, after both are done; Cancel() from any thread at any time.
class BlockingStream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  static constexpr int kMaxPendingWrites = 4;
  static constexpr int kMaxReadyReads = 4;

  // Starts a call of `method` ("/optd.v1.Optimizer/Step") on `stub`. timeout_ms > 0 sets the
  // call's deadline; a non-empty `authorization` is sent as the call's "authorization"
  // metadata. `stub` must outlive the returned stream.
  static std::unique_ptr<BlockingStream> Start(grpc::GenericStub* stub, std::string method,
                                               int64_t timeout_ms,
                                               const std::string& authorization);
  // Cancels the call if Finish() was not called, then waits for gRPC to let go of it.
  ~BlockingStream() override;
  BlockingStream(const BlockingStream&) = delete;
  BlockingStream& operator=(const BlockingStream&) = delete;

  // Queues `message`, blocking while kMaxPendingWrites are pending. The message's slices must
  // stay valid until Finish() returns. False once the stream is broken (Finish() says why);
  // the message is then dropped.
  bool Write(grpc::ByteBuffer message);
  // No more writes; sent after the queued ones.
  void WritesDone();
  // Blocks until a message arrived (true) or the stream has no more (false).
  bool Read(grpc::ByteBuffer* message);
  // Drops unread messages, waits for the end of the call and returns its status.
  // REQUIRES: no Write() or Read() in progress or after.
  grpc::Status Finish();
  // Ends the call early (its status becomes CANCELLED unless it already had one). Pending
  // Write() and Read() calls return false.
  void Cancel() { context_.TryCancel(); }

  // Reactions (gRPC's threads).
  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  explicit BlockingStream(std::string method) : method_(std::move(method)) {}
  void StartNextWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  grpc::ClientContext context_;
  const std::string method_;  // gRPC refers to the name for the call's lifetime

  absl::Mutex mu_;
  // Front: the write in flight when write_in_flight_. Slices refer to caller memory.
  std::deque<grpc::ByteBuffer> writes_ ABSL_GUARDED_BY(mu_);
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_wanted_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_started_ ABSL_GUARDED_BY(mu_) = false;

  grpc::ByteBuffer read_slot_;  // target of the outstanding read
  std::deque<grpc::ByteBuffer> ready_ ABSL_GUARDED_BY(mu_);
  bool read_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_ended_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;  // Finish(): drop messages as they come

  bool finish_called_ = false;  // caller's thread only
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  char tsan_started_tag_ = 0;  // only its address is used (blocking_stream.cc)
};

}  // namespace optd::client::internal
