#include "tests/client/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace optd::testing {

std::string ServerBinary() {
  const char* b = std::getenv("OPTD_SERVER_BIN");
  if (b != nullptr && *b != '\0') return b;
#ifdef OPTD_SERVER_BIN_DEFAULT
  return OPTD_SERVER_BIN_DEFAULT;
#else
  return "";
#endif
}

std::string MakeTempDir(const std::string& prefix) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string templ = absl::StrCat(base ? base : "/tmp", "/", prefix, "-XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  const char* dir = mkdtemp(buf.data());
  return dir == nullptr ? "" : std::string(dir);
}

absl::StatusOr<ServerProcess*> ServerProcess::Start(const std::string& binary,
                                                    const std::string& workdir,
                                                    const std::vector<std::string>& extra_args) {
  mkdir(workdir.c_str(), 0755);
  mkdir((workdir + "/ckpt").c_str(), 0755);  // the server does not create it
  const std::string port_file = workdir + "/port";
  const std::string log = workdir + "/server.log";
  std::vector<std::string> args = {binary,
                                   "--listen=127.0.0.1:0",
                                   "--metrics_listen=127.0.0.1:0",
                                   "--backend=cpu",
                                   "--checkpoint_dir=" + workdir + "/ckpt",
                                   "--port_file=" + port_file};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  // posix_spawn, not fork: the test process already runs gRPC threads, and only
  // async-signal-safe calls may follow a fork in a threaded process.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return absl::InternalError(absl::StrCat("cannot start ", binary, ": errno ", rc));
  auto* server = new ServerProcess();
  server->pid_ = pid;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      server->pid_ = -1;
      delete server;
      std::ifstream in(log);
      std::stringstream ss;
      ss << in.rdbuf();
      return absl::InternalError(absl::StrCat("optd exited early: ", ss.str()));
    }
    std::ifstream in(port_file);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!text.empty() && text.back() == '\n') {
      server->target_ = absl::StrCat("127.0.0.1:", std::stoi(text));
      return server;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  delete server;
  return absl::DeadlineExceededError("optd did not write its port file within 30 s");
}

void ServerProcess::Kill() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 400; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    Kill();
  }
}

}  // namespace optd::testing
