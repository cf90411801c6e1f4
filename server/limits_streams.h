// How many data-path calls (Step, UploadWeights, PullWeights, Subscribe, ExportState,
// ImportState) run at once, in total and per client address. Each such call holds a thread of
// its own (Note [Blocking streams over callback reactors]) and its buffers, so without a bound a
// client could open streams until the server runs out of threads or memory.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace optd::server {

// The address part of a gRPC peer string: "ipv4:10.0.0.7:5123" -> "ipv4:10.0.0.7",
// "ipv6:[::1]:5123" -> "ipv6:[::1]"; other forms are returned whole.
std::string PeerAddress(std::string_view peer);

// Thread safety: thread-safe.
class StreamGate {
 public:
  // A call's place; destroying it frees the place.
  class Slot {
   public:
    ~Slot();
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    friend class StreamGate;
    Slot(StreamGate* gate, std::string address) : gate_(gate), address_(std::move(address)) {}
    StreamGate* const gate_;
    const std::string address_;
  };

  // max_total > 0; max_per_address 0 = no per-address bound.
  StreamGate(int max_total, int max_per_address)
      : max_total_(max_total), max_per_address_(max_per_address) {}

  // A place for one call from `peer` (grpc::ServerContext::peer()), or ResourceExhausted
  // naming the limit and its flag (--max_streams, --max_streams_per_peer).
  absl::StatusOr<std::unique_ptr<Slot>> Enter(std::string_view peer);

  int active() const;

 private:
  void Leave(const std::string& address);

  const int max_total_;
  const int max_per_address_;
  mutable absl::Mutex mu_;
  int total_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> per_address_ ABSL_GUARDED_BY(mu_);
};

}  // namespace optd::server
