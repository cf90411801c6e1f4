#include "server/service.h"

#include <cstdio>
#include <optional>
#include <string>
#include <string_view>

#include "server/auth_streams.h"
#include "server/chunk_codec.h"
#include "server/colocate_service.h"
#include "server/grpc_data_streams.h"
#include "absl/strings/str_cat.h"
#include "server/limits.h"
#include "server/limits_streams.h"
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

absl::StatusOr<Caller> OptimizerService::CallerOf(const grpc::ServerContextBase& context) const {
  std::optional<absl::string_view> authorization;
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization = absl::string_view(it->second.data(), it->second.size());
  }
  return authorizer_->Authenticate(authorization);
}

std::string OptimizerService::PrincipalOf(const grpc::ServerContextBase& context) const {
  std::optional<absl::string_view> authorization;
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization = absl::string_view(it->second.data(), it->second.size());
  }
  return server::PrincipalOf(authorizer_->enabled(), authorization);
}

absl::Status OptimizerService::Authorize(const grpc::ServerContextBase& context, Action action,
                                         absl::string_view group) const {
  auto caller = CallerOf(context);
  if (!caller.ok()) return caller.status();
  return authorizer_->Check(*caller, action, group);
}

grpc::Status OptimizerService::CreateGroup(grpc::ServerContext* context,
                                           const v1::CreateGroupRequest* request,
                                           v1::GroupInfo* response) {
  absl::Status s = Authorize(*context, Action::kCreateGroup, request->group());
  if (s.ok()) s = core_->CreateGroup(*request, response);
  return Finish("CreateGroup", s);
}

grpc::ServerReadReactor<grpc::ByteBuffer>* OptimizerService::UploadWeights(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  StreamHandler handler = [this, response, caller = CallerOf(*context)](MessageStream* stream) {
    if (!caller.ok()) return Finish("UploadWeights", caller.status());
    GrpcUploadStream upload(stream);
    AuthorizedUploadStream authorized(&upload, authorizer_, *caller);
    v1::UploadWeightsResponse out;
    absl::Status s = core_->UploadWeights(&authorized, &out);
    if (s.ok()) *response = EncodeMessage(out);
    return Finish("UploadWeights", s);
  };
  return new ReadStreamCall(Admitted(context, "UploadWeights", std::move(handler)));
}

grpc::Status OptimizerService::GetGroup(grpc::ServerContext* context,
                                        const v1::GetGroupRequest* request,
                                        v1::GroupInfo* response) {
  absl::Status s = Authorize(*context, Action::kGetGroup, request->group());
  if (s.ok()) s = core_->GetGroup(*request, response);
  return Finish("GetGroup", s);
}

grpc::Status OptimizerService::ListGroups(grpc::ServerContext* context,
                                          const v1::ListGroupsRequest* request,
                                          v1::ListGroupsResponse* response) {
  auto caller = CallerOf(*context);
  absl::Status s = caller.status();
  if (s.ok()) s = authorizer_->CheckRole(*caller, Action::kListGroups);
  if (s.ok()) {
    // Only the groups the token covers (Note [Roles] in auth_policy.h); pages fill with those.
    OptimizerCore::GroupFilter visible;
    if (!(*caller)->CoversAll()) {
      visible = [&caller](const std::string& group) { return (*caller)->Covers(group); };
    }
    s = core_->ListGroups(*request, response, visible);
  }
  return Finish("ListGroups", s);
}

grpc::Status OptimizerService::DeleteGroup(grpc::ServerContext* context,
                                           const v1::DeleteGroupRequest* request,
                                           v1::DeleteGroupResponse*) {
  absl::Status s = Authorize(*context, Action::kDeleteGroup, request->group());
  if (s.ok()) s = core_->DeleteGroup(*request);
  return Finish("DeleteGroup", s);
}

grpc::Status OptimizerService::UpdateHyperparameters(
    grpc::ServerContext* context, const v1::UpdateHyperparametersRequest* request,
    v1::GroupInfo* response) {
  absl::Status s = Authorize(*context, Action::kUpdateHyperparameters, request->group());
  if (s.ok()) s = core_->UpdateHyperparameters(*request, response);
  return Finish("UpdateHyperparameters", s);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* OptimizerService::Step(
    grpc::CallbackServerContext* context) {
  StreamHandler handler = [this, caller = CallerOf(*context),
                           principal = PrincipalOf(*context)](MessageStream* stream) {
    if (!caller.ok()) return Finish("Step", caller.status());
    GrpcStepStream step(stream);
    AuthorizedStepStream authorized(&step, authorizer_, *caller);
    return Finish("Step", core_->Step(&authorized, principal));
  };
  return new BidiStreamCall(Admitted(context, "Step", std::move(handler)));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* OptimizerService::Subscribe(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  StreamHandler handler = [this, request = *request,
                           caller = CallerOf(*context)](MessageStream* stream) {
    v1::SubscribeRequest parsed;
    absl::Status s = caller.status();
    if (s.ok()) s = DecodeMessage(request, &parsed);
    if (s.ok()) s = authorizer_->Check(*caller, Action::kSubscribe, parsed.group());
    GrpcWeightsSink sink(stream);
    if (s.ok()) s = core_->Subscribe(parsed, &sink);
    return Finish("Subscribe", s);
  };
  return new WriteStreamCall(Admitted(context, "Subscribe", std::move(handler)));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* OptimizerService::PullWeights(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  StreamHandler handler = [this, request = *request,
                           caller = CallerOf(*context)](MessageStream* stream) {
    v1::PullWeightsRequest parsed;
    absl::Status s = caller.status();
    if (s.ok()) s = DecodeMessage(request, &parsed);
    if (s.ok()) s = authorizer_->Check(*caller, Action::kPullWeights, parsed.group());
    GrpcWeightsSink sink(stream);
    if (s.ok()) s = core_->PullWeights(parsed, &sink);
    return Finish("PullWeights", s);
  };
  return new WriteStreamCall(Admitted(context, "PullWeights", std::move(handler)));
}

grpc::Status OptimizerService::SaveCheckpoint(grpc::ServerContext* context,
                                              const v1::SaveCheckpointRequest* request,
                                              v1::SaveCheckpointResponse* response) {
  constexpr Action kAction = Action::kSaveCheckpoint;
  auto caller = CallerOf(*context);
  absl::Status s = caller.status();
  if (s.ok()) s = authorizer_->CheckCheckpoint(*caller, kAction, request->name());
  if (!s.ok()) return Finish("SaveCheckpoint", s);
  if (!request->groups().empty() || (*caller)->CoversAll()) {
    for (const std::string& g : request->groups()) {
      if (s = authorizer_->Check(*caller, kAction, g); !s.ok()) return Finish("SaveCheckpoint", s);
    }
    return Finish("SaveCheckpoint", core_->SaveCheckpoint(*request, response));
  }
  // No list from a token for some groups: "every group" is every group it covers.
  v1::SaveCheckpointRequest scoped;
  scoped.set_name(request->name());
  for (const auto& g : core_->registry().List()) {
    if ((*caller)->Covers(g->name())) scoped.add_groups(g->name());
  }
  if (scoped.groups().empty()) {
    return Finish("SaveCheckpoint", absl::FailedPreconditionError(
                                        "SaveCheckpoint: no group in this token's scope"));
  }
  return Finish("SaveCheckpoint", core_->SaveCheckpoint(scoped, response));
}

grpc::Status OptimizerService::RestoreCheckpoint(grpc::ServerContext* context,
                                                 const v1::RestoreCheckpointRequest* request,
                                                 v1::RestoreCheckpointResponse* response) {
  constexpr Action kAction = Action::kRestoreCheckpoint;
  auto caller = CallerOf(*context);
  absl::Status s = caller.status();
  if (s.ok()) s = authorizer_->CheckCheckpoint(*caller, kAction, request->name());
  // Without a list the file decides which groups are replaced: only for a token of every group.
  if (s.ok() && request->groups().empty()) s = authorizer_->CheckEveryGroup(*caller, kAction);
  for (int i = 0; s.ok() && i < request->groups_size(); ++i) {
    s = authorizer_->Check(*caller, kAction, request->groups(i));
  }
  if (s.ok()) s = core_->RestoreCheckpoint(*request, response);
  return Finish("RestoreCheckpoint", s);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* OptimizerService::ExportState(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  StreamHandler handler = [this, request = *request,
                           caller = CallerOf(*context)](MessageStream* stream) {
    v1::ExportStateRequest parsed;
    absl::Status s = caller.status();
    if (s.ok()) s = DecodeMessage(request, &parsed);
    if (s.ok()) s = authorizer_->Check(*caller, Action::kExportState, parsed.group());
    GrpcStateSink sink(stream);
    if (s.ok()) s = core_->ExportState(parsed, &sink);
    return Finish("ExportState", s);
  };
  return new WriteStreamCall(Admitted(context, "ExportState", std::move(handler)));
}

grpc::ServerReadReactor<grpc::ByteBuffer>* OptimizerService::ImportState(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  StreamHandler handler = [this, response, caller = CallerOf(*context)](MessageStream* stream) {
    if (!caller.ok()) return Finish("ImportState", caller.status());
    GrpcStateSource source(stream);
    AuthorizedStateSource authorized(&source, authorizer_, *caller);
    v1::ImportStateResponse out;
    absl::Status s = core_->ImportState(&authorized, &out);
    if (s.ok()) *response = EncodeMessage(out);
    return Finish("ImportState", s);
  };
  return new ReadStreamCall(Admitted(context, "ImportState", std::move(handler)));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* OptimizerService::Colocate(
    grpc::CallbackServerContext* context) {
  auto caller = CallerOf(*context);
  ColocateCaller lease;
  lease.principal = PrincipalOf(*context);
  lease.client = absl::StrCat(lease.principal, "@", PeerAddress(context->peer()));
  if (caller.ok()) {
    lease.authorize = [this, grant = *caller](const std::string& group) {
      return authorizer_->Check(grant, Action::kColocate, group);
    };
  }
  StreamHandler handler = [this, caller_status = caller.status(),
                           lease = std::move(lease)](MessageStream* stream) {
    if (!caller_status.ok()) return Finish("Colocate", caller_status);
    return Finish("Colocate", ServeColocate(*core_, stream, lease));
  };
  return new BidiStreamCall(std::move(handler));
}

}  // namespace optd::server
