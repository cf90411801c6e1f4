// A minimal HTTP/1.0 GET over a loopback socket, for reading the server's /metrics from tests,
// benchmarks and tools without an HTTP client dependency. Not used by the server itself.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace optd::server {

// GET http://127.0.0.1:port<path>; returns the body of a 200 response. Unavailable when nothing
// listens there, Internal for a broken or non-200 response (the message quotes the status line).
absl::StatusOr<std::string> HttpGetLoopback(int port, const std::string& path);

}  // namespace optd::server
