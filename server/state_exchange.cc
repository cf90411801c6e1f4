// Checkpoints (SaveCheckpoint/RestoreCheckpoint through C2's checkpoint_file) and the exchange of
// optimizer states in the reference's state_dict layout (ExportState/ImportState).
#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "optd/core/quant_maps.h"
#include "optd/core/state_layout.h"
#include "server/checkpoint_dir.h"
#include "server/checkpoint_file.h"
#include "server/convert.h"
#include "server/group_snapshot.h"
#include "server/optimizer_core.h"

namespace optd::server {
namespace {

using ElementType = v1::StateElementType;

int64_t ElementSize(ElementType type) {
  switch (type) {
    case v1::STATE_ELEMENT_TYPE_UINT8:
      return 1;
    case v1::STATE_ELEMENT_TYPE_FLOAT32:
      return 4;
    case v1::STATE_ELEMENT_TYPE_INT64:
      return 8;
    default:
      return 0;
  }
}

// One state_dict array to send.
struct Array {
  std::string key;
  ElementType type;
  std::vector<int64_t> shape;
  const void* data;
  int64_t count;
};

std::vector<Array> ArraysOf(const core::TensorSpec& spec, const core::TensorState& s,
                            const int64_t* step) {
  std::vector<Array> out;
  out.push_back({"step", v1::STATE_ELEMENT_TYPE_INT64, {}, step, 1});
  const int64_t numel = spec.numel();
  if (s.eight_bit) {
    out.push_back({"state1", v1::STATE_ELEMENT_TYPE_UINT8, spec.shape, s.state1.data(), numel});
    out.push_back({"state2", v1::STATE_ELEMENT_TYPE_UINT8, spec.shape, s.state2.data(), numel});
    out.push_back({"qmap1", v1::STATE_ELEMENT_TYPE_FLOAT32, {256}, core::kSignedQuantMap, 256});
    out.push_back({"qmap2", v1::STATE_ELEMENT_TYPE_FLOAT32, {256}, core::kUnsignedQuantMap, 256});
    const int64_t blocks = static_cast<int64_t>(s.absmax1.size());
    out.push_back({"absmax1", v1::STATE_ELEMENT_TYPE_FLOAT32, {blocks}, s.absmax1.data(), blocks});
    out.push_back({"absmax2", v1::STATE_ELEMENT_TYPE_FLOAT32, {blocks}, s.absmax2.data(), blocks});
  } else {
    out.push_back(
        {"state1", v1::STATE_ELEMENT_TYPE_FLOAT32, spec.shape, s.state1_f32.data(), numel});
    out.push_back(
        {"state2", v1::STATE_ELEMENT_TYPE_FLOAT32, spec.shape, s.state2_f32.data(), numel});
  }
  if (!s.gnorm_vec.empty()) {
    const int64_t n = static_cast<int64_t>(s.gnorm_vec.size());
    out.push_back({"gnorm_vec", v1::STATE_ELEMENT_TYPE_FLOAT32, {n}, s.gnorm_vec.data(), n});
  }
  return out;
}

// An array of ImportState being assembled.
struct Incoming {
  ElementType type = v1::STATE_ELEMENT_TYPE_UNSPECIFIED;
  std::vector<int64_t> shape;
  int64_t count = 0;
  std::vector<uint8_t> bytes;
  IntervalSet received;
};

// What `key` must look like for a tensor of `numel` elements, given the type the client chose
// for state1/state2 (UINT8: 8-bit path, FLOAT32: 32-bit path).
absl::Status CheckArrayHeader(const v1::StateChunk& c, int64_t numel, int64_t* count) {
  const std::string where = absl::StrCat(" (tensor '", c.tensor(), "', key '", c.key(), "')");
  int64_t n = 1;
  for (int64_t d : c.shape()) {
    if (d < 0 || (d > 0 && n > (int64_t{1} << 50) / d)) {
      return absl::InvalidArgumentError(absl::StrCat("shape has a bad dimension", where));
    }
    n *= d;
  }
  const std::string& key = c.key();
  ElementType want;
  int64_t want_n;
  if (key == "step") {
    want = v1::STATE_ELEMENT_TYPE_INT64;
    want_n = 1;
  } else if (key == "state1" || key == "state2") {
    if (c.type() != v1::STATE_ELEMENT_TYPE_UINT8 && c.type() != v1::STATE_ELEMENT_TYPE_FLOAT32) {
      return absl::InvalidArgumentError(
          absl::StrCat("type must be UINT8 (8-bit) or FLOAT32 (32-bit path)", where));
    }
    want = c.type();
    want_n = numel;
  } else if (key == "qmap1" || key == "qmap2") {
    want = v1::STATE_ELEMENT_TYPE_FLOAT32;
    want_n = 256;
  } else if (key == "absmax1" || key == "absmax2") {
    want = v1::STATE_ELEMENT_TYPE_FLOAT32;
    want_n = core::NumBlocks(numel);
  } else if (key == "gnorm_vec") {
    want = v1::STATE_ELEMENT_TYPE_FLOAT32;
    want_n = core::kGnormHistory;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "key '", key, "' of tensor '", c.tensor(),
        "' is not one of step, state1, state2, qmap1, qmap2, absmax1, absmax2, gnorm_vec"));
  }
  if (c.type() != want) {
    return absl::InvalidArgumentError(absl::StrCat("type ", v1::StateElementType_Name(c.type()),
                                                   " is wrong; expected ",
                                                   v1::StateElementType_Name(want), where));
  }
  if (n != want_n) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape holds ", n, " elements, expected ", want_n, where));
  }
  *count = n;
  return absl::OkStatus();
}

template <typename T>
std::vector<T> AsVector(const Incoming& in) {
  std::vector<T> out(static_cast<size_t>(in.count));
  std::memcpy(out.data(), in.bytes.data(), in.bytes.size());
  return out;
}

absl::StatusOr<core::TensorState> BuildState(const std::string& tensor,
                                             std::map<std::string, Incoming>& arrays) {
  auto need = [&](const char* key) -> absl::StatusOr<Incoming*> {
    auto it = arrays.find(key);
    if (it == arrays.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("key '", key, "' of tensor '", tensor, "' is missing"));
    }
    return &it->second;
  };
  core::TensorState s;
  auto step = need("step");
  if (!step.ok()) return step.status();
  std::memcpy(&s.step, (*step)->bytes.data(), 8);
  auto s1 = need("state1");
  if (!s1.ok()) return s1.status();
  auto s2 = need("state2");
  if (!s2.ok()) return s2.status();
  if ((*s1)->type != (*s2)->type) {
    return absl::InvalidArgumentError(
        absl::StrCat("state1 and state2 of tensor '", tensor, "' have different types"));
  }
  s.eight_bit = (*s1)->type == v1::STATE_ELEMENT_TYPE_UINT8;
  if (s.eight_bit) {
    s.state1 = AsVector<uint8_t>(**s1);
    s.state2 = AsVector<uint8_t>(**s2);
    auto a1 = need("absmax1");
    if (!a1.ok()) return a1.status();
    auto a2 = need("absmax2");
    if (!a2.ok()) return a2.status();
    s.absmax1 = AsVector<float>(**a1);
    s.absmax2 = AsVector<float>(**a2);
    for (const auto& [key, table] : {std::pair<const char*, const float*>{"qmap1", core::kSignedQuantMap},
                                     {"qmap2", core::kUnsignedQuantMap}}) {
      auto it = arrays.find(key);
      if (it != arrays.end() && std::memcmp(it->second.bytes.data(), table, 1024) != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            key, " of tensor '", tensor,
            "' differs from bitsandbytes' fixed table; only the standard maps are supported"));
      }
    }
  } else {
    s.state1_f32 = AsVector<float>(**s1);
    s.state2_f32 = AsVector<float>(**s2);
  }
  if (auto it = arrays.find("gnorm_vec"); it != arrays.end()) s.gnorm_vec = AsVector<float>(it->second);
  return s;
}

}  // namespace

absl::Status OptimizerCore::ExportState(const v1::ExportStateRequest& request,
                                        StateSink* sink) {
  auto found = FindGroup(request.group());
  if (!found.ok()) return found.status();
  Group& group = **found;
  // A tensor named twice is refused before anything is copied.
  if (absl::Status s = CheckTensorList(request.tensors(), options_.limits); !s.ok()) return s;
  auto named = group.FindTensors(request.tensors());
  if (!named.ok()) return named.status();
  std::vector<int> tensors = *std::move(named);
  if (tensors.empty()) {
    for (int t = 0; t < group.num_tensors(); ++t) tensors.push_back(t);
  }
  std::sort(tensors.begin(), tensors.end());
  // Sent as slices over this copy; it lives until gRPC has written the last of them.
  auto states = std::make_shared<std::vector<core::TensorState>>();
  {
    // One consistent version of every tensor's state.
    absl::MutexLock lock(&group.mu());
    for (int t : tensors) {
      auto s = group.params().ExportState(t);
      if (!s.ok()) return s.status();
      states->push_back(*std::move(s));
    }
  }
  v1::StateChunk header;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const core::TensorSpec& spec = group.tensor(tensors[i]);
    core::TensorState& state = (*states)[i];
    for (const Array& a : ArraysOf(spec, state, &state.step)) {
      const int64_t esize = ElementSize(a.type);
      const int64_t piece = std::max<int64_t>(1, options_.chunk_bytes / esize);
      for (int64_t off = 0; off < a.count || off == 0; off += piece) {
        const int64_t m = std::min(piece, a.count - off);
        header.Clear();
        header.set_group(group.name());
        header.set_tensor(spec.name);
        header.set_key(a.key);
        header.set_type(a.type);
        for (int64_t d : a.shape) header.add_shape(d);
        header.set_offset(off);
        if (!sink->Send(header, static_cast<const char*>(a.data) + off * esize,
                        static_cast<size_t>(std::max<int64_t>(m, 0) * esize), states)) {
          return absl::CancelledError("the client went away during ExportState");
        }
        if (a.count == 0) break;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status OptimizerCore::ImportState(StateSource* source,
                                        v1::ImportStateResponse* response) {
  v1::StateChunk c;
  Payload data;
  std::shared_ptr<Group> group;
  std::map<int, std::map<std::string, Incoming>> incoming;  // tensor -> key -> array
  while (true) {
    auto more = source->Read(&c, &data);
    if (!more.ok()) return more.status();
    if (!*more) break;
    if (group == nullptr) {
      if (c.group().empty()) {
        return absl::InvalidArgumentError("group must be set on the first ImportState message");
      }
      auto found = FindGroup(c.group());
      if (!found.ok()) return found.status();
      group = *std::move(found);
    } else if (!c.group().empty() && c.group() != group->name()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "group '", c.group(), "' differs from this stream's group '", group->name(), "'"));
    }
    const int t = group->FindTensor(c.tensor());
    if (t < 0) {
      return absl::NotFoundError(absl::StrCat("tensor '", c.tensor(), "' is not in group '",
                                              group->name(), "'"));
    }
    Incoming& in = incoming[t][c.key()];
    if (in.bytes.empty() && in.count == 0) {
      int64_t count = 0;
      if (absl::Status s = CheckArrayHeader(c, group->tensor(t).numel(), &count); !s.ok()) return s;
      in.type = c.type();
      in.shape.assign(c.shape().begin(), c.shape().end());
      in.count = count;
      in.bytes.resize(static_cast<size_t>(count * ElementSize(c.type())));
    } else if (c.type() != in.type) {
      return absl::InvalidArgumentError(absl::StrCat("type of tensor '", c.tensor(), "' key '",
                                                     c.key(), "' changed between chunks"));
    }
    const int64_t esize = ElementSize(in.type);
    const int64_t nbytes = static_cast<int64_t>(data.size());
    if (nbytes % esize != 0 || c.offset() < 0 || c.offset() > in.count - nbytes / esize) {
      return absl::InvalidArgumentError(absl::StrCat(
          "offset ", c.offset(), " + ", nbytes, " bytes is outside tensor '", c.tensor(),
          "' key '", c.key(), "' of ", in.count, " elements"));
    }
    if (!in.received.InsertDisjoint(c.offset(), c.offset() + nbytes / esize)) {
      return absl::InvalidArgumentError(absl::StrCat("offset ", c.offset(), " of tensor '",
                                                     c.tensor(), "' key '", c.key(),
                                                     "' overlaps an earlier chunk"));
    }
    data.CopyTo(in.bytes.data() + c.offset() * esize);
  }
  if (group == nullptr) return absl::InvalidArgumentError("ImportState received no message");

  std::vector<std::pair<int, core::TensorState>> states;
  const bool clipping = [&] {
    absl::MutexLock lock(&group->mu());
    return group->params().options().percentile_clipping < 100;
  }();
  for (auto& [t, arrays] : incoming) {
    const std::string& name = group->tensor(t).name;
    for (const auto& [key, in] : arrays) {
      if (in.received.covered() != in.count) {
        return absl::InvalidArgumentError(absl::StrCat("key '", key, "' of tensor '", name,
                                                       "' is incomplete: ", in.received.covered(),
                                                       " of ", in.count, " elements arrived"));
      }
    }
    auto state = BuildState(name, arrays);
    if (!state.ok()) return state.status();
    if (absl::Status s = core::ValidateTensorState(*state, group->tensor(t).numel(), clipping);
        !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", s.message()));
    }
    states.emplace_back(t, *std::move(state));
  }
  absl::MutexLock lock(&group->mu());
  // All or nothing: keep the old states until every import succeeded.
  std::vector<std::pair<int, core::TensorState>> old;
  for (const auto& [t, state] : states) {
    auto prev = group->params().ExportState(t);
    if (!prev.ok()) return prev.status();
    old.emplace_back(t, *std::move(prev));
  }
  for (size_t i = 0; i < states.size(); ++i) {
    if (absl::Status s = group->params().ImportState(states[i].first, states[i].second); !s.ok()) {
      for (size_t j = 0; j < i; ++j) {
        (void)group->params().ImportState(old[j].first, old[j].second);
      }
      return s;
    }
  }
  NoteChange();
  response->set_tensors(static_cast<int32_t>(states.size()));
  return absl::OkStatus();
}

absl::StatusOr<std::string> OptimizerCore::CheckpointPath(const std::string& name) const {
  if (options_.checkpoint_dir.empty()) {
    return absl::FailedPreconditionError(
        "checkpoints are disabled: start optd with --checkpoint_dir");
  }
  if (name.empty()) return absl::InvalidArgumentError("name must not be empty");
  if (absl::StrContains(name, "/") || absl::StrContains(name, "..") ||
      name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name '", PrintableName(name), "' must be a plain file name (no '/', no '..')"));
  }
  if (absl::Status s = CheckName(name, "name", options_.limits); !s.ok()) return s;
  if (IsCheckpointTempName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name '", name, "' looks like a temporary file (\"*.tmp-<pid>-<suffix>\"), which the "
        "server removes at start"));
  }
  return absl::StrCat(options_.checkpoint_dir, "/", name);
}

absl::Status OptimizerCore::HideCheckpointDir(const absl::Status& status) const {
  if (status.ok() || options_.checkpoint_dir.empty()) return status;
  // The directory is absolute and normalized (OptimizerCore's constructor).
  const std::string& dir = options_.checkpoint_dir;
  std::string message = absl::StrReplaceAll(status.message(), {{dir + "/", ""}});
  if (dir.size() > 1) message = absl::StrReplaceAll(message, {{dir, "<checkpoint_dir>"}});
  return absl::Status(status.code(), message);
}

absl::Status OptimizerCore::SaveCheckpoint(const v1::SaveCheckpointRequest& request,
                                           v1::SaveCheckpointResponse* response) {
  auto path = CheckpointPath(request.name());
  if (!path.ok()) return path.status();
  std::vector<std::shared_ptr<Group>> groups;
  if (request.groups().empty()) {
    groups = registry_.List();
  } else {
    for (const std::string& name : request.groups()) {
      auto g = FindGroup(name);
      if (!g.ok()) {
        return absl::Status(g.status().code(), absl::StrCat("groups: ", g.status().message()));
      }
      groups.push_back(*std::move(g));
    }
  }
  auto writer = CheckpointWriter::Create(*path);
  if (!writer.ok()) return HideCheckpointDir(writer.status());
  for (const auto& g : groups) {
    // Copied under the group's mutex, written without it (Note [No I/O under a group's mutex]).
    GroupRecord record;
    absl::StatusOr<std::unique_ptr<GroupSnapshot>> snap;
    {
      absl::MutexLock lock(&g->mu());
      record = g->record();
      snap = GroupSnapshot::Copy(g->params());
    }
    if (!snap.ok()) return snap.status();
    if (absl::Status s = (*writer)->AddGroup(record, **snap); !s.ok()) return HideCheckpointDir(s);
    response->add_groups(g->name());
  }
  auto bytes = (*writer)->Commit();
  if (!bytes.ok()) return HideCheckpointDir(bytes.status());
  metrics_->RecordCheckpointSaved();
  // The name, not the server's path: clients address checkpoints by name.
  response->set_path(request.name());
  response->set_bytes(*bytes);
  return absl::OkStatus();
}

absl::Status OptimizerCore::RestoreCheckpoint(const v1::RestoreCheckpointRequest& request,
                                              v1::RestoreCheckpointResponse* response) {
  auto path = CheckpointPath(request.name());
  if (!path.ok()) return path.status();
  auto reader = CheckpointReader::Open(*path);
  if (!reader.ok()) return HideCheckpointDir(reader.status());
  const std::vector<GroupRecord>& records = (*reader)->groups();
  std::vector<size_t> selected;
  if (request.groups().empty()) {
    for (size_t i = 0; i < records.size(); ++i) selected.push_back(i);
  } else {
    for (const std::string& name : request.groups()) {
      auto it = std::find_if(records.begin(), records.end(),
                             [&](const GroupRecord& r) { return r.name == name; });
      if (it == records.end()) {
        return absl::NotFoundError(absl::StrCat("groups: '", PrintableName(name),
                                                "' is not in checkpoint '", request.name(), "'"));
      }
      selected.push_back(static_cast<size_t>(it - records.begin()));
    }
  }
  // Every record is checked like a CreateGroup before anything is built: the file's checksum
  // only proves that the bytes are the ones written, not that a server wrote them.
  for (size_t i : selected) {
    const GroupRecord& record = records[i];
    if (absl::Status s = ValidateRecord(record, options_.limits); !s.ok()) {
      const bool printable = CheckName(record.name, "group", options_.limits).ok();
      return absl::Status(
          s.code() == absl::StatusCode::kInvalidArgument ? absl::StatusCode::kDataLoss : s.code(),
          absl::StrCat("checkpoint '", request.name(), "', ",
                       printable ? absl::StrCat("group '", record.name, "'")
                                 : absl::StrCat("group #", i),
                       ": ", s.message()));
    }
  }
  // Build every group first so that a failure leaves the live groups untouched.
  std::vector<NewGroup> restored;
  for (size_t i : selected) {
    const bool new_name = !registry_.Find(records[i].name).ok();
    auto made = MakeGroup(records[i], /*weights_initialized=*/true, new_name);
    if (!made.ok()) {
      return absl::Status(made.status().code(),
                          absl::StrCat("restoring checkpoint '", request.name(), "': ",
                                       made.status().message()));
    }
    absl::MutexLock lock(&made->group->mu());
    if (absl::Status s = (*reader)->RestoreGroup(i, &made->group->params()); !s.ok()) {
      return HideCheckpointDir(s);
    }
    restored.push_back(*std::move(made));
  }
  for (NewGroup& made : restored) {
    registry_.Replace(made.group);
    made.ticket.reset();
    absl::MutexLock lock(&made.group->mu());
    made.group->FillInfo(response->add_groups());
  }
  NoteChange();
  UpdateEngineMetrics();
  return absl::OkStatus();
}

}  // namespace optd::server
