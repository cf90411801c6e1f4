// What the optd.v1.Optimizer service does, independent of how gRPC delivers the calls: every
// operation returns absl::Status and the service adapters convert it once (service.cc). The
// data-path operations read and write through the transport-neutral streams of data_streams.h.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "optd/core/engine.h"
#include "optd/v1/optd.pb.h"
#include "server/data_streams.h"
#include "server/group_registry.h"
#include "server/limits.h"
#include "server/limits_memory.h"
#include "server/limits_streams.h"
#include "server/metrics.h"
#include "server/region_registry.h"

namespace optd::server {

struct CoreOptions {
  // Directory of SaveCheckpoint/RestoreCheckpoint files; empty = checkpoints disabled.
  std::string checkpoint_dir;
  // Payload bytes per weights or state message the server sends.
  int64_t chunk_bytes = int64_t{4} << 20;
  // Largest message the server sends; a ListGroups page stays below it.
  int64_t max_message_bytes = 16 << 20;
  // Admission limits (limits.h).
  Limits limits;
};

// What periodic checkpoints watch (checkpoint_scheduler.h): a count of the changes that do not
// show in a version (creates, uploads, deletes, hyperparameters, imports, restores), and every
// group's version (its steps).
struct CoreProgress {
  int64_t changes = 0;
  std::map<std::string, int64_t> versions;
};

// Thread safety: thread-safe; every method may be called from many RPC threads at once.
class OptimizerCore {
 public:
  // `engine` and `metrics` must outlive the core.
  OptimizerCore(core::Engine* engine, Metrics* metrics, CoreOptions options);

  absl::Status CreateGroup(const v1::CreateGroupRequest& request, v1::GroupInfo* info);
  absl::Status UploadWeights(UploadStream* stream, v1::UploadWeightsResponse* response);
  absl::Status GetGroup(const v1::GetGroupRequest& request, v1::GroupInfo* info);
  // Which groups a caller may see (null: all).
  using GroupFilter = std::function<bool(const std::string& group)>;
  // One page of the groups `visible` lets through, in name order: page_size of them (0:
  // limits.default_list_page_size, at most limits.max_list_page_size) that fit one message;
  // next_page_token is set when more groups follow.
  absl::Status ListGroups(const v1::ListGroupsRequest& request, v1::ListGroupsResponse* response,
                          const GroupFilter& visible = nullptr);
  absl::Status DeleteGroup(const v1::DeleteGroupRequest& request);
  absl::Status UpdateHyperparameters(const v1::UpdateHyperparametersRequest& request,
                                     v1::GroupInfo* info);

  // See step_runner.cc. `principal` identifies the caller for the regions its steps may name
  // (region_registry.h): "" without authentication.
  absl::Status Step(StepStream* stream, const std::string& principal = {});

  absl::Status Subscribe(const v1::SubscribeRequest& request, WeightsSink* sink);
  absl::Status PullWeights(const v1::PullWeightsRequest& request, WeightsSink* sink);

  // Copies each group under its mutex and writes it without (Note [No I/O under a group's
  // mutex]). Responses and errors name the checkpoint, never the server's directory.
  absl::Status SaveCheckpoint(const v1::SaveCheckpointRequest& request,
                              v1::SaveCheckpointResponse* response);
  // Every restored group's metadata is validated like a CreateGroup (ValidateRecord) and
  // admitted like one (GroupAdmission); a file that breaks a rule gives DataLoss naming the
  // checkpoint, the group and the field, and changes nothing.
  absl::Status RestoreCheckpoint(const v1::RestoreCheckpointRequest& request,
                                 v1::RestoreCheckpointResponse* response);
  absl::Status ExportState(const v1::ExportStateRequest& request, StateSink* sink);
  absl::Status ImportState(StateSource* source, v1::ImportStateResponse* response);

  // Ends Subscribe streams so that a graceful server shutdown does not wait on them forever.
  void BeginShutdown();
  bool shutting_down() const { return shutting_down_.load(); }

  // The group called `name`: InvalidArgument when the name breaks Note [Names] in limits.h (no
  // such group can exist, and the name is never echoed raw into a log line), else the registry's
  // answer (NotFound naming the group).
  absl::StatusOr<std::shared_ptr<Group>> FindGroup(const std::string& name) const;

  // Data-path calls take a place here before they start (service.cc); see limits_streams.h.
  StreamGate& streams() { return streams_; }
  // Colocated regions (docs/colocated.md).
  RegionRegistry& regions() { return regions_; }

  CoreProgress Progress() const;

  // `status` with the checkpoint directory taken out of its message: clients and logs see
  // checkpoint names, not the server's file system layout.
  absl::Status HideCheckpointDir(const absl::Status& status) const;

  core::Engine& engine() { return *engine_; }
  Metrics& metrics() { return *metrics_; }
  const CoreOptions& options() const { return options_; }
  GroupRegistry& registry() { return registry_; }

 private:
  // A group made for a record and its admission ticket; insert the group into the registry,
  // then drop the ticket.
  struct NewGroup {
    std::shared_ptr<Group> group;
    std::unique_ptr<GroupAdmission::Ticket> ticket;
  };
  // Admits (GroupAdmission) and creates a group object (engine storage + metrics) from a record
  // that passed ValidateRecord. `new_name`: no group of this name exists (it adds to the count).
  absl::StatusOr<NewGroup> MakeGroup(GroupRecord record, bool weights_initialized, bool new_name);
  // Path of checkpoint `name` in the checkpoint directory; InvalidArgument for names that could
  // leave it, that break Note [Names], or that look like a writer's temporary file.
  absl::StatusOr<std::string> CheckpointPath(const std::string& name) const;
  void NoteChange() { changes_.fetch_add(1, std::memory_order_relaxed); }
  // Refreshes the engine-wide gauges.
  void UpdateEngineMetrics();

  // One GroupMetrics per group name, shared by an old and a new group of the same name while
  // both live (restore replaces groups; a step may still hold the old one): prometheus children
  // are per label set, so two owners of one name must not remove each other's series.
  std::shared_ptr<GroupMetrics> MetricsFor(const std::string& name);

  core::Engine* const engine_;
  Metrics* const metrics_;
  const CoreOptions options_;
  // Declared before registry_: groups (destroyed with it) release their metrics under this lock.
  absl::Mutex metrics_mu_;
  std::map<std::string, std::weak_ptr<GroupMetrics>> group_metrics_ ABSL_GUARDED_BY(metrics_mu_);
  GroupRegistry registry_;
  GroupAdmission admission_;
  StreamGate streams_;
  RegionRegistry regions_;
  std::atomic<int64_t> changes_{0};
  std::atomic<bool> shutting_down_{false};
};

}  // namespace optd::server
