#include "bench/wire/tcp_loopback.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <latch>
#include <thread>

#include "absl/strings/str_cat.h"

namespace optd::bench {
namespace {

constexpr size_t kWriteBytes = size_t{1} << 20;  // one send() call

// Closes the file descriptors it holds.
struct Fds {
  std::vector<int> fds;
  ~Fds() {
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
  }
  int Add(int fd) {
    fds.push_back(fd);
    return fd;
  }
};

bool SendAll(int fd, const uint8_t* p, size_t n) {
  size_t off = 0;
  while (off < n) {
    const ssize_t r = send(fd, p + off, std::min(kWriteBytes, n - off), MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    off += static_cast<size_t>(r);
  }
  return true;
}

bool RecvAll(int fd, uint8_t* p, size_t n) {
  size_t off = 0;
  while (off < n) {
    const ssize_t r = recv(fd, p + off, n - off, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    off += static_cast<size_t>(r);
  }
  return true;
}

}  // namespace

TcpLoopback::TcpLoopback(size_t bytes) : bytes_(bytes) {
  // Written once so the pages are resident (and not zero pages) before anything is timed.
  up_src_.assign(bytes_, 0x5a);
  up_dst_.assign(bytes_, 0xa5);
}

absl::StatusOr<double> TcpLoopback::Measure(int connections, TcpPattern pattern) {
  if (connections < 1) return absl::InvalidArgumentError("connections must be >= 1");
  if (pattern == TcpPattern::kTwoWay && down_src_.empty()) {
    down_src_.assign(bytes_, 0x3c);
    down_dst_.assign(bytes_, 0xc3);
  }
  Fds owned;
  const int listener = owned.Add(socket(AF_INET, SOCK_STREAM, 0));
  if (listener < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      listen(listener, connections) != 0) {
    return absl::InternalError(absl::StrCat("loopback listener: ", std::strerror(errno)));
  }
  std::vector<int> client_fds, server_fds;
  for (int i = 0; i < connections; ++i) {
    const int c = owned.Add(socket(AF_INET, SOCK_STREAM, 0));
    if (c < 0 || connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return absl::InternalError(absl::StrCat("connect: ", std::strerror(errno)));
    }
    const int s = owned.Add(accept(listener, nullptr, nullptr));
    if (s < 0) return absl::InternalError(absl::StrCat("accept: ", std::strerror(errno)));
    client_fds.push_back(c);
    server_fds.push_back(s);
  }
  const bool two_way = pattern == TcpPattern::kTwoWay;
  const size_t slice = (bytes_ + static_cast<size_t>(connections) - 1) / connections;
  std::latch start(1);
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  auto run = [&](int fd, bool sending, uint8_t* base, size_t off) {
    const size_t n = off < bytes_ ? std::min(slice, bytes_ - off) : 0;
    start.wait();
    const bool ok = sending ? SendAll(fd, base + off, n) : RecvAll(fd, base + off, n);
    if (!ok) failed = true;
  };
  for (int i = 0; i < connections; ++i) {
    const size_t off = slice * static_cast<size_t>(i);
    threads.emplace_back(run, client_fds[i], true, up_src_.data(), off);
    threads.emplace_back(run, server_fds[i], false, up_dst_.data(), off);
    if (two_way) {
      threads.emplace_back(run, server_fds[i], true, down_src_.data(), off);
      threads.emplace_back(run, client_fds[i], false, down_dst_.data(), off);
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  start.count_down();
  for (std::thread& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (failed) return absl::InternalError("loopback TCP transfer broke off");
  const double moved = static_cast<double>(bytes_) * (two_way ? 2 : 1);
  return moved / seconds / 1e9;
}

}  // namespace optd::bench
