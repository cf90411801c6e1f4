#include "server/service.h"

#include <cstdio>
#include <string>

#include "server/chunk_codec.h"
#include "server/grpc_data_streams.h"
#include "server/limits.h"
#include "server/message_stream.h"
#include "server/status_conversion.h"

namespace optd::server {

grpc::Status OptimizerService::Finish(std::string_view method, const absl::Status& status) {
  metrics_->RecordRpc(method, static_cast<int>(status.code()));
  if (!status.ok()) {
    // Escaped and bounded: a message may quote what a client sent (Note [Names] in limits.h).
    std::fprintf(stderr, "optd: %.*s failed: %s\n", static_cast<int>(method.size()), method.data(),
                 LogSafe(status.ToString()).c_str());
    if (status.code() == absl::StatusCode::kInternal && on_device_error_) on_device_error_(status);
  }
  return ToGrpcStatus(status);
}

StreamHandler OptimizerService::Admitted(grpc::CallbackServerContext* context,
                                         std::string_view method, StreamHandler handler) {
  // Taken on gRPC's thread, before the call's own thread does anything; held until it ends.
  std::shared_ptr<StreamGate::Slot> slot;
  absl::Status refused;
  if (auto entered = core_->streams().Enter(context->peer()); entered.ok()) {
    slot = *std::move(entered);
  } else {
    refused = entered.status();
  }
  return [this, method, slot = std::move(slot), refused,
          handler = std::move(handler)](MessageStream* stream) {
    if (slot == nullptr) return Finish(method, refused);
    return handler(stream);
  };
}

grpc::Status OptimizerService::CreateGroup(grpc::ServerContext*,
                                           const v1::CreateGroupRequest* request,
                                           v1::GroupInfo* response) {
  return Finish("CreateGroup", core_->CreateGroup(*request, response));
}

grpc::ServerReadReactor<grpc::ByteBuffer>* OptimizerService::UploadWeights(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  StreamHandler handler = [this, response](MessageStream* stream) {
    GrpcUploadStream upload(stream);
    v1::UploadWeightsResponse out;
    absl::Status s = core_->UploadWeights(&upload, &out);
    if (s.ok()) *response = EncodeMessage(out);
    return Finish("UploadWeights", s);
  };
  return new ReadStreamCall(Admitted(context, "UploadWeights", std::move(handler)));
}

grpc::Status OptimizerService::GetGroup(grpc::ServerContext*, const v1::GetGroupRequest* request,
                                        v1::GroupInfo* response) {
  return Finish("GetGroup", core_->GetGroup(*request, response));
}

grpc::Status OptimizerService::ListGroups(grpc::ServerContext*,
                                          const v1::ListGroupsRequest* request,
                                          v1::ListGroupsResponse* response) {
  return Finish("ListGroups", core_->ListGroups(*request, response));
}

grpc::Status OptimizerService::DeleteGroup(grpc::ServerContext*,
                                           const v1::DeleteGroupRequest* request,
                                           v1::DeleteGroupResponse*) {
  return Finish("DeleteGroup", core_->DeleteGroup(*request));
}

grpc::Status OptimizerService::UpdateHyperparameters(
    grpc::ServerContext*, const v1::UpdateHyperparametersRequest* request,
    v1::GroupInfo* response) {
  return Finish("UpdateHyperparameters", core_->UpdateHyperparameters(*request, response));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* OptimizerService::Step(
    grpc::CallbackServerContext* context) {
  StreamHandler handler = [this](MessageStream* stream) {
    GrpcStepStream step(stream);
    return Finish("Step", core_->Step(&step));
  };
  return new BidiStreamCall(Admitted(context, "Step", std::move(handler)));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* OptimizerService::Subscribe(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  StreamHandler handler = [this, request = *request](MessageStream* stream) {
    v1::SubscribeRequest parsed;
    absl::Status s = DecodeMessage(request, &parsed);
    GrpcWeightsSink sink(stream);
    if (s.ok()) s = core_->Subscribe(parsed, &sink);
    return Finish("Subscribe", s);
  };
  return new WriteStreamCall(Admitted(context, "Subscribe", std::move(handler)));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* OptimizerService::PullWeights(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  StreamHandler handler = [this, request = *request](MessageStream* stream) {
    v1::PullWeightsRequest parsed;
    absl::Status s = DecodeMessage(request, &parsed);
    GrpcWeightsSink sink(stream);
    if (s.ok()) s = core_->PullWeights(parsed, &sink);
    return Finish("PullWeights", s);
  };
  return new WriteStreamCall(Admitted(context, "PullWeights", std::move(handler)));
}

grpc::Status OptimizerService::SaveCheckpoint(grpc::ServerContext*,
                                              const v1::SaveCheckpointRequest* request,
                                              v1::SaveCheckpointResponse* response) {
  return Finish("SaveCheckpoint", core_->SaveCheckpoint(*request, response));
}

grpc::Status OptimizerService::RestoreCheckpoint(grpc::ServerContext*,
                                                 const v1::RestoreCheckpointRequest* request,
                                                 v1::RestoreCheckpointResponse* response) {
  return Finish("RestoreCheckpoint", core_->RestoreCheckpoint(*request, response));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* OptimizerService::ExportState(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  StreamHandler handler = [this, request = *request](MessageStream* stream) {
    v1::ExportStateRequest parsed;
    absl::Status s = DecodeMessage(request, &parsed);
    GrpcStateSink sink(stream);
    if (s.ok()) s = core_->ExportState(parsed, &sink);
    return Finish("ExportState", s);
  };
  return new WriteStreamCall(Admitted(context, "ExportState", std::move(handler)));
}

grpc::ServerReadReactor<grpc::ByteBuffer>* OptimizerService::ImportState(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  StreamHandler handler = [this, response](MessageStream* stream) {
    GrpcStateSource source(stream);
    v1::ImportStateResponse out;
    absl::Status s = core_->ImportState(&source, &out);
    if (s.ok()) *response = EncodeMessage(out);
    return Finish("ImportState", s);
  };
  return new ReadStreamCall(Admitted(context, "ImportState", std::move(handler)));
}

}  // namespace optd::server
