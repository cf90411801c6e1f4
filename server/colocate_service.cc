#include "server/colocate_service.h"

#include <openssl/evp.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/chunk_codec.h"
#include "server/cuda_ipc_region.h"
#include "server/shm_region.h"

namespace optd::server {
namespace {

// How often a waiting lease looks whether the server is stopping.
constexpr absl::Duration kShutdownPoll = absl::Seconds(1);

absl::Status Stopping() {
  return absl::UnavailableError("the server is shutting down; the colocated region is released");
}

// The next message of the lease, or false at its end; polls for shutdown while it waits.
// `deadline`: DeadlineExceeded after it (InfiniteFuture: none).
absl::StatusOr<bool> ReadLease(OptimizerCore& core, MessageStream* stream, absl::Time deadline,
                               v1::ColocateRequest* request) {
  while (true) {
    if (core.shutting_down()) return Stopping();
    grpc::ByteBuffer message;
    bool timed_out = false;
    const absl::Time until = std::min(deadline, absl::Now() + kShutdownPoll);
    if (stream->ReadUntil(&message, until, &timed_out)) {
      if (absl::Status s = DecodeMessage(message, request); !s.ok()) return s;
      return true;
    }
    if (!timed_out) return false;
    if (absl::Now() >= deadline) return absl::DeadlineExceededError("no message in time");
  }
}

// The lease of a CUDA IPC region: the trainer's buffers are opened at once (there is no name to
// hand out or remove), the region is registered and ready, and lives until the stream ends.
absl::Status ServeCudaIpc(OptimizerCore& core, MessageStream* stream, const ColocateCaller& caller,
                          const v1::ColocateOpen& open) {
  if (open.buffers().empty()) {
    return absl::InvalidArgumentError("open.buffers: a CUDA_IPC region needs at least one buffer");
  }
  int64_t total = 0;
  for (const v1::CudaIpcBuffer& b : open.buffers()) {
    if (b.bytes() <= 0 || b.bytes() > (int64_t{1} << 50) - total) {
      return absl::InvalidArgumentError(
          "open.buffers: every buffer needs 0 < bytes, in all < 2^50");
    }
    total += b.bytes();
  }
  auto ticket = core.regions().Admit(caller.client, total);
  if (!ticket.ok()) return ticket.status();
  auto id = RandomHex128();
  if (!id.ok()) return id.status();
  RegionOwner owner{open.group(), caller.principal, caller.client};
  auto created = CudaIpcRegion::Create(*id, std::move(owner), open.buffers(), &core.engine(),
                                       *std::move(ticket));
  if (!created.ok()) return created.status();
  core.regions().Insert(std::shared_ptr<ColocatedRegion>(*std::move(created)));
  v1::ColocateResponse response;
  v1::ColocateOpened* opened = response.mutable_opened();
  opened->set_region(*id);
  opened->set_bytes(total);
  if (!stream->Write(EncodeMessage(response))) {
    core.regions().Remove(*id);
    return absl::OkStatus();  // the client left
  }
  v1::ColocateResponse ready;
  ready.mutable_ready();
  if (!stream->Write(EncodeMessage(ready))) {
    core.regions().Remove(*id);
    return absl::OkStatus();
  }
  v1::ColocateRequest request;
  auto more = ReadLease(core, stream, absl::InfiniteFuture(), &request);
  core.regions().Remove(*id);
  if (!more.ok()) return more.status();
  if (*more) {
    return absl::InvalidArgumentError(
        "nothing is expected on a CUDA_IPC Colocate stream after open; end the stream to release "
        "the region");
  }
  return absl::OkStatus();
}

}  // namespace

std::string PrincipalOf(bool authentication, std::optional<absl::string_view> authorization) {
  if (!authentication || !authorization.has_value()) return "";
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(authorization->data(), authorization->size(), digest, &n, EVP_sha256(),
                 nullptr) != 1) {
    return "unhashable";  // matches no principal that hashed (a region opened then is unusable)
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), static_cast<size_t>(n)));
}

absl::Status ServeColocate(OptimizerCore& core, MessageStream* stream,
                           const ColocateCaller& caller, absl::Duration map_timeout) {
  v1::ColocateRequest request;
  auto first = ReadLease(core, stream, absl::InfiniteFuture(), &request);
  if (!first.ok()) return first.status();
  if (!*first) return absl::OkStatus();  // the client left before asking
  if (!request.has_open()) {
    return absl::InvalidArgumentError("a Colocate stream must open with ColocateRequest.open");
  }
  const v1::ColocateOpen& open = request.open();
  if (absl::Status s = caller.authorize(open.group()); !s.ok()) return s;
  auto group = core.FindGroup(open.group());
  if (!group.ok()) {
    return absl::Status(group.status().code(),
                        absl::StrCat("open.group: ", group.status().message()));
  }
  switch (open.kind()) {
    case v1::SHM:
      break;
    case v1::CUDA_IPC:
      return ServeCudaIpc(core, stream, caller, open);
    default:
      return absl::InvalidArgumentError(absl::StrCat("open.kind ", static_cast<int>(open.kind()),
                                                     " is not SHM (1) or CUDA_IPC (2)"));
  }
  auto ticket = core.regions().Admit(caller.client, open.bytes());
  if (!ticket.ok()) return ticket.status();
  auto id = RandomHex128();
  if (!id.ok()) return id.status();
  RegionOwner owner{open.group(), caller.principal, caller.client};
  auto created = ShmRegion::Create(*id, std::move(owner), open.bytes(), &core.engine(),
                                   *std::move(ticket));
  if (!created.ok()) return created.status();
  std::shared_ptr<ShmRegion> region = *std::move(created);

  v1::ColocateResponse response;
  v1::ColocateOpened* opened = response.mutable_opened();
  opened->set_region(region->id());
  opened->set_shm_name(region->name());
  opened->set_bytes(open.bytes());
  if (!stream->Write(EncodeMessage(response))) return absl::OkStatus();  // the client left

  auto mapped = ReadLease(core, stream, absl::Now() + map_timeout, &request);
  region->Unlink();  // confirmed or not, nobody else may open it from now on
  if (absl::IsDeadlineExceeded(mapped.status())) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the client did not confirm the mapping (ColocateRequest.mapped) within ",
        absl::FormatDuration(map_timeout), "; the region is released"));
  }
  if (!mapped.ok()) return mapped.status();
  if (!*mapped) return absl::OkStatus();
  if (!request.has_mapped()) {
    return absl::InvalidArgumentError(
        "the second message of a Colocate stream must be ColocateRequest.mapped");
  }
  core.regions().Insert(region);
  region.reset();  // the registry's reference is the lease's
  v1::ColocateResponse ready;
  ready.mutable_ready();
  if (!stream->Write(EncodeMessage(ready))) {
    core.regions().Remove(*id);
    return absl::OkStatus();  // the client left
  }
  // The lease: wait for its end.
  auto more = ReadLease(core, stream, absl::InfiniteFuture(), &request);
  core.regions().Remove(*id);
  if (!more.ok()) return more.status();
  if (*more) {
    return absl::InvalidArgumentError(
        "nothing is expected on a Colocate stream after mapped; end the stream to release the "
        "region");
  }
  return absl::OkStatus();
}

}  // namespace optd::server
