// Client: creation (the connections), group administration, checkpoints and Subscribe. The
// data path (Step, UploadWeights, PullWeights) is in data_path.cc, the state exchange in
// state_exchange.cc.
#include "optd/client/client.h"

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/internal/malloc_tuning.h"
#include "client/internal/blocking_stream.h"
#include "client/internal/channel_credentials.h"
#include "client/internal/client_impl.h"
#include "client/internal/convert.h"
#include "client/internal/status.h"
#include "client/internal/wire.h"
#include "grpc/grpc.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace optd::client {
namespace {

using internal::FromGrpc;

constexpr char kSubscribeMethod[] = "/optd.v1.Optimizer/Subscribe";

// Note [One connection per channel]
// gRPC shares one TCP connection (a subchannel) between channels to the same target whose
// channel arguments are equal, through a process-wide subchannel pool. K streams on one
// connection share one socket and one HTTP/2 flow-control window, which is what the K streams
// are meant to escape. So each channel gets a local subchannel pool
// (GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL) and an argument of its own (its index), and each then
// opens a connection of its own.
constexpr char kConnectionIndexArg[] = "optd.client.connection_index";

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
  if (options.tune_malloc) internal::TuneMallocForBulkTransfers();
  auto authorization = internal::AuthorizationValue(options.token);
  if (!authorization.ok()) return authorization.status();
  grpc::ChannelArguments base_args;
  auto credentials = internal::MakeChannelCredentials(options.tls, &base_args);
  if (!credentials.ok()) return credentials.status();
  auto impl = std::make_unique<Impl>();
  impl->target = target;
  impl->options = options;
  impl->authorization = *std::move(authorization);
  for (int i = 0; i < options.streams; ++i) {
    grpc::ChannelArguments args = base_args;
    args.SetMaxReceiveMessageSize(options.max_message_bytes);
    args.SetMaxSendMessageSize(options.max_message_bytes);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(kConnectionIndexArg, i);
    Connection c;
    c.channel = grpc::CreateCustomChannel(target, *credentials, args);
    if (c.channel == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("target: cannot open a channel to ", target));
    }
    c.stub = v1::Optimizer::NewStub(c.channel);
    c.generic = std::make_unique<grpc::GenericStub>(c.channel);
    impl->connections.push_back(std::move(c));
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

void Client::Impl::PrepareContext(grpc::ClientContext* context) const {
  if (options.timeout_ms > 0) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(options.timeout_ms));
  }
  if (!authorization.empty()) context->AddMetadata("authorization", authorization);
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
  absl::Status s = FromGrpc(impl_->stub().CreateGroup(&ctx, req, &info), impl_->target);
  if (!s.ok()) return s;
  return internal::FromProto(info);
}

absl::StatusOr<GroupInfo> Client::GetGroup(const std::string& group) {
  v1::GetGroupRequest req;
  req.set_group(group);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::GroupInfo info;
  absl::Status s = FromGrpc(impl_->stub().GetGroup(&ctx, req, &info), impl_->target);
  if (!s.ok()) return s;
  return internal::FromProto(info);
}

absl::StatusOr<std::vector<GroupInfo>> Client::ListGroups() {
  // The server answers in pages; follow them to the last.
  std::vector<GroupInfo> groups;
  v1::ListGroupsRequest req;
  do {
    grpc::ClientContext ctx;
    impl_->PrepareContext(&ctx);
    v1::ListGroupsResponse resp;
    absl::Status s = FromGrpc(impl_->stub().ListGroups(&ctx, req, &resp), impl_->target);
    if (!s.ok()) return s;
    for (const v1::GroupInfo& g : resp.groups()) groups.push_back(internal::FromProto(g));
    req.set_page_token(resp.next_page_token());
  } while (!req.page_token().empty());
  return groups;
}

absl::Status Client::DeleteGroup(const std::string& group) {
  v1::DeleteGroupRequest req;
  req.set_group(group);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::DeleteGroupResponse resp;
  return FromGrpc(impl_->stub().DeleteGroup(&ctx, req, &resp), impl_->target);
}

absl::StatusOr<GroupInfo> Client::UpdateHyperparameters(const std::string& group,
                                                        const Hyperparameters& hyperparameters) {
  v1::UpdateHyperparametersRequest req;
  req.set_group(group);
  internal::ToProto(hyperparameters, req.mutable_hyperparameters());
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::GroupInfo info;
  absl::Status s = FromGrpc(impl_->stub().UpdateHyperparameters(&ctx, req, &info), impl_->target);
  if (!s.ok()) return s;
  return internal::FromProto(info);
}

absl::StatusOr<SaveCheckpointResult> Client::SaveCheckpoint(
    const std::string& name, const std::vector<std::string>& groups) {
  v1::SaveCheckpointRequest req;
  req.set_name(name);
  for (const std::string& g : groups) req.add_groups(g);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::SaveCheckpointResponse resp;
  absl::Status s = FromGrpc(impl_->stub().SaveCheckpoint(&ctx, req, &resp), impl_->target);
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
  absl::Status s = FromGrpc(impl_->stub().RestoreCheckpoint(&ctx, req, &resp), impl_->target);
  if (!s.ok()) return s;
  return internal::FromProto(resp);
}

// A Subscribe call as a raw stream: chunks are decoded from gRPC's slices straight into the
// caller's buffers, as for Step. No deadline: a subscription lasts until cancelled.
// Thread safety: Next() from one thread; Cancel() from any thread.
struct Subscription::Impl {
  std::string target;
  std::unique_ptr<internal::BlockingStream> stream;
  bool ended = false;
};

std::unique_ptr<Subscription> Client::Subscribe(const std::string& group, bool send_current) {
  auto impl = std::make_unique<Subscription::Impl>();
  impl->target = impl_->target;
  impl->stream = internal::BlockingStream::Start(impl_->generic(0), kSubscribeMethod,
                                                 /*timeout_ms=*/0, impl_->authorization);
  v1::SubscribeRequest req;
  req.set_group(group);
  req.set_send_current(send_current);
  if (impl->stream->Write(internal::SerializeToByteBuffer(req))) impl->stream->WritesDone();
  return std::unique_ptr<Subscription>(new Subscription(std::move(impl)));
}

Subscription::Subscription(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Subscription::~Subscription() = default;  // the stream cancels itself if still open

void Subscription::Cancel() { impl_->stream->Cancel(); }

absl::StatusOr<int64_t> Subscription::Next(absl::Span<const MutableBuffer> out) {
  if (impl_->ended) return absl::FailedPreconditionError("subscription: the stream has ended");
  const internal::BufferMap map = internal::MakeBufferMap(out);
  grpc::ByteBuffer in;
  while (impl_->stream->Read(&in)) {
    internal::DecodedWeightsMessage d;
    if (absl::Status s = internal::DecodeWeightsMessage(in, map, &d); !s.ok()) return s;
    if (d.version_complete) return d.version;
  }
  impl_->ended = true;
  grpc::Status st = impl_->stream->Finish();
  if (st.ok()) return absl::OutOfRangeError("subscription: the server ended the stream");
  return FromGrpc(st, impl_->target);
}

}  // namespace optd::client
