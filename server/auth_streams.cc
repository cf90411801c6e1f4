#include "server/auth_streams.h"

namespace optd::server {

absl::StatusOr<bool> AuthorizedStepStream::Read(StepRequestRef* request) {
  auto more = inner_->Read(request);
  if (!more.ok() || !*more || request->kind != StepRequestRef::Kind::kBegin) return more;
  if (absl::Status s = authorizer_->Check(caller_, Action::kStep, request->begin.group());
      !s.ok()) {
    return s;
  }
  return more;
}

absl::StatusOr<bool> AuthorizedUploadStream::Read(std::string* group, ChunkRef* chunk) {
  auto more = inner_->Read(group, chunk);
  // A message that leaves the group empty continues the stream's group, checked already; the
  // first message must name one (the core refuses the stream otherwise).
  if (!more.ok() || !*more || group->empty()) return more;
  if (absl::Status s = authorizer_->Check(caller_, Action::kUploadWeights, *group); !s.ok()) {
    return s;
  }
  return more;
}

absl::StatusOr<bool> AuthorizedStateSource::Read(v1::StateChunk* header, Payload* data) {
  auto more = inner_->Read(header, data);
  if (!more.ok() || !*more || header->group().empty()) return more;
  if (absl::Status s = authorizer_->Check(caller_, Action::kImportState, header->group());
      !s.ok()) {
    return s;
  }
  return more;
}

}  // namespace optd::server
