// Group management and weight upload. Steps: step_runner.cc; weights out: weights_io.cc;
// checkpoints and state_dict exchange: state_exchange.cc.
#include "server/optimizer_core.h"

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/chunk_checks.h"
#include "server/convert.h"

namespace optd::server {

namespace {

// The checkpoint directory as an absolute path without a trailing slash, so that
// "<dir>/<name>" is the only form a checkpoint path takes and the directory is a distinctive
// string in messages (HideCheckpointDir relies on both).
CoreOptions Normalized(CoreOptions options) {
  std::string& dir = options.checkpoint_dir;
  if (dir.empty()) return options;
  std::error_code ec;
  const std::filesystem::path absolute = std::filesystem::absolute(dir, ec);
  if (!ec) dir = absolute.lexically_normal().string();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return options;
}

}  // namespace

OptimizerCore::OptimizerCore(core::Engine* engine, Metrics* metrics, CoreOptions options)
    : engine_(engine),
      metrics_(metrics),
      options_(Normalized(std::move(options))),
      admission_(engine, options_.limits,
                 [this] { return static_cast<int>(registry_.List().size()); }),
      streams_(options_.limits.max_streams, options_.limits.max_streams_per_peer),
      regions_(options_.limits, metrics) {}

absl::StatusOr<OptimizerCore::NewGroup> OptimizerCore::MakeGroup(GroupRecord record,
                                                                 bool weights_initialized,
                                                                 bool new_name) {
  NewGroup made;
  auto ticket = admission_.Admit(record.name, record.spec, new_name);
  if (!ticket.ok()) return ticket.status();
  made.ticket = *std::move(ticket);
  auto params = engine_->CreateGroup(record.spec);
  if (!params.ok()) return params.status();
  auto metrics = MetricsFor(record.name);
  made.group = std::make_shared<Group>(std::move(record), *std::move(params), std::move(metrics),
                                       weights_initialized, engine_);
  {
    absl::MutexLock lock(&made.group->mu());
    made.group->UpdateByteMetrics();
  }
  UpdateEngineMetrics();
  return made;
}

absl::StatusOr<std::shared_ptr<Group>> OptimizerCore::FindGroup(const std::string& name) const {
  if (absl::Status s = CheckName(name, "group", options_.limits); !s.ok()) return s;
  return registry_.Find(name);
}

CoreProgress OptimizerCore::Progress() const {
  CoreProgress p;
  p.changes = changes_.load(std::memory_order_relaxed);
  for (const auto& group : registry_.List()) {
    absl::MutexLock lock(&group->mu());
    p.versions[group->name()] = group->record().version;
  }
  return p;
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
  auto record = RecordFromCreateRequest(request, options_.limits);
  if (!record.ok()) return record.status();
  if (registry_.Find(request.group()).ok()) {
    return absl::AlreadyExistsError(absl::StrCat("group '", request.group(), "' already exists"));
  }
  auto made = MakeGroup(*std::move(record), /*weights_initialized=*/false, /*new_name=*/true);
  if (!made.ok()) return made.status();
  if (absl::Status s = registry_.Insert(made->group); !s.ok()) return s;
  made->ticket.reset();
  NoteChange();
  absl::MutexLock lock(&made->group->mu());
  made->group->FillInfo(info);
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
      auto found = FindGroup(group_name);
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
    NoteChange();
    written += c->n;
  }
  if (group == nullptr) return absl::InvalidArgumentError("UploadWeights received no message");
  response->set_elements_written(written);
  absl::MutexLock lock(&group->mu());
  response->set_weights_initialized(group->weights_initialized());
  return absl::OkStatus();
}

absl::Status OptimizerCore::GetGroup(const v1::GetGroupRequest& request, v1::GroupInfo* info) {
  auto group = FindGroup(request.group());
  if (!group.ok()) return group.status();
  absl::MutexLock lock(&(*group)->mu());
  (*group)->FillInfo(info);
  return absl::OkStatus();
}

absl::Status OptimizerCore::ListGroups(const v1::ListGroupsRequest& request,
                                       v1::ListGroupsResponse* response,
                                       const GroupFilter& visible) {
  const Limits& limits = options_.limits;
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must be >= 0, got ", request.page_size()));
  }
  const int page_size =
      request.page_size() == 0
          ? std::min(limits.default_list_page_size, limits.max_list_page_size)
          : std::min(request.page_size(), limits.max_list_page_size);
  // The token is the last name of the previous page: pages stay in name order even while groups
  // come and go between them.
  if (!request.page_token().empty()) {
    if (absl::Status s = CheckName(request.page_token(), "page_token", limits); !s.ok()) return s;
  }
  // A page stays well below the message limit however large its groups' descriptions are (a
  // group's description fits one message: it came in one CreateGroupRequest).
  constexpr int64_t kHeaderRoom = 64 << 10;
  const int64_t budget = std::max<int64_t>(kHeaderRoom, options_.max_message_bytes - kHeaderRoom);
  const std::vector<std::shared_ptr<Group>> groups = registry_.List();  // in name order
  auto it = std::upper_bound(
      groups.begin(), groups.end(), request.page_token(),
      [](const std::string& token, const std::shared_ptr<Group>& g) { return token < g->name(); });
  int64_t bytes = 0;
  for (; it != groups.end() && response->groups_size() < page_size; ++it) {
    if (visible && !visible((*it)->name())) continue;
    v1::GroupInfo info;
    {
      absl::MutexLock lock(&(*it)->mu());
      (*it)->FillInfo(&info);
    }
    const int64_t size = static_cast<int64_t>(info.ByteSizeLong()) + 8;  // + field framing
    if (response->groups_size() > 0 && bytes + size > budget) break;
    bytes += size;
    *response->add_groups() = std::move(info);
  }
  if (it != groups.end() && response->groups_size() > 0) {
    response->set_next_page_token(response->groups(response->groups_size() - 1).group());
  }
  return absl::OkStatus();
}

absl::Status OptimizerCore::DeleteGroup(const v1::DeleteGroupRequest& request) {
  if (absl::Status s = CheckName(request.group(), "group", options_.limits); !s.ok()) return s;
  if (absl::Status s = registry_.Remove(request.group()); !s.ok()) return s;
  NoteChange();
  UpdateEngineMetrics();
  return absl::OkStatus();
}

absl::Status OptimizerCore::UpdateHyperparameters(
    const v1::UpdateHyperparametersRequest& request, v1::GroupInfo* info) {
  auto group = FindGroup(request.group());
  if (!group.ok()) return group.status();
  absl::MutexLock lock(&(*group)->mu());
  core::ParamGroup& params = (*group)->params();
  const core::AdamWOptions merged =
      MergeHyperparameters(request.hyperparameters(), params.options());
  if (absl::Status s = core::ValidateOptions(merged); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("hyperparameters: ", s.message()));
  }
  if (absl::Status s = CheckLearningRate(merged.lr, "hyperparameters.lr", options_.limits);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = params.SetOptions(merged); !s.ok()) return s;
  (*group)->record().spec.options = merged;
  NoteChange();
  (*group)->FillInfo(info);
  return absl::OkStatus();
}

}  // namespace optd::server
