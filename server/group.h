// A parameter group as the service holds it: the engine's ParamGroup, the service metadata,
// upload progress, the steps being gathered, the pending sync round and the subscribers to its
// weight versions.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <utility>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "optd/core/engine.h"
#include "optd/v1/optd.pb.h"
#include "server/buffer_pool.h"
#include "server/checkpoint_file.h"
#include "server/gradient_set.h"
#include "server/interval_set.h"
#include "server/metrics.h"
#include "server/sync_round.h"
#include "server/wire_buffer.h"

namespace optd::server {

class PendingStep;

// A host copy of some tensors' weights at one version (what steps return, Subscribe and
// PullWeights send). Sends point into `data` (slices with a reference to the snapshot), so a
// tensor's bytes never change once filled.
//
// Note [Sending a step's weights while they are copied]
// A step's commit hands its snapshot to the step's streams before the copy from the engine is
// done (Group::BeginSnapshot), then fills it tensor by tensor in order (FillSnapshot); each
// stream waits only for the tensors it sends (AwaitFilled), so the first tensors go out on the
// wire while the last ones are still coming back from the device. Every other snapshot is
// complete when it is handed out.
// Thread safety: the fields are set before the snapshot is shared; the fill progress is guarded.
struct WeightSnapshot {
  WeightSnapshot() = default;
  WeightSnapshot(const WeightSnapshot&) = delete;
  WeightSnapshot& operator=(const WeightSnapshot&) = delete;
  ~WeightSnapshot();  // gives `data` back to `pool`

  int64_t version = 0;
  std::vector<int> tensors;                 // indices into the group's spec
  std::vector<WireBuffer> data;             // raw weights of each, in the tensor's dtype
  std::shared_ptr<BufferPool> pool;         // where `data` came from; may be null
  // Index of tensor t in `tensors`, or -1.
  int SlotOf(int t) const;

  // Blocks until data[slot] is filled; the fill's error if it failed first.
  absl::Status AwaitFilled(int slot) const;
  // Marks data[0 .. slots) filled, or the fill failed (`status` not OK).
  void SetFilled(int slots, const absl::Status& status) const;

 private:
  mutable absl::Mutex fill_mu_;
  mutable int filled_ ABSL_GUARDED_BY(fill_mu_) = 0;
  mutable absl::Status fill_status_ ABSL_GUARDED_BY(fill_mu_);
};

// One Subscribe stream's queue of versions.
//
// Note [Subscribers never slow a step]
// A step publishes its new version to every subscriber while it holds its group's mutex, so
// Push never waits: the queue holds at most kCapacity versions, and when it is full the newest
// queued version is replaced (a slow subscriber skips intermediate versions; it always gets the
// latest). The subscriber's own thread sends, outside every group lock.
// Thread safety: thread-safe.
class Subscriber {
 public:
  // Never blocks. Returns false when a queued version was dropped to make room.
  bool Push(std::shared_ptr<const WeightSnapshot> snapshot);
  // Next version, or nullptr after `timeout` or once closed.
  std::shared_ptr<const WeightSnapshot> Pop(absl::Duration timeout);
  void Close();
  int64_t skipped() const;

 private:
  static constexpr size_t kCapacity = 2;
  mutable absl::Mutex mu_;
  std::deque<std::shared_ptr<const WeightSnapshot>> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  int64_t skipped_ ABSL_GUARDED_BY(mu_) = 0;
};

// Gradient buffers of a group, kept between steps so that a step does not page-fault a few
// fresh GB. Thread safety: thread-safe.
class GradientPool {
 public:
  GradientPool(int num_tensors, int max_kept, core::Engine* engine)
      : num_tensors_(num_tensors), max_kept_(max_kept), engine_(engine) {}
  std::unique_ptr<GradientSet> Take();
  void Return(std::unique_ptr<GradientSet> set);
  // Bytes held by the sets kept for reuse (not those in use).
  int64_t bytes() const;

 private:
  const int num_tensors_;
  const int max_kept_;
  core::Engine* const engine_;
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<GradientSet>> free_ ABSL_GUARDED_BY(mu_);
};

// Thread safety: thread-safe through its mutexes. mu() serializes everything that touches the
// weights, states, record and upload progress (the ParamGroup is not thread-safe). It is held
// only for engine work and copies, never across network reads or writes (Note [No I/O under a
// group's mutex] in step_runner.cc). sync_mu() guards the pending sync round and is never held
// while waiting for mu().
class Group {
 public:
  // `engine` (may be null) provides the host memory of the data path's buffers; it must outlive
  // the group.
  Group(GroupRecord record, std::unique_ptr<core::ParamGroup> params,
        std::shared_ptr<GroupMetrics> metrics, bool weights_initialized,
        core::Engine* engine = nullptr);
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
  // Copies the weights of `tensors` (all when empty; duplicates are copied once).
  absl::StatusOr<std::shared_ptr<const WeightSnapshot>> Snapshot(const std::vector<int>& tensors)
      const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The same in two halves (Note [Sending a step's weights while they are copied]): the empty
  // snapshot with its buffers, then the copy, tensor by tensor, which may be awaited meanwhile.
  std::shared_ptr<WeightSnapshot> BeginSnapshot(const std::vector<int>& tensors) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FillSnapshot(const WeightSnapshot& snap) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a new version: hands a snapshot to every subscriber (none is made when there are none).
  // Never blocks (Note [Subscribers never slow a step]).
  void Publish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The same with a snapshot of every tensor already made.
  void Publish(std::shared_ptr<const WeightSnapshot> snapshot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool has_subscribers() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !subscribers_.empty(); }
  // Refreshes the per-group byte gauges from what the engine reports it holds for the group.
  void UpdateByteMetrics() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Registers a subscriber; with send_current, the current version is queued first.
  absl::Status AddSubscriber(std::shared_ptr<Subscriber> s, bool send_current)
      ABSL_LOCKS_EXCLUDED(mu_);
  void RemoveSubscriber(const Subscriber* s) ABSL_LOCKS_EXCLUDED(mu_);
  // Closes every subscriber (the group was deleted or replaced, or the server stops).
  void CloseSubscribers() ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex& sync_mu() ABSL_LOCK_RETURNED(sync_mu_) { return sync_mu_; }
  std::shared_ptr<SyncRound>& round() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_) { return round_; }

  const std::shared_ptr<GradientPool>& gradient_pool() const { return gradient_pool_; }
  // The steps being gathered, by (worker, step) (pending_step.h).
  absl::Mutex& steps_mu() ABSL_LOCK_RETURNED(steps_mu_) { return steps_mu_; }
  std::map<std::pair<int, int64_t>, std::shared_ptr<PendingStep>>& pending()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(steps_mu_) {
    return pending_;
  }

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

  const std::shared_ptr<GradientPool> gradient_pool_;
  const std::shared_ptr<BufferPool> snapshot_pool_;
  absl::Mutex steps_mu_;
  std::map<std::pair<int, int64_t>, std::shared_ptr<PendingStep>> pending_
      ABSL_GUARDED_BY(steps_mu_);
};

}  // namespace optd::server
