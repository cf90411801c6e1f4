// The optd.v1.Optimizer gRPC service: thin adapters from gRPC calls to OptimizerCore.
//
// Note [Sync API]
// The service uses gRPC's synchronous API on purpose: a step blocks on the engine (an update of
// a whole tensor), a sync-mode worker waits for the others, and checkpoints do file IO. With
// callback reactors all of that would have to move to a separate executor, because reactions must
// not block; the synchronous API gives each RPC its own thread from gRPC's pool, which is exactly
// that executor, with far less code to get wrong.
#pragma once

#include <functional>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/metrics.h"
#include "server/optimizer_core.h"

namespace optd::server {

// Thread safety: thread-safe (gRPC calls it from many threads).
class OptimizerService final : public v1::Optimizer::Service {
 public:
  // `core` and `metrics` must outlive the service.
  // Called with every INTERNAL status a handler returns (device errors); may be empty.
  using DeviceErrorCallback = std::function<void(const absl::Status&)>;
  OptimizerService(OptimizerCore* core, Metrics* metrics, DeviceErrorCallback on_device_error = {})
      : core_(core), metrics_(metrics), on_device_error_(std::move(on_device_error)) {}

  grpc::Status CreateGroup(grpc::ServerContext* context, const v1::CreateGroupRequest* request,
                           v1::GroupInfo* response) override;
  grpc::Status UploadWeights(grpc::ServerContext* context,
                             grpc::ServerReader<v1::UploadWeightsRequest>* reader,
                             v1::UploadWeightsResponse* response) override;
  grpc::Status GetGroup(grpc::ServerContext* context, const v1::GetGroupRequest* request,
                        v1::GroupInfo* response) override;
  grpc::Status ListGroups(grpc::ServerContext* context, const v1::ListGroupsRequest* request,
                          v1::ListGroupsResponse* response) override;
  grpc::Status DeleteGroup(grpc::ServerContext* context, const v1::DeleteGroupRequest* request,
                           v1::DeleteGroupResponse* response) override;
  grpc::Status UpdateHyperparameters(grpc::ServerContext* context,
                                     const v1::UpdateHyperparametersRequest* request,
                                     v1::GroupInfo* response) override;
  grpc::Status Step(grpc::ServerContext* context,
                    grpc::ServerReaderWriter<v1::StepResponse, v1::StepRequest>* stream) override;
  grpc::Status Subscribe(grpc::ServerContext* context, const v1::SubscribeRequest* request,
                         grpc::ServerWriter<v1::WeightsMessage>* writer) override;
  grpc::Status PullWeights(grpc::ServerContext* context, const v1::PullWeightsRequest* request,
                           grpc::ServerWriter<v1::WeightsMessage>* writer) override;
  grpc::Status SaveCheckpoint(grpc::ServerContext* context,
                              const v1::SaveCheckpointRequest* request,
                              v1::SaveCheckpointResponse* response) override;
  grpc::Status RestoreCheckpoint(grpc::ServerContext* context,
                                 const v1::RestoreCheckpointRequest* request,
                                 v1::RestoreCheckpointResponse* response) override;
  grpc::Status ExportState(grpc::ServerContext* context, const v1::ExportStateRequest* request,
                           grpc::ServerWriter<v1::StateChunk>* writer) override;
  grpc::Status ImportState(grpc::ServerContext* context, grpc::ServerReader<v1::StateChunk>* reader,
                           v1::ImportStateResponse* response) override;

 private:
  // Records the RPC's outcome, logs a failure with its reason, converts the status.
  grpc::Status Finish(std::string_view method, const absl::Status& status);

  OptimizerCore* const core_;
  Metrics* const metrics_;
  const DeviceErrorCallback on_device_error_;
};

}  // namespace optd::server
