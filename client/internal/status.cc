#include "client/internal/status.h"

#include "absl/strings/str_cat.h"

namespace optd::client::internal {

absl::Status FromGrpc(const grpc::Status& status, const std::string& target) {
  if (status.ok()) return absl::OkStatus();
  // The server's message first: callers match on the field it names.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(status.error_message(), " [server ", target, "]"));
}

}  // namespace optd::client::internal
