#include "server/service.h"

#include <cstdio>
#include <string>

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

grpc::Status OptimizerService::UploadWeights(grpc::ServerContext*,
                                             grpc::ServerReader<v1::UploadWeightsRequest>* reader,
                                             v1::UploadWeightsResponse* response) {
  return Finish("UploadWeights", core_->UploadWeights(reader, response));
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

grpc::Status OptimizerService::Step(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::StepResponse, v1::StepRequest>* stream) {
  return Finish("Step", core_->Step(context, stream));
}

grpc::Status OptimizerService::Subscribe(grpc::ServerContext* context,
                                         const v1::SubscribeRequest* request,
                                         grpc::ServerWriter<v1::WeightsMessage>* writer) {
  return Finish("Subscribe", core_->Subscribe(context, *request, writer));
}

grpc::Status OptimizerService::PullWeights(grpc::ServerContext*,
                                           const v1::PullWeightsRequest* request,
                                           grpc::ServerWriter<v1::WeightsMessage>* writer) {
  return Finish("PullWeights", core_->PullWeights(*request, writer));
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

grpc::Status OptimizerService::ExportState(grpc::ServerContext*,
                                           const v1::ExportStateRequest* request,
                                           grpc::ServerWriter<v1::StateChunk>* writer) {
  return Finish("ExportState", core_->ExportState(*request, writer));
}

grpc::Status OptimizerService::ImportState(grpc::ServerContext*,
                                           grpc::ServerReader<v1::StateChunk>* reader,
                                           v1::ImportStateResponse* response) {
  return Finish("ImportState", core_->ImportState(reader, response));
}

}  // namespace optd::server
