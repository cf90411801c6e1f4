// Client::Impl: what a Client holds behind its header (gRPC and proto types stay out of it).
#pragma once

#include <memory>
#include <string>

#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "optd/client/client.h"
#include "optd/client/types.h"
#include "optd/v1/optd.grpc.pb.h"

namespace optd::client {

// Thread safety: immutable after construction; the channel and stub are thread-safe.
struct Client::Impl {
  std::string target;
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Optimizer::Stub> stub;

  // Sets the call's deadline from options.timeout_ms.
  void PrepareContext(grpc::ClientContext* context) const;
};

}  // namespace optd::client
