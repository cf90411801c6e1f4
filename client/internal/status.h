// grpc::Status -> absl::Status (the codes are equal, so a cast), naming the server; the
// message of DEADLINE_EXCEEDED, CANCELLED and UNAVAILABLE says that the operation may have been
// applied anyway.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace optd::client::internal {

absl::Status FromGrpc(const grpc::Status& status, const std::string& target);

}  // namespace optd::client::internal
