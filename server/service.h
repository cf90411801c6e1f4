// The optd.v1.Optimizer gRPC service: thin adapters from gRPC calls to OptimizerCore.
//
// Note [Sync API]
// The control methods use gRPC's synchronous API on purpose: checkpoints do file IO and a create
// allocates engine memory; the synchronous API gives each RPC its own thread from gRPC's pool,
// which is exactly the executor that blocking work needs, with far less code to get wrong. The
// data-path methods (Step, UploadWeights, PullWeights, Subscribe, ExportState, ImportState) are
// raw callback methods instead, so that their bytes stay in gRPC's slices (Note [Chunk messages
// without protobuf copies]); each call still runs on a thread of its own (Note [Blocking streams
// over callback reactors]).
#pragma once

#include <functional>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "grpcpp/support/byte_buffer.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/auth_policy.h"
#include "server/message_stream.h"
#include "server/metrics.h"
#include "server/optimizer_core.h"

namespace optd::server {

// The generated service with the data-path methods in their raw callback form.
using OptimizerServiceBase = v1::Optimizer::WithRawCallbackMethod_Colocate<
    v1::Optimizer::WithRawCallbackMethod_Step<
    v1::Optimizer::WithRawCallbackMethod_UploadWeights<
        v1::Optimizer::WithRawCallbackMethod_PullWeights<
            v1::Optimizer::WithRawCallbackMethod_Subscribe<
                v1::Optimizer::WithRawCallbackMethod_ExportState<
                    v1::Optimizer::WithRawCallbackMethod_ImportState<
                        v1::Optimizer::Service>>>>>>>;

// Thread safety: thread-safe (gRPC calls it from many threads).
class OptimizerService final : public OptimizerServiceBase {
 public:
  // `core`, `metrics` and `authorizer` must outlive the service. Every call is authenticated
  // and authorized by `authorizer` before the core sees it (auth_policy.h).
  // Called with every INTERNAL status a handler returns (device errors); may be empty.
  using DeviceErrorCallback = std::function<void(const absl::Status&)>;
  OptimizerService(OptimizerCore* core, Metrics* metrics, const Authorizer* authorizer,
                   DeviceErrorCallback on_device_error = {})
      : core_(core),
        metrics_(metrics),
        authorizer_(authorizer),
        on_device_error_(std::move(on_device_error)) {}

  grpc::Status CreateGroup(grpc::ServerContext* context, const v1::CreateGroupRequest* request,
                           v1::GroupInfo* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* UploadWeights(grpc::CallbackServerContext* context,
                                                           grpc::ByteBuffer* response) override;
  grpc::Status GetGroup(grpc::ServerContext* context, const v1::GetGroupRequest* request,
                        v1::GroupInfo* response) override;
  grpc::Status ListGroups(grpc::ServerContext* context, const v1::ListGroupsRequest* request,
                          v1::ListGroupsResponse* response) override;
  grpc::Status DeleteGroup(grpc::ServerContext* context, const v1::DeleteGroupRequest* request,
                           v1::DeleteGroupResponse* response) override;
  grpc::Status UpdateHyperparameters(grpc::ServerContext* context,
                                     const v1::UpdateHyperparametersRequest* request,
                                     v1::GroupInfo* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Step(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Subscribe(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* PullWeights(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request) override;
  grpc::Status SaveCheckpoint(grpc::ServerContext* context,
                              const v1::SaveCheckpointRequest* request,
                              v1::SaveCheckpointResponse* response) override;
  grpc::Status RestoreCheckpoint(grpc::ServerContext* context,
                                 const v1::RestoreCheckpointRequest* request,
                                 v1::RestoreCheckpointResponse* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ExportState(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* ImportState(grpc::CallbackServerContext* context,
                                                         grpc::ByteBuffer* response) override;
  // The lease of a colocated region (colocate_service.h). Not behind the stream limits: the
  // region limits bound it (--max_regions).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Colocate(
      grpc::CallbackServerContext* context) override;

 private:
  // Records the RPC's outcome, logs a failure with its reason, converts the status.
  grpc::Status Finish(std::string_view method, const absl::Status& status);
  // The caller of `context`'s call, from its `authorization` metadata.
  absl::StatusOr<Caller> CallerOf(const grpc::ServerContextBase& context) const;
  // The principal of `context`'s call for the regions (colocate_service.h).
  std::string PrincipalOf(const grpc::ServerContextBase& context) const;
  // CallerOf, then Authorizer::Check of `action` on `group`.
  absl::Status Authorize(const grpc::ServerContextBase& context, Action action,
                         absl::string_view group) const;
  // `handler` behind the stream limits (limits_streams.h): a call over them finishes at once with
  // ResourceExhausted naming the limit.
  StreamHandler Admitted(grpc::CallbackServerContext* context, std::string_view method,
                         StreamHandler handler);

  OptimizerCore* const core_;
  Metrics* const metrics_;
  const Authorizer* const authorizer_;
  const DeviceErrorCallback on_device_error_;
};

}  // namespace optd::server
