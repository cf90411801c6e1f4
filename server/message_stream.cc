#include "server/message_stream.h"

#include <thread>
#include <utility>

#include "absl/base/config.h"

#ifdef ABSL_HAVE_THREAD_SANITIZER
#include <sanitizer/tsan_interface.h>
#endif

namespace optd::server {
namespace {

// Note [gRPC's ordering of reactions, told to TSan]
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

// Scope of one reaction: after the constructor, before OnDone.
class StreamBridge::Reaction {
 public:
  explicit Reaction(StreamBridge* bridge) : bridge_(bridge) {
    TsanAcquire(&bridge_->tsan_started_tag_);
  }
  ~Reaction() { TsanRelease(&bridge_->tsan_retired_tag_); }
  Reaction(const Reaction&) = delete;
  Reaction& operator=(const Reaction&) = delete;

 private:
  StreamBridge* const bridge_;
};

void StreamBridge::Start(StreamHandler handler) {
  if (reads_) {
    {
      absl::MutexLock lock(&mu_);
      read_pending_ = true;
    }
    DoStartRead(&read_buffer_);
  }
  TsanRelease(&tsan_started_tag_);  // reactions can start once the constructor returns
  std::thread([this, handler = std::move(handler)]() mutable {
    grpc::Status status = handler(this);
    // Destroy the handler (and what it holds: the call's StreamGate slot, the service's state)
    // before finishing: once Finish is called, gRPC may end the call and the server may shut
    // down and destroy the StreamGate while this detached thread would still be destroying its
    // lambda. Found by TSan (docs/testing.md): Slot::~Slot locking the gate's mutex after
    // ~OptimizerCore destroyed it.
    handler = nullptr;
    FinishCall(status);
    if (LetGo()) delete this;  // Note [Who deletes the reactor]
  }).detach();
}

bool StreamBridge::Read(grpc::ByteBuffer* message) {
  bool timed_out = false;
  return ReadUntil(message, absl::InfiniteFuture(), &timed_out);
}

bool StreamBridge::ReadUntil(grpc::ByteBuffer* message, absl::Time deadline, bool* timed_out) {
  *timed_out = false;
  if (!reads_) return false;
  bool restart = false;
  {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return !read_queue_.empty() || read_done_ || cancelled_;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&ready), deadline)) {
      *timed_out = true;
      return false;
    }
    if (read_queue_.empty() || cancelled_) return false;
    *message = std::move(read_queue_.front());
    read_queue_.pop_front();
    if (!read_pending_ && !read_done_) {
      read_pending_ = true;
      restart = true;
    }
  }
  if (restart) DoStartRead(&read_buffer_);
  return true;
}

void StreamBridge::ReadDone(bool ok) {
  Reaction reaction(this);
  bool restart = false;
  {
    absl::MutexLock lock(&mu_);
    read_pending_ = false;
    if (!ok) {
      read_done_ = true;
      return;
    }
    read_queue_.push_back(std::move(read_buffer_));
    read_buffer_.Clear();
    if (read_queue_.size() < kMaxQueuedReads && !cancelled_) {
      read_pending_ = true;
      restart = true;
    }
  }
  // Outside the lock: a reaction may run inline from StartRead.
  if (restart) DoStartRead(&read_buffer_);
}

bool StreamBridge::Write(grpc::ByteBuffer message) {
  if (!writes_) return false;
  const grpc::ByteBuffer* start = nullptr;
  {
    absl::MutexLock lock(&mu_);
    auto room = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return write_queue_.size() < kMaxQueuedWrites || broken_ || cancelled_;
    };
    mu_.Await(absl::Condition(&room));
    if (broken_ || cancelled_) return false;
    write_queue_.push_back(std::move(message));
    if (!write_pending_) {
      write_pending_ = true;
      start = &write_queue_.front();
    }
  }
  if (start != nullptr) DoStartWrite(start);
  return true;
}

void StreamBridge::WriteDone(bool ok) {
  Reaction reaction(this);
  const grpc::ByteBuffer* next = nullptr;
  {
    absl::MutexLock lock(&mu_);
    write_queue_.pop_front();
    if (!ok) {
      broken_ = true;
      write_queue_.clear();
      write_pending_ = false;
      return;
    }
    if (write_queue_.empty()) {
      write_pending_ = false;
    } else {
      next = &write_queue_.front();
    }
  }
  if (next != nullptr) DoStartWrite(next);
}

void StreamBridge::Cancelled() {
  Reaction reaction(this);
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
}

bool StreamBridge::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

void StreamBridge::FinishCall(const grpc::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    auto drained = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return (!write_pending_ && write_queue_.empty()) || broken_;
    };
    mu_.Await(absl::Condition(&drained));
  }
  DoFinish(status);  // OnDone may run at any time after, but does not delete this (LetGo)
}

bool StreamBridge::LetGo() { return owners_.fetch_sub(1, std::memory_order_acq_rel) == 1; }

bool StreamBridge::Done() {
  TsanAcquire(&tsan_retired_tag_);
  return LetGo();
}

}  // namespace optd::server
