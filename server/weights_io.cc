// Weights out of the server: Subscribe (every new version to every subscriber) and PullWeights.
#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/convert.h"
#include "server/optimizer_core.h"

namespace optd::server {
namespace {

// Writes one version as chunks; the last carries version_complete.
absl::Status WriteSnapshot(const Group& group, const WeightSnapshot& snap, int64_t chunk_bytes,
                           grpc::ServerWriterInterface<v1::WeightsMessage>* writer) {
  v1::WeightsMessage message;
  message.set_version(snap.version);
  for (size_t i = 0; i < snap.tensors.size(); ++i) {
    const core::TensorSpec& spec = group.tensor(snap.tensors[i]);
    const int64_t esize = static_cast<int64_t>(core::DTypeSize(spec.dtype));
    const int64_t piece = std::max<int64_t>(
        core::kBlockSize, chunk_bytes / esize / core::kBlockSize * core::kBlockSize);
    const int64_t numel = spec.numel();
    v1::TensorChunk* chunk = message.mutable_chunk();
    chunk->set_tensor(spec.name);
    chunk->set_dtype(ToProtoDType(spec.dtype));
    for (int64_t off = 0; off < numel || (numel == 0 && off == 0); off += piece) {
      const int64_t m = std::min(piece, numel - off);
      chunk->set_offset(off);
      chunk->set_data(snap.data[i].data() + off * esize, static_cast<size_t>(m * esize));
      message.set_version_complete(i + 1 == snap.tensors.size() && off + m >= numel);
      if (!writer->Write(message)) {
        return absl::CancelledError(
            absl::StrCat("the client went away while receiving group '", group.name(), "'"));
      }
      if (numel == 0) break;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status OptimizerCore::Subscribe(grpc::ServerContext* context,
                                      const v1::SubscribeRequest& request,
                                      grpc::ServerWriterInterface<v1::WeightsMessage>* writer) {
  auto found = registry_.Find(request.group());
  if (!found.ok()) return found.status();
  std::shared_ptr<Group> group = *std::move(found);
  auto subscriber = std::make_shared<Subscriber>();
  if (absl::Status s = group->AddSubscriber(subscriber, request.send_current()); !s.ok()) return s;
  absl::Status result;
  // Polls for cancellation because the sync API gives no callback for it; 100 ms bounds how long
  // a dead subscriber keeps its queue.
  while (!context->IsCancelled() && !shutting_down()) {
    auto snap = subscriber->Pop(absl::Milliseconds(100));
    if (snap == nullptr) {
      if (!registry_.Find(request.group()).ok() || registry_.Find(request.group()).value() != group) {
        result = absl::AbortedError(
            absl::StrCat("group '", request.group(), "' was deleted or replaced"));
        break;
      }
      continue;
    }
    result = WriteSnapshot(*group, *snap, options_.chunk_bytes, writer);
    if (!result.ok()) break;
    int64_t bytes = 0;
    for (const auto& d : snap->data) bytes += static_cast<int64_t>(d.size());
    group->metrics().AddWeightBytesSent(bytes);
  }
  subscriber->Close();
  group->RemoveSubscriber(subscriber.get());
  if (result.ok() && context->IsCancelled()) {
    result = absl::CancelledError("the subscriber cancelled");
  } else if (result.ok() && shutting_down()) {
    result = absl::UnavailableError("the server is shutting down");
  }
  return result;
}

absl::Status OptimizerCore::PullWeights(const v1::PullWeightsRequest& request,
                                        grpc::ServerWriterInterface<v1::WeightsMessage>* writer) {
  auto found = registry_.Find(request.group());
  if (!found.ok()) return found.status();
  Group& group = **found;
  auto named = group.FindTensors(request.tensors());
  if (!named.ok()) return named.status();
  std::vector<int> tensors = *std::move(named);
  absl::StatusOr<std::shared_ptr<const WeightSnapshot>> snap;
  {
    // A copy keeps the version consistent without holding the group while the client reads.
    absl::MutexLock lock(&group.mu());
    snap = group.Snapshot(tensors);
  }
  if (!snap.ok()) return snap.status();
  if (absl::Status s = WriteSnapshot(group, **snap, options_.chunk_bytes, writer); !s.ok()) return s;
  int64_t bytes = 0;
  for (const auto& d : (*snap)->data) bytes += static_cast<int64_t>(d.size());
  group.metrics().AddWeightBytesSent(bytes);
  return absl::OkStatus();
}

}  // namespace optd::server
