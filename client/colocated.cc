// The client's colocated data path: the Colocate lease and mapping of a shared-memory region
// (ColocatedRegion), and steps whose gradients are ranges in it (Client::StepInRegion).
//
// Note [Client side of the lease]
// OpenSharedMemoryRegion opens a Colocate call on a stub of its own over the client's first
// channel (so the region may outlive the Client), sends open{group, SHM, bytes}, gets
// opened{region, shm_name}, maps the object (shm_open, fstat for its size, mmap, close),
// confirms with mapped and waits for ready: the server has then removed the name and steps may
// name the region. The call stays open, without a
// deadline, for as long as the region lives: ending it (destruction, or the process dying)
// tells the server to release its side. A mapping that fails (another host, no shared /dev/shm)
// cancels the call and returns FailedPrecondition with the reason, so the caller can fall back.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/internal/blocking_stream.h"
#include "client/internal/client_impl.h"
#include "client/internal/status.h"
#include "client/internal/stream_group.h"
#include "client/internal/wire.h"
#include "optd/client/client.h"
#include "optd/client/colocated.h"

namespace optd::client {

struct ColocatedRegion::Impl {
  std::string id;
  std::string group;
  void* data = nullptr;   // shared memory: the mapping (unmapped at the end)
  int64_t bytes = 0;
  std::vector<CudaIpcBuffer> device_buffers;  // CUDA IPC: the caller's buffers
  std::unique_ptr<grpc::GenericStub> stub;  // outlives `lease`
  std::unique_ptr<internal::BlockingStream> lease;

  ~Impl() {
    if (data != nullptr) munmap(data, static_cast<size_t>(bytes));
    if (lease != nullptr) {
      lease->WritesDone();
      lease->Finish();  // the server's answer to the end of the lease; nothing to report
    }
  }
};

ColocatedRegion::ColocatedRegion(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ColocatedRegion::~ColocatedRegion() = default;
const std::string& ColocatedRegion::id() const { return impl_->id; }
const std::string& ColocatedRegion::group() const { return impl_->group; }
int ColocatedRegion::num_buffers() const {
  return impl_->device_buffers.empty() ? 1 : static_cast<int>(impl_->device_buffers.size());
}
void* ColocatedRegion::data(int buffer) const {
  if (!impl_->device_buffers.empty()) {
    return buffer >= 0 && buffer < num_buffers()
               ? impl_->device_buffers[static_cast<size_t>(buffer)].data
               : nullptr;
  }
  return buffer == 0 ? impl_->data : nullptr;
}
int64_t ColocatedRegion::bytes(int buffer) const {
  if (!impl_->device_buffers.empty()) {
    return buffer >= 0 && buffer < num_buffers()
               ? impl_->device_buffers[static_cast<size_t>(buffer)].bytes
               : 0;
  }
  return buffer == 0 ? impl_->bytes : 0;
}

namespace {

using internal::FromGrpc;

constexpr char kColocateMethod[] = "/optd.v1.Optimizer/Colocate";
constexpr char kStepMethod[] = "/optd.v1.Optimizer/Step";

// The end of a lease that failed: cancel, then the server's status if it had one to give.
absl::Status LeaseFailure(internal::BlockingStream& lease, const std::string& target,
                          absl::Status local) {
  lease.Cancel();
  const grpc::Status st = lease.Finish();
  if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) return FromGrpc(st, target);
  return local;
}

// Maps the shm object `name` of at least `bytes` bytes (Note [Client side of the lease]).
absl::StatusOr<void*> MapSharedMemory(const std::string& name, int64_t bytes) {
  auto cannot = [&](const char* call, int err) {
    return absl::FailedPreconditionError(absl::StrCat(
        "colocated region: ", call, "(", name, ") failed: ", std::strerror(err),
        ". The server is not on this host, or this process does not share its /dev/shm (in "
        "containers: share the IPC namespace and run as the server's user); use the gRPC path"));
  };
  const int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) return cannot("shm_open", errno);
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size < bytes) {
    const int err = errno;
    close(fd);
    if (st.st_size < bytes) {
      return absl::FailedPreconditionError(absl::StrCat(
          "colocated region: ", name, " has ", st.st_size, " bytes, not the ", bytes,
          " the server announced"));
    }
    return cannot("fstat", err);
  }
  void* map = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (map == MAP_FAILED) return cannot("mmap", err);
  return map;
}

// Deals `ranges` (whole) over up to `streams` runs of contiguous ranges, about equal bytes each.
std::vector<std::vector<size_t>> DealRanges(absl::Span<const RegionRange> ranges, int streams) {
  int64_t total = 0;
  for (const RegionRange& r : ranges) total += r.count * DTypeSize(r.dtype);
  const size_t k = std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(streams),
                                                        ranges.size()));
  std::vector<std::vector<size_t>> runs(k);
  int64_t done = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    // The run whose share of the bytes this range starts in.
    size_t run = total > 0 ? static_cast<size_t>(done * static_cast<int64_t>(k) / total) : 0;
    run = std::min(run, k - 1);
    runs[run].push_back(i);
    done += ranges[i].count * DTypeSize(ranges[i].dtype);
  }
  std::erase_if(runs, [](const std::vector<size_t>& r) { return r.empty(); });
  if (runs.empty()) runs.emplace_back();
  return runs;
}

v1::StepRequest RegionChunkRequest(const RegionRange& r) {
  v1::StepRequest request;
  v1::RegionChunk* c = request.mutable_region_gradient();
  c->set_tensor(r.tensor);
  c->set_offset(r.offset);
  c->set_count(r.count);
  c->set_dtype(static_cast<v1::DType>(r.dtype));
  c->set_buffer(r.buffer);
  c->set_buffer_offset(r.buffer_offset);
  if (r.weights_buffer_offset) {
    c->set_weights_buffer_offset(*r.weights_buffer_offset);
    c->set_weights_buffer(r.weights_buffer);
  }
  return request;
}

// The lease call of a new region of `group`. No deadline: the call lives as long as the region.
std::unique_ptr<ColocatedRegion::Impl> StartLease(const std::shared_ptr<grpc::Channel>& channel,
                                                  const std::string& authorization,
                                                  const std::string& group) {
  auto impl = std::make_unique<ColocatedRegion::Impl>();
  impl->group = group;
  impl->stub = std::make_unique<grpc::GenericStub>(channel);
  impl->lease =
      internal::BlockingStream::Start(impl->stub.get(), kColocateMethod, 0, authorization);
  return impl;
}

// Ends a lease that failed with the best status at hand; the region then has no lease to end.
absl::Status FailLease(ColocatedRegion::Impl& impl, const std::string& target,
                       absl::Status local) {
  absl::Status s = LeaseFailure(*impl.lease, target, std::move(local));
  impl.lease.reset();
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ColocatedRegion>> Client::OpenSharedMemoryRegion(
    const std::string& group, int64_t bytes) {
  if (bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("bytes must be > 0, got ", bytes));
  }
  auto impl = StartLease(impl_->connections[0].channel, impl_->authorization, group);
  internal::BlockingStream& lease = *impl->lease;
  auto fail = [&](absl::Status local) { return FailLease(*impl, impl_->target, std::move(local)); };
  v1::ColocateRequest open;
  open.mutable_open()->set_group(group);
  open.mutable_open()->set_kind(v1::SHM);
  open.mutable_open()->set_bytes(bytes);
  grpc::ByteBuffer in;
  v1::ColocateResponse response;
  if (!lease.Write(internal::SerializeToByteBuffer(open)) || !lease.Read(&in)) {
    return fail(absl::UnavailableError("Colocate: the server ended the call"));
  }
  if (!internal::ParseFromByteBuffer(in, &response) || !response.has_opened()) {
    return fail(absl::DataLossError("Colocate: no readable ColocateOpened"));
  }
  const v1::ColocateOpened& opened = response.opened();
  auto map = MapSharedMemory(opened.shm_name(), opened.bytes());
  if (!map.ok()) return fail(map.status());
  impl->data = *map;
  impl->bytes = opened.bytes();
  impl->id = opened.region();
  v1::ColocateRequest mapped;
  mapped.mutable_mapped();
  if (!lease.Write(internal::SerializeToByteBuffer(mapped)) || !lease.Read(&in)) {
    return fail(absl::UnavailableError("Colocate: the server ended the call"));
  }
  if (!internal::ParseFromByteBuffer(in, &response) || !response.has_ready()) {
    return fail(absl::DataLossError("Colocate: no readable ColocateReady"));
  }
  return std::make_unique<ColocatedRegion>(std::move(impl));
}

absl::StatusOr<std::unique_ptr<ColocatedRegion>> Client::OpenCudaIpcRegion(
    const std::string& group, absl::Span<const CudaIpcBuffer> buffers) {
  if (buffers.empty()) return absl::InvalidArgumentError("buffers: none given");
  auto impl = StartLease(impl_->connections[0].channel, impl_->authorization, group);
  impl->device_buffers.assign(buffers.begin(), buffers.end());
  internal::BlockingStream& lease = *impl->lease;
  auto fail = [&](absl::Status local) { return FailLease(*impl, impl_->target, std::move(local)); };
  v1::ColocateRequest open;
  v1::ColocateOpen* o = open.mutable_open();
  o->set_group(group);
  o->set_kind(v1::CUDA_IPC);
  for (const CudaIpcBuffer& b : buffers) {
    v1::CudaIpcBuffer* out = o->add_buffers();
    out->set_handle(b.handle);
    out->set_offset(b.offset);
    out->set_bytes(b.bytes);
    out->set_device(b.device);
  }
  // The server opens the handles and answers opened and ready together.
  grpc::ByteBuffer in;
  v1::ColocateResponse opened;
  v1::ColocateResponse ready;
  if (!lease.Write(internal::SerializeToByteBuffer(open)) || !lease.Read(&in)) {
    return fail(absl::UnavailableError("Colocate: the server ended the call"));
  }
  if (!internal::ParseFromByteBuffer(in, &opened) || !opened.has_opened()) {
    return fail(absl::DataLossError("Colocate: no readable ColocateOpened"));
  }
  if (!lease.Read(&in)) return fail(absl::UnavailableError("Colocate: the server ended the call"));
  if (!internal::ParseFromByteBuffer(in, &ready) || !ready.has_ready()) {
    return fail(absl::DataLossError("Colocate: no readable ColocateReady"));
  }
  impl->id = opened.opened().region();
  return std::make_unique<ColocatedRegion>(std::move(impl));
}

absl::StatusOr<StepResult> Client::StepInRegion(const std::string& group, int64_t step,
                                                const ColocatedRegion& region,
                                                absl::Span<const RegionRange> ranges,
                                                const StepOptions& options) {
  if (options.streams < 0) {
    return absl::InvalidArgumentError(absl::StrCat("streams: ", options.streams, " < 0"));
  }
  if (options.part_count != 0) {
    return absl::InvalidArgumentError("part_count: not supported by StepInRegion");
  }
  const int streams = options.streams > 0 ? options.streams : impl_->options.streams;
  const std::vector<std::vector<size_t>> runs = DealRanges(ranges, streams);

  v1::StepRequest begin;
  v1::StepBegin* b = begin.mutable_begin();
  internal::SetStepBegin(group, step, options, options.weights, b);
  b->set_attempt(internal::NewAttemptId());
  b->set_region(region.id());
  if (runs.size() > 1) b->set_streams(static_cast<int32_t>(runs.size()));

  std::vector<std::unique_ptr<internal::BlockingStream>> opened;
  for (size_t i = 0; i < runs.size(); ++i) {
    opened.push_back(internal::BlockingStream::Start(impl_->generic(i), kStepMethod,
                                                     impl_->options.timeout_ms,
                                                     impl_->authorization));
  }
  internal::StreamGroup group_streams(std::move(opened));
  std::vector<v1::StepDone> dones(runs.size());
  const internal::BufferMap no_weights;  // weights come through the region, never as messages
  group_streams.Run([&](size_t i) {
    internal::BlockingStream& stream = group_streams.stream(i);
    v1::StepRequest my_begin = begin;
    if (runs.size() > 1) my_begin.mutable_begin()->set_stream_index(static_cast<int32_t>(i));
    bool sent = stream.Write(internal::SerializeToByteBuffer(my_begin));
    for (size_t r : runs[i]) {
      if (!sent) break;
      sent = stream.Write(internal::SerializeToByteBuffer(RegionChunkRequest(ranges[r])));
    }
    v1::StepRequest commit;
    commit.mutable_commit();
    if (sent && stream.Write(internal::SerializeToByteBuffer(commit))) stream.WritesDone();
    absl::Status local;
    bool done = false;
    grpc::ByteBuffer in;
    while (stream.Read(&in)) {
      internal::DecodedStepResponse decoded;
      local = internal::DecodeStepResponse(in, no_weights, &decoded);
      if (!local.ok()) break;
      if (decoded.has_done) {
        dones[i] = decoded.done;
        done = true;
        break;
      }
    }
    if (!local.ok()) group_streams.Fail(local);
    const grpc::Status st = stream.Finish();
    if (!local.ok()) return;
    if (absl::Status s = FromGrpc(st, impl_->target); !s.ok()) {
      group_streams.Fail(s);
    } else if (!done) {
      group_streams.Fail(absl::InternalError(absl::StrCat(
          "step stream ", i, " ended without StepDone [server ", impl_->target, "]")));
    }
  });
  if (absl::Status s = group_streams.status(); !s.ok()) return s;
  StepResult result;
  result.step = dones[0].step();
  result.version = dones[0].version();
  for (const v1::StepDone& d : dones) {
    if (d.step() != result.step || d.version() != result.version) {
      return absl::InternalError(absl::StrCat("the streams of step ", step, " of group ", group,
                                              " disagree [server ", impl_->target, "]"));
    }
    result.duplicate = result.duplicate || d.duplicate();
    result.nonfinite_gradient_elements =
        std::max(result.nonfinite_gradient_elements, d.nonfinite_gradient_elements());
  }
  return result;
}

}  // namespace optd::client
