// The client's data path: Step, UploadWeights and PullWeights as raw streams (generic stub,
// BlockingStream), each spread over up to K concurrent streams on K connections.
//
// Note [A step over K streams]
// A step's gradients are cut into block-aligned chunks and dealt over K streams as contiguous
// runs of about equal bytes (DealChunks), so a large tensor may be spread over several streams.
// Each stream carries begin{streams = K, stream_index = i}, its run of chunks and a commit, on
// connection i; the server applies the step once all K have committed and returns to each
// stream the weights of the ranges that stream sent (ALL: stream 0 also the untouched tensors),
// then a StepDone. The weights land in the caller's buffers straight from each stream's
// receive slices; the runs are disjoint, so the streams write disjoint bytes. Every StepDone
// must name the same step and version. If one stream fails, StreamGroup cancels the others and
// the server undoes the whole step. K = 1 sends exactly what a client without K streams sends
// (no streams/stream_index fields).
//
// On each stream a writer thread sends while the stream's own thread receives, so a chunk goes
// up while the weights of the ones before it come back.
#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/internal/blocking_stream.h"
#include "client/internal/chunk_plan.h"
#include "client/internal/client_impl.h"
#include "client/internal/status.h"
#include "client/internal/stream_group.h"
#include "client/internal/wire.h"
#include "optd/client/client.h"

namespace optd::client {
namespace {

using internal::ChunkRef;
using internal::FromGrpc;

constexpr char kStepMethod[] = "/optd.v1.Optimizer/Step";
constexpr char kUploadMethod[] = "/optd.v1.Optimizer/UploadWeights";
constexpr char kPullMethod[] = "/optd.v1.Optimizer/PullWeights";
constexpr int kStepRequestGradientField = 2;
constexpr int kUploadGroupField = 1;
constexpr int kUploadChunkField = 2;
// A pull over several calls reads each call's tensors at that call's moment; a step landing
// in between gives different versions, and the pull is repeated up to this many times.
constexpr int kPullAttempts = 3;

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

// The chunk message of `c`: a header plus a slice over the caller's memory.
grpc::ByteBuffer ChunkOf(std::string_view prefix, int field, const ConstBuffer& b,
                         const ChunkRef& c) {
  const int size = DTypeSize(b.dtype);
  return internal::ChunkMessage(prefix, field, b.tensor, c.offset, b.dtype,
                                static_cast<const char*>(b.data) + c.offset * size,
                                static_cast<size_t>(c.numel * size));
}

// What one stream of a step received.
struct StreamOutcome {
  bool done = false;
  v1::StepDone step_done;
  int64_t weight_elements = 0;
};

// Runs one stream of a step: `begin`, the chunks of `run`, commit; receives its weights into
// `out` and its StepDone into *outcome. Failures go to `group`.
void RunStepStream(const std::string& target, internal::StreamGroup* group, size_t index,
                   const v1::StepRequest& begin, absl::Span<const ConstBuffer> gradients,
                   const std::vector<ChunkRef>& run, const internal::BufferMap& out,
                   StreamOutcome* outcome) {
  internal::BlockingStream& stream = group->stream(index);
  std::thread writer([&] {
    if (!stream.Write(internal::SerializeToByteBuffer(begin))) return;
    for (const ChunkRef& c : run) {
      if (!stream.Write(ChunkOf("", kStepRequestGradientField, gradients[c.buffer], c))) return;
    }
    v1::StepRequest commit;
    commit.mutable_commit();
    if (!stream.Write(internal::SerializeToByteBuffer(commit))) return;
    stream.WritesDone();
  });
  absl::Status local;
  grpc::ByteBuffer in;
  while (stream.Read(&in)) {
    internal::DecodedStepResponse decoded;
    local = internal::DecodeStepResponse(in, out, &decoded);
    outcome->weight_elements += decoded.weight_elements;
    if (!local.ok()) break;
    if (decoded.has_done) {
      outcome->done = true;
      outcome->step_done = decoded.done;
      break;
    }
  }
  if (!local.ok()) group->Fail(local);  // cancels every stream: the writer stops too
  writer.join();
  const grpc::Status st = stream.Finish();
  if (!local.ok()) return;
  if (absl::Status s = FromGrpc(st, target); !s.ok()) {
    group->Fail(s);
  } else if (!outcome->done) {
    group->Fail(absl::InternalError(
        absl::StrCat("step stream ", index, " ended without StepDone [server ", target, "]")));
  }
}

}  // namespace

absl::StatusOr<StepResult> Client::Step(const std::string& group, int64_t step,
                                        absl::Span<const ConstBuffer> gradients,
                                        absl::Span<const MutableBuffer> weights_out,
                                        const StepOptions& options) {
  if (absl::Status s = CheckBuffers("gradients", gradients); !s.ok()) return s;
  if (absl::Status s = CheckBuffers("weights_out", weights_out); !s.ok()) return s;
  if (options.streams < 0) {
    return absl::InvalidArgumentError(absl::StrCat("streams: ", options.streams, " < 0"));
  }
  const bool part = options.part_count > 0;
  if (options.part_count < 0 ||
      (part && (options.part_index < 0 || options.part_index >= options.part_count))) {
    return absl::InvalidArgumentError(absl::StrCat("part_index: ", options.part_index,
                                                   " is outside [0, part_count = ",
                                                   options.part_count, ")"));
  }
  // A part is one stream of a step the caller spreads itself.
  const int streams = part ? 1 : (options.streams > 0 ? options.streams : impl_->options.streams);
  const std::vector<std::vector<ChunkRef>> runs =
      internal::DealChunks(gradients, impl_->options.chunk_bytes, streams);
  const internal::BufferMap out = internal::MakeBufferMap(weights_out);
  const WeightsReturn wanted = weights_out.empty() && options.weights == WeightsReturn::kUpdated
                                   ? WeightsReturn::kNone
                                   : options.weights;
  if (wanted == WeightsReturn::kUpdated) {
    // The weights come back after the server applied the step: a missing buffer found then
    // would fail a step that is already applied. So it is checked before anything is sent.
    for (const ConstBuffer& g : gradients) {
      if (!out.contains(g.tensor)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "weights_out: no buffer for tensor '", g.tensor,
            "', which receives a gradient and so gets its weights back (WeightsReturn::kUpdated)"));
      }
    }
  }

  v1::StepRequest begin;
  v1::StepBegin* b = begin.mutable_begin();
  internal::SetStepBegin(group, step, options, wanted, b);
  if (part) {
    b->set_streams(options.part_count);
    b->set_stream_index(options.part_index);
  } else {
    // One value for this attempt's streams: a retry of a failed step starts afresh on the
    // server instead of joining the failed attempt (StepBegin.attempt). Step parts are separate
    // calls that cannot share one, so they send none.
    b->set_attempt(internal::NewAttemptId());
  }
  if (!part && runs.size() > 1) {
    b->set_streams(static_cast<int32_t>(runs.size()));
  }

  const size_t first_connection = part ? static_cast<size_t>(options.part_index) : 0;
  std::vector<std::unique_ptr<internal::BlockingStream>> opened;
  for (size_t i = 0; i < runs.size(); ++i) {
    opened.push_back(internal::BlockingStream::Start(impl_->generic(first_connection + i),
                                                        kStepMethod, impl_->options.timeout_ms,
                                                        impl_->authorization));
  }
  internal::StreamGroup group_streams(std::move(opened));
  std::vector<StreamOutcome> outcomes(runs.size());
  group_streams.Run([&](size_t i) {
    v1::StepRequest my_begin = begin;
    if (!part && runs.size() > 1) {
      my_begin.mutable_begin()->set_stream_index(static_cast<int32_t>(i));
    }
    RunStepStream(impl_->target, &group_streams, i, my_begin, gradients, runs[i], out,
                  &outcomes[i]);
  });
  if (absl::Status s = group_streams.status(); !s.ok()) return s;

  StepResult result;
  const v1::StepDone& first = outcomes[0].step_done;
  result.step = first.step();
  result.version = first.version();
  for (const StreamOutcome& o : outcomes) {
    if (o.step_done.step() != first.step() || o.step_done.version() != first.version()) {
      return absl::InternalError(absl::StrCat(
          "the streams of step ", step, " of group ", group, " disagree: step ", first.step(),
          " version ", first.version(), " against step ", o.step_done.step(), " version ",
          o.step_done.version(), " [server ", impl_->target, "]"));
    }
    result.duplicate = result.duplicate || o.step_done.duplicate();
    // Every stream reports the whole step's count.
    result.nonfinite_gradient_elements = std::max(result.nonfinite_gradient_elements,
                                                  o.step_done.nonfinite_gradient_elements());
    result.weight_elements_received += o.weight_elements;
  }
  return result;
}

absl::StatusOr<int64_t> Client::UploadWeights(const std::string& group,
                                              absl::Span<const ConstBuffer> weights) {
  if (absl::Status s = CheckBuffers("weights", weights); !s.ok()) return s;
  // The server takes any block-aligned ranges on any call, so chunks are dealt like a step's.
  const std::vector<std::vector<ChunkRef>> runs =
      internal::DealChunks(weights, impl_->options.chunk_bytes, impl_->options.streams);
  std::vector<std::unique_ptr<internal::BlockingStream>> opened;
  for (size_t i = 0; i < runs.size(); ++i) {
    opened.push_back(internal::BlockingStream::Start(impl_->generic(i), kUploadMethod,
                                                        impl_->options.timeout_ms,
                                                        impl_->authorization));
  }
  internal::StreamGroup streams(std::move(opened));
  std::vector<int64_t> written(runs.size(), 0);
  const std::string group_field = internal::StringField(kUploadGroupField, group);
  streams.Run([&](size_t i) {
    internal::BlockingStream& stream = streams.stream(i);
    std::string_view prefix = group_field;  // the group is named on the first message only
    for (const ChunkRef& c : runs[i]) {
      if (!stream.Write(ChunkOf(prefix, kUploadChunkField, weights[c.buffer], c))) break;
      prefix = "";
    }
    if (runs[i].empty()) {  // nothing to upload: the group alone, so the server can answer
      stream.Write(internal::ChunkMessage(prefix, kUploadChunkField, "", 0, DType::kFloat32,
                                          nullptr, 0));
    }
    stream.WritesDone();
    v1::UploadWeightsResponse resp;
    grpc::ByteBuffer in;
    const bool answered = stream.Read(&in) && internal::ParseFromByteBuffer(in, &resp);
    const grpc::Status st = stream.Finish();
    if (absl::Status s = FromGrpc(st, impl_->target); !s.ok()) {
      streams.Fail(s);
    } else if (!answered) {
      streams.Fail(absl::DataLossError(absl::StrCat(
          "UploadWeights: no readable response [server ", impl_->target, "]")));
    } else {
      written[i] = resp.elements_written();
    }
  });
  if (absl::Status s = streams.status(); !s.ok()) return s;
  int64_t total = 0;
  for (int64_t w : written) total += w;
  return total;
}

absl::StatusOr<int64_t> Client::PullWeights(const std::string& group,
                                            absl::Span<const MutableBuffer> out) {
  if (absl::Status s = CheckBuffers("out", out); !s.ok()) return s;
  const internal::BufferMap map = internal::MakeBufferMap(out);
  std::vector<int64_t> bytes;
  for (const MutableBuffer& b : out) bytes.push_back(b.numel * DTypeSize(b.dtype));
  // PullWeights names whole tensors: they are dealt over the calls by size.
  const std::vector<std::vector<size_t>> calls =
      internal::DealTensors(bytes, impl_->options.streams);
  std::vector<int64_t> versions;
  for (int attempt = 0; attempt < kPullAttempts; ++attempt) {
    std::vector<std::unique_ptr<internal::BlockingStream>> opened;
    for (size_t i = 0; i < calls.size(); ++i) {
      opened.push_back(internal::BlockingStream::Start(impl_->generic(i), kPullMethod,
                                                          impl_->options.timeout_ms,
                                                        impl_->authorization));
    }
    internal::StreamGroup streams(std::move(opened));
    versions.assign(calls.size(), -1);
    streams.Run([&](size_t i) {
      internal::BlockingStream& stream = streams.stream(i);
      v1::PullWeightsRequest req;
      req.set_group(group);
      for (size_t t : calls[i]) req.add_tensors(out[t].tensor);
      if (stream.Write(internal::SerializeToByteBuffer(req))) stream.WritesDone();
      absl::Status local;
      grpc::ByteBuffer in;
      while (stream.Read(&in)) {
        internal::DecodedWeightsMessage d;
        local = internal::DecodeWeightsMessage(in, map, &d);
        if (!local.ok()) break;
        versions[i] = d.version;
      }
      if (!local.ok()) streams.Fail(local);
      const grpc::Status st = stream.Finish();
      if (absl::Status s = FromGrpc(st, impl_->target); local.ok() && !s.ok()) streams.Fail(s);
    });
    if (absl::Status s = streams.status(); !s.ok()) return s;
    if (std::all_of(versions.begin(), versions.end(),
                    [&](int64_t v) { return v == versions[0]; })) {
      return versions[0];
    }
  }
  return absl::AbortedError(absl::StrCat(
      "PullWeights of group ", group, ": the weights changed during each of ", kPullAttempts,
      " pulls over ", calls.size(), " streams (versions ", versions.front(), " and ",
      versions.back(), "); retry, or pull with one stream [server ", impl_->target, "]"));
}

}  // namespace optd::client
