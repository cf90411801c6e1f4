// Client::Impl: what a Client holds behind its header (gRPC and proto types stay out of it).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/generic/generic_stub.h"
#include "optd/client/client.h"
#include "optd/client/types.h"
#include "optd/v1/optd.grpc.pb.h"

namespace optd::client {

// One connection to the server: a channel of its own (its own TCP connection, see
// Note [One connection per channel] in client.cc), with a typed stub for the protobuf calls
// and a generic stub for the raw data path.
struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Optimizer::Stub> stub;
  std::unique_ptr<grpc::GenericStub> generic;
};

// Thread safety: immutable after construction; channels and stubs are thread-safe.
struct Client::Impl {
  std::string target;
  ClientOptions options;
  // "Bearer <token>" of options.token, or "" (client/internal/channel_credentials.h).
  std::string authorization;
  std::vector<Connection> connections;  // options.streams of them; [0] for everything else

  v1::Optimizer::Stub& stub() const { return *connections[0].stub; }
  // The generic stub of the connection for stream i (streams beyond the connections share).
  grpc::GenericStub* generic(size_t i) const {
    return connections[i % connections.size()].generic.get();
  }
  // Sets the call's deadline from options.timeout_ms and its authorization metadata.
  void PrepareContext(grpc::ClientContext* context) const;
};

}  // namespace optd::client
