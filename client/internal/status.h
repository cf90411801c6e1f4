// grpc::Status -> absl::Status (the codes are equal, so a cast), naming the server.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace optd::client::internal {

absl::Status FromGrpc(const grpc::Status& status, const std::string& target);

}  // namespace optd::client::internal
