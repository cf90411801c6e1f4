// What the optd.v1.Optimizer service does, independent of how gRPC delivers the calls: every
// operation returns absl::Status and the service adapters convert it once (service.cc). The
// data-path operations read and write through the transport-neutral streams of data_streams.h.
#pragma once

#include <atomic>
#include <cstdint>
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
#include "server/metrics.h"

namespace optd::server {

struct CoreOptions {
  // Directory of SaveCheckpoint/RestoreCheckpoint files; empty = checkpoints disabled.
  std::string checkpoint_dir;
  // Payload bytes per weights or state message the server sends.
  int64_t chunk_bytes = int64_t{4} << 20;
};

// Thread safety: thread-safe; every method may be called from many RPC threads at once.
class OptimizerCore {
 public:
  // `engine` and `metrics` must outlive the core.
  OptimizerCore(core::Engine* engine, Metrics* metrics, CoreOptions options);

  absl::Status CreateGroup(const v1::CreateGroupRequest& request, v1::GroupInfo* info);
  absl::Status UploadWeights(UploadStream* stream, v1::UploadWeightsResponse* response);
  absl::Status GetGroup(const v1::GetGroupRequest& request, v1::GroupInfo* info);
  absl::Status ListGroups(v1::ListGroupsResponse* response);
  absl::Status DeleteGroup(const v1::DeleteGroupRequest& request);
  absl::Status UpdateHyperparameters(const v1::UpdateHyperparametersRequest& request,
                                     v1::GroupInfo* info);

  // See step_runner.cc.
  absl::Status Step(StepStream* stream);

  absl::Status Subscribe(const v1::SubscribeRequest& request, WeightsSink* sink);
  absl::Status PullWeights(const v1::PullWeightsRequest& request, WeightsSink* sink);

  absl::Status SaveCheckpoint(const v1::SaveCheckpointRequest& request,
                              v1::SaveCheckpointResponse* response);
  absl::Status RestoreCheckpoint(const v1::RestoreCheckpointRequest& request,
                                 v1::RestoreCheckpointResponse* response);
  absl::Status ExportState(const v1::ExportStateRequest& request, StateSink* sink);
  absl::Status ImportState(StateSource* source, v1::ImportStateResponse* response);

  // Ends Subscribe streams so that a graceful server shutdown does not wait on them forever.
  void BeginShutdown();
  bool shutting_down() const { return shutting_down_.load(); }

  core::Engine& engine() { return *engine_; }
  Metrics& metrics() { return *metrics_; }
  const CoreOptions& options() const { return options_; }
  GroupRegistry& registry() { return registry_; }

 private:
  // Creates a group object (engine storage + metrics) from a record.
  absl::StatusOr<std::shared_ptr<Group>> MakeGroup(GroupRecord record, bool weights_initialized);
  // Path of checkpoint `name` in the checkpoint directory; InvalidArgument for names that could
  // leave it.
  absl::StatusOr<std::string> CheckpointPath(const std::string& name) const;
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
  std::atomic<bool> shutting_down_{false};
};

}  // namespace optd::server
