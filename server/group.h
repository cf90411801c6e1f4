// A parameter group as the service holds it: the engine's ParamGroup, the service metadata,
// upload progress, the pending sync round and the subscribers to its weight versions.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "optd/core/engine.h"
#include "optd/v1/optd.pb.h"
#include "server/checkpoint_file.h"
#include "server/interval_set.h"
#include "server/metrics.h"
#include "server/sync_round.h"
#include "server/wire_buffer.h"

namespace optd::server {

// A host copy of some tensors' weights at one version (what Subscribe and PullWeights send).
struct WeightSnapshot {
  int64_t version = 0;
  std::vector<int> tensors;                 // indices into the group's spec
  std::vector<WireBuffer> data;             // raw weights of each, in the tensor's dtype
};

// One Subscribe stream's queue of versions.
// Thread safety: thread-safe.
class Subscriber {
 public:
  // Blocks while the queue holds kCapacity versions (backpressure on the publishing step), until
  // the subscriber closes.
  void Push(std::shared_ptr<const WeightSnapshot> snapshot);
  // Next version, or nullptr after `timeout` or once closed.
  std::shared_ptr<const WeightSnapshot> Pop(absl::Duration timeout);
  void Close();

 private:
  static constexpr size_t kCapacity = 2;
  absl::Mutex mu_;
  std::deque<std::shared_ptr<const WeightSnapshot>> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// Thread safety: thread-safe through its mutexes. mu() serializes everything that touches the
// weights, states, record and upload progress (the ParamGroup is not thread-safe): one group's
// steps run one at a time, in the order they take mu(); different groups run in parallel.
// sync_mu() guards the pending sync round and is never held while waiting for mu().
class Group {
 public:
  Group(GroupRecord record, std::unique_ptr<core::ParamGroup> params,
        std::shared_ptr<GroupMetrics> metrics, bool weights_initialized);
  ~Group();

  const std::string& name() const { return name_; }
  // Tensor specs never change after creation, so these need no lock.
  int num_tensors() const { return static_cast<int>(tensors_.size()); }
  const core::TensorSpec& tensor(int t) const { return tensors_[static_cast<size_t>(t)]; }
  // Index of the tensor called `name`, or -1.
  int FindTensor(std::string_view name) const;
  // Indices of the tensors a request names (field `tensors`), in request order; NotFound naming
  // the first unknown one. An empty list gives an empty result (callers decide what it means).
  absl::StatusOr<std::vector<int>> FindTensors(
      const google::protobuf::RepeatedPtrField<std::string>& names) const;
  GroupMetrics& metrics() { return *metrics_; }

  absl::Mutex& mu() ABSL_LOCK_RETURNED(mu_) { return mu_; }
  // REQUIRES: mu() held for the accessors below.
  GroupRecord& record() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return record_; }
  core::ParamGroup& params() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return *params_; }
  IntervalSet& uploaded(int t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return uploaded_[static_cast<size_t>(t)];
  }
  bool weights_initialized() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FillInfo(v1::GroupInfo* info) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies the weights of `tensors` (all when empty).
  absl::StatusOr<std::shared_ptr<const WeightSnapshot>> Snapshot(const std::vector<int>& tensors)
      const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a new version: hands a snapshot to every subscriber (none is made when there are none).
  void Publish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Refreshes the per-group byte gauges.
  void UpdateByteMetrics(core::Backend backend) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Registers a subscriber; with send_current, the current version is queued first.
  absl::Status AddSubscriber(std::shared_ptr<Subscriber> s, bool send_current)
      ABSL_LOCKS_EXCLUDED(mu_);
  void RemoveSubscriber(const Subscriber* s) ABSL_LOCKS_EXCLUDED(mu_);
  // Closes every subscriber (the group was deleted or replaced, or the server stops).
  void CloseSubscribers() ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex& sync_mu() ABSL_LOCK_RETURNED(sync_mu_) { return sync_mu_; }
  std::shared_ptr<SyncRound>& round() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_) { return round_; }

 private:
  const std::string name_;
  const std::vector<core::TensorSpec> tensors_;

  mutable absl::Mutex mu_;
  GroupRecord record_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<core::ParamGroup> params_ ABSL_GUARDED_BY(mu_);
  std::vector<IntervalSet> uploaded_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Subscriber>> subscribers_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<GroupMetrics> metrics_;  // shared with a replacing group of the same name

  absl::Mutex sync_mu_;
  std::shared_ptr<SyncRound> round_ ABSL_GUARDED_BY(sync_mu_);
};

}  // namespace optd::server
