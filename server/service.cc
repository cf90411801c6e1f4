#include "server/service.h"

#include <cstdio>
#include <string>

#include "server/chunk_codec.h"
#include "server/grpc_data_streams.h"
#include "server/message_stream.h"
#include "server/status_conversion.h"

namespace optd::server {

grpc::Status OptimizerService::Finish(std::string_view method, const absl::Status& status) {
  metrics_->RecordRpc(method, static_cast<int>(status.code()));
  if (!status.ok()) {
    std::fprintf(stderr, "optd: %.*s failed: %s\n", static_cast<int>(method.size()), method.data(),
                 status.ToString().c_str());
    if (status.code() == absl::StatusCode::kInternal && on_device_error_) on_device_error_(status);
  }
  return ToGrpcStatus(status);
}

grpc::Status OptimizerService::CreateGroup(grpc::ServerContext*,
                                           const v1::CreateGroupRequest* request,
                                           v1::GroupInfo* response) {
  return Finish("CreateGroup", core_->CreateGroup(*request, response));
}

grpc::ServerReadReactor<grpc::ByteBuffer>* OptimizerService::UploadWeights(
    grpc::CallbackServerContext*, grpc::ByteBuffer* response) {
  return new ReadStreamCall([this, response](MessageStream* stream) {
    GrpcUploadStream upload(stream);
    v1::UploadWeightsResponse out;
    absl::Status s = core_->UploadWeights(&upload, &out);
    if (s.ok()) *response = EncodeMessage(out);
    return Finish("UploadWeights", s);
  });
}

grpc::Status OptimizerService::GetGroup(grpc::ServerContext*, const v1::GetGroupRequest* request,
                                        v1::GroupInfo* response) {
  return Finish("GetGroup", core_->GetGroup(*request, response));
}

grpc::Status OptimizerService::ListGroups(grpc::ServerContext*, const v1::ListGroupsRequest*,
                                          v1::ListGroupsResponse* response) {
  return Finish("ListGroups", core_->ListGroups(response));
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
    grpc::CallbackServerContext*) {
  return new BidiStreamCall([this](MessageStream* stream) {
    GrpcStepStream step(stream);
    return Finish("Step", core_->Step(&step));
  });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* OptimizerService::Subscribe(
    grpc::CallbackServerContext*, const grpc::ByteBuffer* request) {
  return new WriteStreamCall([this, request = *request](MessageStream* stream) {
    v1::SubscribeRequest parsed;
    absl::Status s = DecodeMessage(request, &parsed);
    GrpcWeightsSink sink(stream);
    if (s.ok()) s = core_->Subscribe(parsed, &sink);
    return Finish("Subscribe", s);
  });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* OptimizerService::PullWeights(
    grpc::CallbackServerContext*, const grpc::ByteBuffer* request) {
  return new WriteStreamCall([this, request = *request](MessageStream* stream) {
    v1::PullWeightsRequest parsed;
    absl::Status s = DecodeMessage(request, &parsed);
    GrpcWeightsSink sink(stream);
    if (s.ok()) s = core_->PullWeights(parsed, &sink);
    return Finish("PullWeights", s);
  });
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
    grpc::CallbackServerContext*, const grpc::ByteBuffer* request) {
  return new WriteStreamCall([this, request = *request](MessageStream* stream) {
    v1::ExportStateRequest parsed;
    absl::Status s = DecodeMessage(request, &parsed);
    GrpcStateSink sink(stream);
    if (s.ok()) s = core_->ExportState(parsed, &sink);
    return Finish("ExportState", s);
  });
}

grpc::ServerReadReactor<grpc::ByteBuffer>* OptimizerService::ImportState(
    grpc::CallbackServerContext*, grpc::ByteBuffer* response) {
  return new ReadStreamCall([this, response](MessageStream* stream) {
    GrpcStateSource source(stream);
    v1::ImportStateResponse out;
    absl::Status s = core_->ImportState(&source, &out);
    if (s.ok()) *response = EncodeMessage(out);
    return Finish("ImportState", s);
  });
}

}  // namespace optd::server
