#include "bench/wire/server_child.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"

extern char** environ;

namespace optd::bench {
namespace {

int ReadInt(const std::string& path) {
  std::ifstream in(path);
  int v = 0;
  in >> v;
  return v;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerChild>> ServerChild::Start(
    const std::string& binary, const std::vector<std::string>& args) {
  char tmpl[] = "/tmp/optd-wire-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  const std::string dir = tmpl;
  std::unique_ptr<ServerChild> child(new ServerChild());
  child->log_ = dir + "/server.log";
  std::vector<std::string> argv_s = {binary, "--listen=127.0.0.1:0",
                                     "--metrics_listen=127.0.0.1:0",
                                     "--port_file=" + dir + "/port",
                                     "--metrics_port_file=" + dir + "/mport"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  // posix_spawn, not fork: a benchmark may already run threads (gRPC's, the TCP ceiling's).
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, child->log_.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  const int rc = posix_spawn(&child->pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    child->pid_ = -1;
    return absl::InternalError(absl::StrCat("cannot start ", binary, ": errno ", rc));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(child->pid_, &status, WNOHANG) == child->pid_) {
      child->pid_ = -1;
      return absl::InternalError(
          absl::StrCat(binary, " exited during start-up: ", ReadFile(child->log_)));
    }
    child->port_ = ReadInt(dir + "/port");
    child->metrics_port_ = ReadInt(dir + "/mport");
    if (child->port_ > 0 && child->metrics_port_ > 0) return child;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(
      absl::StrCat(binary, " wrote no port file within 60 s: ", ReadFile(child->log_)));
}

ServerChild::~ServerChild() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
}

double ServerChild::CpuSeconds() const {
  const std::string text = ReadFile("/proc/" + std::to_string(pid_) + "/stat");
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream fields(text.substr(paren + 2));  // after "pid (comm) ": field 3 onwards
  std::string f;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14 || i == 15) ticks += std::atof(f.c_str());  // utime, stime
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace optd::bench
