// Weights out of the server: Subscribe (every new version to every subscriber) and PullWeights.
// Both copy the weights under the group's mutex (Group::Snapshot) and send outside it, as slices
// over the copy (Note [No I/O under a group's mutex], Note [Chunk messages without protobuf
// copies]).
#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/convert.h"
#include "server/optimizer_core.h"

namespace optd::server {
namespace {

// Sends one version as chunks; the last carries version_complete.
absl::Status SendSnapshot(Group& group, const std::shared_ptr<const WeightSnapshot>& snap,
                          int64_t chunk_bytes, WeightsSink* sink) {
  for (size_t i = 0; i < snap->tensors.size(); ++i) {
    const core::TensorSpec& spec = group.tensor(snap->tensors[i]);
    const int64_t esize = static_cast<int64_t>(core::DTypeSize(spec.dtype));
    const int64_t piece = ElementsPerMessage(chunk_bytes, spec.dtype);
    const int64_t numel = spec.numel();
    for (int64_t off = 0; off < numel || (numel == 0 && off == 0); off += piece) {
      const int64_t m = std::min(piece, numel - off);
      OutChunk out;
      out.tensor = &spec.name;
      out.offset = off;
      out.dtype = ToProtoDType(spec.dtype);
      out.data = snap->data[i].data() + off * esize;
      out.bytes = static_cast<size_t>(std::max<int64_t>(m, 0) * esize);
      out.keepalive = snap;
      const bool complete = i + 1 == snap->tensors.size() && off + m >= numel;
      if (!sink->Send(snap->version, complete, out)) {
        return absl::CancelledError(
            absl::StrCat("the client went away while receiving group '", group.name(), "'"));
      }
      group.metrics().AddWeightBytesSent(static_cast<int64_t>(out.bytes));
      if (numel == 0) break;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status OptimizerCore::Subscribe(const v1::SubscribeRequest& request, WeightsSink* sink) {
  auto found = FindGroup(request.group());
  if (!found.ok()) return found.status();
  std::shared_ptr<Group> group = *std::move(found);
  auto subscriber = std::make_shared<Subscriber>();
  if (absl::Status s = group->AddSubscriber(subscriber, request.send_current()); !s.ok()) return s;
  absl::Status result;
  // Polls for cancellation and shutdown; 100 ms bounds how long a dead subscriber keeps its
  // queue.
  while (!sink->cancelled() && !shutting_down()) {
    auto snap = subscriber->Pop(absl::Milliseconds(100));
    if (snap == nullptr) {
      auto current = registry_.Find(request.group());
      if (!current.ok() || *current != group) {
        result = absl::AbortedError(
            absl::StrCat("group '", request.group(), "' was deleted or replaced"));
        break;
      }
      continue;
    }
    result = SendSnapshot(*group, snap, options_.chunk_bytes, sink);
    if (!result.ok()) break;
  }
  subscriber->Close();
  group->RemoveSubscriber(subscriber.get());
  if (result.ok() && sink->cancelled()) {
    result = absl::CancelledError("the subscriber cancelled");
  } else if (result.ok() && shutting_down()) {
    result = absl::UnavailableError("the server is shutting down");
  }
  return result;
}

absl::Status OptimizerCore::PullWeights(const v1::PullWeightsRequest& request, WeightsSink* sink) {
  auto found = FindGroup(request.group());
  if (!found.ok()) return found.status();
  Group& group = **found;
  if (absl::Status s = CheckTensorList(request.tensors(), options_.limits); !s.ok()) return s;
  auto named = group.FindTensors(request.tensors());
  if (!named.ok()) return named.status();
  absl::StatusOr<std::shared_ptr<const WeightSnapshot>> snap;
  {
    absl::MutexLock lock(&group.mu());
    snap = group.Snapshot(*named);  // a tensor named twice is copied and sent once
  }
  if (!snap.ok()) return snap.status();
  return SendSnapshot(group, *snap, options_.chunk_bytes, sink);
}

}  // namespace optd::server
