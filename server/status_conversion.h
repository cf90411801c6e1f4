// The one place where absl::Status becomes grpc::Status (the codes are equal by design).
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace optd::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace optd::server
