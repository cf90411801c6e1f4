// The real optd binary as a child process of a benchmark, on 127.0.0.1 with free ports.
// Thread safety: not thread-safe; one owner. The destructor stops the server (SIGTERM, wait).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace optd::bench {

class ServerChild {
 public:
  // Starts `binary` with --listen/--metrics_listen on 127.0.0.1:0 plus `args`, and waits (up to
  // 60 s) until it wrote its port files. Its output goes to a log file in a fresh /tmp
  // directory; a failure to start quotes that log.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ServerChild>> Start(
      const std::string& binary, const std::vector<std::string>& args);
  ~ServerChild();
  ServerChild(const ServerChild&) = delete;
  ServerChild& operator=(const ServerChild&) = delete;

  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_; }

  // User + system CPU seconds the server (all its threads) has used so far; -1 if unreadable.
  double CpuSeconds() const;

 private:
  ServerChild() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  std::string log_;
};

}  // namespace optd::bench
