#include "client/internal/blocking_stream.h"

#include <chrono>
#include <utility>

#include "absl/base/config.h"

#ifdef ABSL_HAVE_THREAD_SANITIZER
#include <sanitizer/tsan_interface.h>
#endif

namespace optd::client::internal {
namespace {

// Note [gRPC's ordering of reactions, told to TSan]
// gRPC runs no reaction before StartCall. It keeps that order with atomics inside its own
// library, which TSan does not see when gRPC is not instrumented (the TSan run,
// docs/testing.md): it then reports the stream's construction (its mutex) as racing with the
// first reaction. Start() releases a tag after constructing and each reaction acquires it
// (nothing in other builds). Reactions get no ordering between each other from this.
void TsanRelease([[maybe_unused]] void* tag) {
#ifdef ABSL_HAVE_THREAD_SANITIZER
  __tsan_release(tag);
#endif
}

void TsanAcquire([[maybe_unused]] void* tag) {
#ifdef ABSL_HAVE_THREAD_SANITIZER
  __tsan_acquire(tag);
#endif
}

}  // namespace

// Start*() calls are decided under mu_ (so that exactly one read and one write is ever
// outstanding) and issued after releasing it, so that no lock is held across a call into gRPC.

std::unique_ptr<BlockingStream> BlockingStream::Start(grpc::GenericStub* stub, std::string method,
                                                      int64_t timeout_ms,
                                                      const std::string& authorization) {
  std::unique_ptr<BlockingStream> stream(new BlockingStream(std::move(method)));
  if (timeout_ms > 0) {
    stream->context_.set_deadline(std::chrono::system_clock::now() +
                                  std::chrono::milliseconds(timeout_ms));
  }
  if (!authorization.empty()) stream->context_.AddMetadata("authorization", authorization);
  TsanRelease(&stream->tsan_started_tag_);  // Note [gRPC's ordering of reactions, told to TSan]
  stub->PrepareBidiStreamingCall(&stream->context_, stream->method_, grpc::StubOptions(),
                                 stream.get());
  stream->AddHold();  // removed by Finish(): reads and writes start outside reactions
  {
    absl::MutexLock lock(&stream->mu_);
    stream->read_in_flight_ = true;
  }
  stream->StartRead(&stream->read_slot_);
  stream->StartCall();
  return stream;
}

BlockingStream::~BlockingStream() {
  if (!finish_called_) {
    Cancel();
    Finish();
  }
}

bool BlockingStream::Write(grpc::ByteBuffer message) {
  const grpc::ByteBuffer* start = nullptr;
  {
    absl::MutexLock lock(&mu_);
    auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return writes_failed_ || static_cast<int>(writes_.size()) < kMaxPendingWrites;
    };
    mu_.Await(absl::Condition(&room));
    if (writes_failed_) return false;
    writes_.push_back(std::move(message));
    if (!write_in_flight_) {
      write_in_flight_ = true;
      start = &writes_.front();  // deque: stays put while others are pushed behind it
    }
  }
  if (start != nullptr) StartWrite(start);
  return true;
}

void BlockingStream::WritesDone() {
  {
    absl::MutexLock lock(&mu_);
    if (writes_failed_ || writes_done_wanted_) return;
    writes_done_wanted_ = true;
    if (write_in_flight_) return;  // OnWriteDone sends it after the last queued write
    writes_done_started_ = true;
  }
  StartWritesDone();
}

void BlockingStream::OnWriteDone(bool ok) {
  TsanAcquire(&tsan_started_tag_);
  const grpc::ByteBuffer* next = nullptr;
  bool writes_done = false;
  {
    absl::MutexLock lock(&mu_);
    writes_.pop_front();
    if (!ok) {
      // The call is broken (cancelled, or the server ended it): nothing more will be sent.
      writes_failed_ = true;
      writes_.clear();
      write_in_flight_ = false;
      return;
    }
    if (!writes_.empty()) {
      next = &writes_.front();
    } else {
      write_in_flight_ = false;
      if (writes_done_wanted_ && !writes_done_started_) {
        writes_done_started_ = true;
        writes_done = true;
      }
    }
  }
  if (next != nullptr) StartWrite(next);
  if (writes_done) StartWritesDone();
}

bool BlockingStream::Read(grpc::ByteBuffer* message) {
  // Frees the caller's previous message (megabytes of slices) before taking the lock, so that
  // the reactor never waits for a free.
  message->Clear();
  bool start = false;
  {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !ready_.empty() || reads_ended_;
    };
    mu_.Await(absl::Condition(&ready));
    if (ready_.empty()) return false;
    message->Swap(&ready_.front());
    ready_.pop_front();
    if (!read_in_flight_ && !reads_ended_) {  // the reactor paused on a full queue
      read_in_flight_ = true;
      start = true;
    }
  }
  if (start) StartRead(&read_slot_);
  return true;
}

void BlockingStream::OnReadDone(bool ok) {
  TsanAcquire(&tsan_started_tag_);
  bool again = false;
  {
    absl::MutexLock lock(&mu_);
    if (!ok) {
      read_in_flight_ = false;
      reads_ended_ = true;
      return;
    }
    if (draining_) {
      again = true;  // read_slot_ is overwritten by the next read
    } else {
      ready_.emplace_back();
      ready_.back().Swap(&read_slot_);
      again = static_cast<int>(ready_.size()) < kMaxReadyReads;
    }
    read_in_flight_ = again;
  }
  if (again) StartRead(&read_slot_);
}

grpc::Status BlockingStream::Finish() {
  finish_called_ = true;
  bool start = false;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    ready_.clear();
    if (!read_in_flight_ && !reads_ended_) {
      read_in_flight_ = true;
      start = true;
    }
  }
  if (start) StartRead(&read_slot_);
  RemoveHold();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&done_));
  return status_;
}

void BlockingStream::OnDone(const grpc::Status& status) {
  // The last reaction: once done_ is seen, the owner may destroy this object, so nothing may
  // touch it after the lock is released.
  TsanAcquire(&tsan_started_tag_);
  absl::MutexLock lock(&mu_);
  status_ = status;
  done_ = true;
}

}  // namespace optd::client::internal
