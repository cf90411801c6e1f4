// Group management and weight upload. Steps: step_runner.cc; weights out: weights_io.cc;
// checkpoints and state_dict exchange: state_exchange.cc.
#include "server/optimizer_core.h"

#include <utility>

#include "absl/strings/str_cat.h"
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
                                       weights_initialized);
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

absl::Status OptimizerCore::UploadWeights(
    grpc::ServerReaderInterface<v1::UploadWeightsRequest>* reader,
    v1::UploadWeightsResponse* response) {
  v1::UploadWeightsRequest request;
  std::shared_ptr<Group> group;
  int64_t written = 0;
  while (reader->Read(&request)) {
    if (group == nullptr) {
      if (request.group().empty()) {
        return absl::InvalidArgumentError("group must be set on the first UploadWeights message");
      }
      auto found = registry_.Find(request.group());
      if (!found.ok()) return found.status();
      group = *std::move(found);
    } else if (!request.group().empty() && request.group() != group->name()) {
      return absl::InvalidArgumentError(absl::StrCat("group '", request.group(),
                                                     "' differs from this stream's group '",
                                                     group->name(), "'"));
    }
    const v1::TensorChunk& chunk = request.chunk();
    const int t = group->FindTensor(chunk.tensor());
    if (t < 0) {
      return absl::NotFoundError(absl::StrCat("chunk.tensor '", chunk.tensor(),
                                              "' is not in group '", group->name(), "'"));
    }
    const core::TensorSpec& spec = group->tensor(t);
    auto dtype = FromProtoDType(chunk.dtype(), "chunk.dtype");
    if (!dtype.ok()) return dtype.status();
    if (*dtype != spec.dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk.dtype ", DTypeStr(*dtype), " does not match tensor '",
                       spec.name, "' (", DTypeStr(spec.dtype), ")"));
    }
    const int64_t esize = static_cast<int64_t>(core::DTypeSize(spec.dtype));
    const int64_t nbytes = static_cast<int64_t>(chunk.data().size());
    if (nbytes % esize != 0) {
      return absl::InvalidArgumentError(absl::StrCat("chunk.data of tensor '", spec.name, "' has ",
                                                     nbytes, " bytes, not a multiple of ", esize));
    }
    const int64_t n = nbytes / esize;
    if (chunk.offset() < 0 || chunk.offset() > spec.numel() - n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk.offset ", chunk.offset(), " + ", n, " elements is outside tensor '", spec.name,
          "' of ", spec.numel(), " elements"));
    }
    absl::MutexLock lock(&group->mu());
    core::ConstTensorView src{chunk.data().data(), spec.dtype, n, core::MemoryKind::kHost};
    if (absl::Status s = group->params().WriteParam(t, chunk.offset(), src); !s.ok()) return s;
    group->uploaded(t).InsertMerge(chunk.offset(), chunk.offset() + n);
    written += n;
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
