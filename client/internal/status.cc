#include "client/internal/status.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace optd::client::internal {

absl::Status FromGrpc(const grpc::Status& status, const std::string& target) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  // A call that ended on this side (deadline, cancellation, lost connection) may still have
  // been applied by the server: say so, since the status alone reads like a clean failure
  // (docs/limits.md, "Calls that may have taken effect although the caller saw an error").
  // Except a call that never left: gRPC's words (1.51 .. 1.84) when no connection was made.
  const bool never_sent = absl::StrContains(status.error_message(),
                                            "failed to connect to all addresses");
  const bool outcome_unknown = !never_sent && (code == absl::StatusCode::kDeadlineExceeded ||
                                               code == absl::StatusCode::kCancelled ||
                                               code == absl::StatusCode::kUnavailable);
  // The server's message first: callers match on the field it names.
  return absl::Status(code, absl::StrCat(status.error_message(), " [server ", target, "]",
                                         outcome_unknown
                                             ? "; the operation may have been applied"
                                             : ""));
}

}  // namespace optd::client::internal
