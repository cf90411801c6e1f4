// The channel credentials and per-call metadata of ClientOptions::tls and ClientOptions::token.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "optd/client/types.h"

namespace optd::client::internal {

// TLS credentials when `tls` asks for TLS (TlsOptions::enabled or any PEM field), else
// plaintext. Sets the server name override in `args` when tls.server_name is set.
// InvalidArgument naming the field for an unreadable file, text that is not PEM, or a client
// certificate without its key (or the reverse).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& tls, grpc::ChannelArguments* args);

// The "authorization" metadata value of `token` ("Bearer <token>"), or "" for no token.
// InvalidArgument when the token holds characters other than visible ASCII.
absl::StatusOr<std::string> AuthorizationValue(const std::string& token);

}  // namespace optd::client::internal
