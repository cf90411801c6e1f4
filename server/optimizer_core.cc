// Group management and weight upload. Steps: step_runner.cc; weights out: weights_io.cc;
// checkpoints and state_dict exchange: state_exchange.cc.
#include "server/optimizer_core.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/chunk_checks.h"
#include "server/convert.h"

namespace optd::server {

OptimizerCore::OptimizerCore(core::Engine* engine, Metrics* metrics, CoreOptions options)
    : engine_(engine), metrics_(metrics), options_(std::move(options)) {}

absl::StatusOr<std::shared_ptr<Group>> OptimizerCore::MakeGroup(GroupRecord record,
                                                                bool weights_initialized) {
  auto params = engine_->CreateGroup(record.spec);
  if (!params.ok()) return params.status();
  auto metrics = MetricsFor(record.name);
  auto group = std::make_shared<Group>(std::move(record), *std::move(params), std::move(metrics),
                                       weights_initialized, engine_);
  {
    absl::MutexLock lock(&group->mu());
    group->UpdateByteMetrics(engine_->backend());
  }
  UpdateEngineMetrics();
  return group;
}

std::shared_ptr<GroupMetrics> OptimizerCore::MetricsFor(const std::string& name) {
  absl::MutexLock lock(&metrics_mu_);
  std::shared_ptr<GroupMetrics> m = group_metrics_[name].lock();
  if (m == nullptr) {
    // The deleter takes the same lock, so a new group of this name never picks up series that
    // a dying GroupMetrics is about to remove.
    m = std::shared_ptr<GroupMetrics>(metrics_->ForGroup(name).release(), [this](GroupMetrics* p) {
      absl::MutexLock lock(&metrics_mu_);
      delete p;
    });
    group_metrics_[name] = m;
  }
  return m;
}

void OptimizerCore::UpdateEngineMetrics() { metrics_->UpdateEngine(engine_->Stats()); }

void OptimizerCore::BeginShutdown() {
  shutting_down_.store(true);
  for (auto& g : registry_.List()) g->CloseSubscribers();
}

absl::Status OptimizerCore::CreateGroup(const v1::CreateGroupRequest& request,
                                        v1::GroupInfo* info) {
  auto record = RecordFromCreateRequest(request);
  if (!record.ok()) return record.status();
  if (registry_.Find(request.group()).ok()) {
    return absl::AlreadyExistsError(absl::StrCat("group '", request.group(), "' already exists"));
  }
  auto group = MakeGroup(*std::move(record), /*weights_initialized=*/false);
  if (!group.ok()) return group.status();
  if (absl::Status s = registry_.Insert(*group); !s.ok()) return s;
  absl::MutexLock lock(&(*group)->mu());
  (*group)->FillInfo(info);
  return absl::OkStatus();
}

absl::Status OptimizerCore::UploadWeights(UploadStream* stream,
                                          v1::UploadWeightsResponse* response) {
  std::string group_name;
  ChunkRef chunk;
  std::shared_ptr<Group> group;
  int64_t written = 0;
  WireBuffer staging;  // for a payload spread over several receive slices
  while (true) {
    auto more = stream->Read(&group_name, &chunk);
    if (!more.ok()) return more.status();
    if (!*more) break;
    if (group == nullptr) {
      if (group_name.empty()) {
        return absl::InvalidArgumentError("group must be set on the first UploadWeights message");
      }
      auto found = registry_.Find(group_name);
      if (!found.ok()) return found.status();
      group = *std::move(found);
    } else if (!group_name.empty() && group_name != group->name()) {
      return absl::InvalidArgumentError(absl::StrCat("group '", group_name,
                                                     "' differs from this stream's group '",
                                                     group->name(), "'"));
    }
    auto c = CheckUploadChunk(*group, chunk);
    if (!c.ok()) return c.status();
    const void* src = chunk.data.contiguous();
    // Staged in the engine's host memory (page-locked on CUDA, where a copy from gRPC's own
    // pageable buffers would go through the driver's bounce buffers at a fraction of the bus
    // speed), or joined when the payload spans several receive slices. Outside the group's
    // mutex.
    if (chunk.data.size() > 0 &&
        (src == nullptr || engine_->backend() == core::Backend::kCuda)) {
      if (staging.size() < chunk.data.size()) staging = WireBuffer(chunk.data.size(), engine_);
      chunk.data.CopyTo(staging.data());
      src = staging.data();
    }
    absl::MutexLock lock(&group->mu());
    core::ConstTensorView view{src, c->dtype, c->n, core::MemoryKind::kHost};
    if (absl::Status s = group->params().WriteParam(c->tensor, c->offset, view); !s.ok()) return s;
    group->uploaded(c->tensor).InsertMerge(c->offset, c->offset + c->n);
    written += c->n;
  }
  if (group == nullptr) return absl::InvalidArgumentError("UploadWeights received no message");
  response->set_elements_written(written);
  absl::MutexLock lock(&group->mu());
  response->set_weights_initialized(group->weights_initialized());
  return absl::OkStatus();
}

absl::Status OptimizerCore::GetGroup(const v1::GetGroupRequest& request, v1::GroupInfo* info) {
  auto group = registry_.Find(request.group());
  if (!group.ok()) return group.status();
  absl::MutexLock lock(&(*group)->mu());
  (*group)->FillInfo(info);
  return absl::OkStatus();
}

absl::Status OptimizerCore::ListGroups(v1::ListGroupsResponse* response) {
  for (const auto& group : registry_.List()) {
    absl::MutexLock lock(&group->mu());
    group->FillInfo(response->add_groups());
  }
  return absl::OkStatus();
}

absl::Status OptimizerCore::DeleteGroup(const v1::DeleteGroupRequest& request) {
  if (absl::Status s = registry_.Remove(request.group()); !s.ok()) return s;
  UpdateEngineMetrics();
  return absl::OkStatus();
}

absl::Status OptimizerCore::UpdateHyperparameters(
    const v1::UpdateHyperparametersRequest& request, v1::GroupInfo* info) {
  auto group = registry_.Find(request.group());
  if (!group.ok()) return group.status();
  absl::MutexLock lock(&(*group)->mu());
  core::ParamGroup& params = (*group)->params();
  const core::AdamWOptions merged =
      MergeHyperparameters(request.hyperparameters(), params.options());
  if (absl::Status s = core::ValidateOptions(merged); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("hyperparameters: ", s.message()));
  }
  if (absl::Status s = params.SetOptions(merged); !s.ok()) return s;
  (*group)->record().spec.options = merged;
  (*group)->FillInfo(info);
  return absl::OkStatus();
}

}  // namespace optd::server
