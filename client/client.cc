#include "optd/client/client.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/internal/client_impl.h"
#include "client/internal/convert.h"
#include "client/internal/status.h"
#include "client/internal/wire.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/sync_stream.h"

namespace optd::client {
namespace {

using internal::FromGrpc;

constexpr char kStepMethod[] = "/optd.v1.Optimizer/Step";
constexpr char kUploadMethod[] = "/optd.v1.Optimizer/UploadWeights";
constexpr int kStepRequestGradientField = 2;
constexpr int kUploadGroupField = 1;
constexpr int kUploadChunkField = 2;

absl::Status CheckBuffer(const char* what, size_t index, const std::string& tensor,
                         const void* data, int64_t numel) {
  if (tensor.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, "[", index, "].tensor: empty name"));
  }
  if (numel < 0 || (numel > 0 && data == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "[", index, "] (", tensor, "): null data or negative numel"));
  }
  return absl::OkStatus();
}

template <typename Buffers>
absl::Status CheckBuffers(const char* what, const Buffers& buffers) {
  for (size_t i = 0; i < buffers.size(); ++i) {
    absl::Status s = CheckBuffer(what, i, buffers[i].tensor, buffers[i].data, buffers[i].numel);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() = default;

const std::string& Client::target() const { return impl_->target; }
const ClientOptions& Client::options() const { return impl_->options; }

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const std::string& target,
                                                       const ClientOptions& options) {
  if (target.empty()) return absl::InvalidArgumentError("target: empty server address");
  if (options.streams < 1) {
    return absl::InvalidArgumentError(absl::StrCat("streams: ", options.streams, " < 1"));
  }
  if (options.chunk_bytes < 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_bytes: ", options.chunk_bytes, " is below 1024"));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("target: cannot open a channel to ", target));
  }
  auto impl = std::make_unique<Impl>();
  impl->target = target;
  impl->options = options;
  impl->channel = std::move(channel);
  impl->stub = v1::Optimizer::NewStub(impl->channel);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

void Client::Impl::PrepareContext(grpc::ClientContext* context) const {
  if (options.timeout_ms > 0) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(options.timeout_ms));
  }
}

absl::StatusOr<GroupInfo> Client::CreateGroup(const std::string& group,
                                                  const std::vector<TensorSpec>& tensors,
                                                  const GroupOptions& options) {
  v1::CreateGroupRequest req;
  req.set_group(group);
  for (const TensorSpec& t : tensors) internal::ToProto(t, req.add_tensors());
  internal::ToProto(options.hyperparameters, req.mutable_hyperparameters());
  req.set_num_workers(options.num_workers);
  req.set_mode(static_cast<v1::SyncMode>(options.mode));
  req.set_sync_timeout_ms(options.sync_timeout_ms);
  req.set_max_staleness(options.max_staleness);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::GroupInfo info;
  absl::Status s = FromGrpc(impl_->stub->CreateGroup(&ctx, req, &info), impl_->target);
  if (!s.ok()) return s;
  return internal::FromProto(info);
}

absl::StatusOr<GroupInfo> Client::GetGroup(const std::string& group) {
  v1::GetGroupRequest req;
  req.set_group(group);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::GroupInfo info;
  absl::Status s = FromGrpc(impl_->stub->GetGroup(&ctx, req, &info), impl_->target);
  if (!s.ok()) return s;
  return internal::FromProto(info);
}

absl::StatusOr<std::vector<GroupInfo>> Client::ListGroups() {
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::ListGroupsResponse resp;
  absl::Status s = FromGrpc(impl_->stub->ListGroups(&ctx, v1::ListGroupsRequest(), &resp), impl_->target);
  if (!s.ok()) return s;
  std::vector<GroupInfo> groups;
  for (const v1::GroupInfo& g : resp.groups()) groups.push_back(internal::FromProto(g));
  return groups;
}

absl::Status Client::DeleteGroup(const std::string& group) {
  v1::DeleteGroupRequest req;
  req.set_group(group);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::DeleteGroupResponse resp;
  return FromGrpc(impl_->stub->DeleteGroup(&ctx, req, &resp), impl_->target);
}

absl::StatusOr<GroupInfo> Client::UpdateHyperparameters(
    const std::string& group, const Hyperparameters& hyperparameters) {
  v1::UpdateHyperparametersRequest req;
  req.set_group(group);
  internal::ToProto(hyperparameters, req.mutable_hyperparameters());
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::GroupInfo info;
  absl::Status s = FromGrpc(impl_->stub->UpdateHyperparameters(&ctx, req, &info), impl_->target);
  if (!s.ok()) return s;
  return internal::FromProto(info);
}

absl::StatusOr<int64_t> Client::UploadWeights(const std::string& group,
                                              absl::Span<const ConstBuffer> weights) {
  if (absl::Status s = CheckBuffers("weights", weights); !s.ok()) return s;
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::UploadWeightsResponse resp;
  const grpc::internal::RpcMethod method(kUploadMethod,
                                         grpc::internal::RpcMethod::CLIENT_STREAMING);
  std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
      grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(impl_->channel.get(), method, &ctx,
                                                                    &resp));
  std::string prefix = internal::StringField(kUploadGroupField, group);
  bool wrote = false;
  for (const ConstBuffer& w : weights) {
    const int64_t per = internal::ElementsPerChunk(impl_->options.chunk_bytes, w.dtype);
    const int size = DTypeSize(w.dtype);
    for (int64_t off = 0; off < w.numel; off += per) {
      const int64_t n = std::min(per, w.numel - off);
      grpc::ByteBuffer msg = internal::ChunkMessage(
          prefix, kUploadChunkField, w.tensor, off, w.dtype,
          static_cast<const char*>(w.data) + off * size, static_cast<size_t>(n * size));
      prefix.clear();  // the group is named on the first message only
      wrote = true;
      if (!writer->Write(msg)) break;  // the server ended the call: Finish() says why
    }
  }
  if (!wrote) {
    grpc::ByteBuffer msg = internal::ChunkMessage(prefix, kUploadChunkField, "", 0,
                                                  DType::kFloat32, nullptr, 0);
    writer->Write(msg);
  }
  writer->WritesDone();
  absl::Status s = FromGrpc(writer->Finish(), impl_->target);
  if (!s.ok()) return s;
  return resp.elements_written();
}

absl::StatusOr<StepResult> Client::Step(const std::string& group, int64_t step,
                                        absl::Span<const ConstBuffer> gradients,
                                        absl::Span<const MutableBuffer> weights_out,
                                        const StepOptions& options) {
  if (absl::Status s = CheckBuffers("gradients", gradients); !s.ok()) return s;
  if (absl::Status s = CheckBuffers("weights_out", weights_out); !s.ok()) return s;
  if (options.part_count < 0 ||
      (options.part_count > 0 &&
       (options.part_index < 0 || options.part_index >= options.part_count))) {
    return absl::InvalidArgumentError(absl::StrCat("part_index: ", options.part_index,
                                                   " is outside [0, part_count = ",
                                                   options.part_count, ")"));
  }
  const internal::BufferMap out = internal::MakeBufferMap(weights_out);

  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  const grpc::internal::RpcMethod method(kStepMethod, grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          impl_->channel.get(), method, &ctx));

  // Writer thread: begin, every gradient chunk straight from the caller's memory, commit.
  // The calling thread meanwhile receives weights, so upload and download overlap.
  std::thread writer([&] {
    v1::StepRequest begin;
    v1::StepBegin* b = begin.mutable_begin();
    b->set_group(group);
    b->set_worker(options.worker);
    b->set_step(step);
    if (options.lr) b->set_lr(*options.lr);
    const WeightsReturn wanted = weights_out.empty() && options.weights == WeightsReturn::kUpdated
                                     ? WeightsReturn::kNone
                                     : options.weights;
    b->set_weights(static_cast<v1::WeightsReturn>(wanted));
    if (options.base_version) b->set_base_version(*options.base_version);
    if (options.part_count > 0) {
      b->set_streams(options.part_count);
      b->set_stream_index(options.part_index);
    }
    grpc::ByteBuffer msg;
    bool own = false;
    if (!grpc::SerializationTraits<v1::StepRequest>::Serialize(begin, &msg, &own).ok() ||
        !stream->Write(msg)) {
      return;
    }
    for (const ConstBuffer& g : gradients) {
      const int64_t per = internal::ElementsPerChunk(impl_->options.chunk_bytes, g.dtype);
      const int size = DTypeSize(g.dtype);
      for (int64_t off = 0; off < g.numel; off += per) {
        const int64_t n = std::min(per, g.numel - off);
        grpc::ByteBuffer chunk = internal::ChunkMessage(
            "", kStepRequestGradientField, g.tensor, off, g.dtype,
            static_cast<const char*>(g.data) + off * size, static_cast<size_t>(n * size));
        if (!stream->Write(chunk)) return;
      }
    }
    v1::StepRequest commit;
    commit.mutable_commit();
    if (!grpc::SerializationTraits<v1::StepRequest>::Serialize(commit, &msg, &own).ok() ||
        !stream->Write(msg)) {
      return;
    }
    stream->WritesDone();
  });

  StepResult result;
  absl::Status local;
  bool done = false;
  grpc::ByteBuffer in;
  while (stream->Read(&in)) {
    // Weight payloads go from gRPC's slices straight into the caller's buffers.
    internal::DecodedStepResponse decoded;
    local = internal::DecodeStepResponse(in, out, &decoded);
    result.weight_elements_received += decoded.weight_elements;
    if (!local.ok()) break;
    if (decoded.has_done) {
      result.step = decoded.done.step();
      result.version = decoded.done.version();
      result.duplicate = decoded.done.duplicate();
      result.nonfinite_gradient_elements = decoded.done.nonfinite_gradient_elements();
      done = true;
      break;
    }
  }
  if (!local.ok()) ctx.TryCancel();  // unblocks the writer; the server discards the step
  writer.join();
  if (done) {
    // Drain: the server closes the stream once we are done writing.
    while (stream->Read(&in)) {
    }
  }
  grpc::Status st = stream->Finish();
  if (!local.ok()) return local;
  if (absl::Status s = FromGrpc(st, impl_->target); !s.ok()) return s;
  if (!done) {
    return absl::InternalError(
        absl::StrCat("step ", step, " of group ", group, ": stream ended without StepDone"));
  }
  return result;
}

absl::StatusOr<int64_t> Client::PullWeights(const std::string& group,
                                            absl::Span<const MutableBuffer> out) {
  if (absl::Status s = CheckBuffers("out", out); !s.ok()) return s;
  v1::PullWeightsRequest req;
  req.set_group(group);
  for (const MutableBuffer& b : out) req.add_tensors(b.tensor);
  const internal::BufferMap map = internal::MakeBufferMap(out);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  std::unique_ptr<grpc::ClientReader<v1::WeightsMessage>> reader(impl_->stub->PullWeights(&ctx, req));
  v1::WeightsMessage msg;
  int64_t version = -1, elements = 0;
  absl::Status local;
  while (reader->Read(&msg)) {
    version = msg.version();
    if (msg.has_chunk()) {
      local = internal::WriteChunk(msg.chunk(), map, &elements);
      if (!local.ok()) {
        ctx.TryCancel();
        break;
      }
    }
  }
  grpc::Status st = reader->Finish();
  if (!local.ok()) return local;
  if (absl::Status s = FromGrpc(st, impl_->target); !s.ok()) return s;
  return version;
}

// Thread safety: Next() from one thread; Cancel() (TryCancel) from any thread.
struct Subscription::Impl {
  std::string target;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::WeightsMessage>> reader;
};

std::unique_ptr<Subscription> Client::Subscribe(const std::string& group, bool send_current) {
  auto impl = std::make_unique<Subscription::Impl>();
  impl->target = impl_->target;
  v1::SubscribeRequest req;
  req.set_group(group);
  req.set_send_current(send_current);
  impl->reader = impl_->stub->Subscribe(&impl->context, req);
  return std::unique_ptr<Subscription>(new Subscription(std::move(impl)));
}

Subscription::Subscription(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Subscription::~Subscription() {
  if (impl_->reader != nullptr) {
    impl_->context.TryCancel();
    impl_->reader->Finish().ok();
  }
}

void Subscription::Cancel() { impl_->context.TryCancel(); }

absl::StatusOr<int64_t> Subscription::Next(absl::Span<const MutableBuffer> out) {
  if (impl_->reader == nullptr) {
    return absl::FailedPreconditionError("subscription: the stream has ended");
  }
  const internal::BufferMap map = internal::MakeBufferMap(out);
  v1::WeightsMessage msg;
  int64_t elements = 0;
  while (impl_->reader->Read(&msg)) {
    if (msg.has_chunk()) {
      absl::Status s = internal::WriteChunk(msg.chunk(), map, &elements);
      if (!s.ok()) return s;
    }
    if (msg.version_complete()) return msg.version();
  }
  grpc::Status st = impl_->reader->Finish();
  impl_->reader.reset();
  if (st.ok()) return absl::OutOfRangeError("subscription: the server ended the stream");
  return internal::FromGrpc(st, impl_->target);
}

absl::StatusOr<SaveCheckpointResult> Client::SaveCheckpoint(
    const std::string& name, const std::vector<std::string>& groups) {
  v1::SaveCheckpointRequest req;
  req.set_name(name);
  for (const std::string& g : groups) req.add_groups(g);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::SaveCheckpointResponse resp;
  absl::Status s = FromGrpc(impl_->stub->SaveCheckpoint(&ctx, req, &resp), impl_->target);
  if (!s.ok()) return s;
  return internal::FromProto(resp);
}

absl::StatusOr<RestoreCheckpointResult> Client::RestoreCheckpoint(
    const std::string& name, const std::vector<std::string>& groups) {
  v1::RestoreCheckpointRequest req;
  req.set_name(name);
  for (const std::string& g : groups) req.add_groups(g);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::RestoreCheckpointResponse resp;
  absl::Status s = FromGrpc(impl_->stub->RestoreCheckpoint(&ctx, req, &resp), impl_->target);
  if (!s.ok()) return s;
  return internal::FromProto(resp);
}

absl::StatusOr<std::vector<std::pair<std::string, TensorStateArrays>>> Client::ExportState(
    const std::string& group, const std::vector<std::string>& tensors) {
  v1::ExportStateRequest req;
  req.set_group(group);
  for (const std::string& t : tensors) req.add_tensors(t);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  std::unique_ptr<grpc::ClientReader<v1::StateChunk>> reader(impl_->stub->ExportState(&ctx, req));
  std::vector<std::pair<std::string, TensorStateArrays>> out;
  v1::StateChunk c;
  while (reader->Read(&c)) {
    if (out.empty() || out.back().first != c.tensor()) out.emplace_back(c.tensor(), TensorStateArrays());
    TensorStateArrays& t = out.back().second;
    if (c.key() == "step") {
      if (c.data().size() >= sizeof(int64_t)) std::memcpy(&t.step, c.data().data(), sizeof(int64_t));
      continue;
    }
    if (t.arrays.empty() || t.arrays.back().first != c.key()) {
      StateArray a;
      a.type = static_cast<StateElementType>(c.type());
      a.shape.assign(c.shape().begin(), c.shape().end());
      t.arrays.emplace_back(c.key(), std::move(a));
    }
    StateArray& a = t.arrays.back().second;
    const size_t elem = static_cast<size_t>(StateElementSize(a.type));
    const size_t at = static_cast<size_t>(c.offset()) * elem;
    if (a.bytes.size() < at + c.data().size()) a.bytes.resize(at + c.data().size());
    std::memcpy(a.bytes.data() + at, c.data().data(), c.data().size());
  }
  absl::Status s = FromGrpc(reader->Finish(), impl_->target);
  if (!s.ok()) return s;
  return out;
}

absl::Status Client::ImportState(
    const std::string& group,
    const std::vector<std::pair<std::string, TensorStateArrays>>& states) {
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::ImportStateResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::StateChunk>> writer(impl_->stub->ImportState(&ctx, &resp));
  bool first = true;
  auto send = [&](v1::StateChunk& c) {
    if (first) c.set_group(group);
    first = false;
    return writer->Write(c);
  };
  bool open = true;
  for (const auto& [tensor, st] : states) {
    if (!open) break;
    v1::StateChunk step;
    step.set_tensor(tensor);
    step.set_key("step");
    step.set_type(v1::STATE_ELEMENT_TYPE_INT64);
    step.set_data(std::string(reinterpret_cast<const char*>(&st.step), sizeof(int64_t)));
    open = send(step);
    for (const auto& [key, a] : st.arrays) {
      const size_t elem = static_cast<size_t>(StateElementSize(a.type));
      const size_t per = static_cast<size_t>(impl_->options.chunk_bytes) / elem * elem;
      for (size_t at = 0; open && (at < a.bytes.size() || at == 0); at += per) {
        v1::StateChunk c;
        c.set_tensor(tensor);
        c.set_key(key);
        c.set_type(static_cast<v1::StateElementType>(a.type));
        for (int64_t d : a.shape) c.add_shape(d);
        c.set_offset(static_cast<int64_t>(at / elem));
        c.set_data(a.bytes.data() + at, std::min(per, a.bytes.size() - at));
        open = send(c);
        if (a.bytes.empty()) break;
      }
    }
  }
  if (first) {
    v1::StateChunk c;
    send(c);
  }
  writer->WritesDone();
  return FromGrpc(writer->Finish(), impl_->target);
}

}  // namespace optd::client
