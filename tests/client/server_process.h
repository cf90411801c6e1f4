// Test helper: runs the built optd binary ($OPTD_SERVER_BIN) on 127.0.0.1:0 and reads the
// bound port from --port_file. Thread safety: not thread-safe; one owner.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace optd::testing {

class ServerProcess {
 public:
  // Starts the server with its files under `workdir` (created), plus `extra_args` (flags).
  // Waits until it serves.
  static absl::StatusOr<ServerProcess*> Start(const std::string& binary,
                                              const std::string& workdir,
                                              const std::vector<std::string>& extra_args = {});
  ~ServerProcess();  // SIGTERM, then waits

  const std::string& target() const { return target_; }
  void Kill();  // SIGKILL now (a crashed shard)

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  std::string target_;
};

// $OPTD_SERVER_BIN, else the optd built with the tests, else empty.
std::string ServerBinary();
// A fresh directory under $TEST_TMPDIR or /tmp.
std::string MakeTempDir(const std::string& prefix);

}  // namespace optd::testing
