#include "server/shm_region.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace optd::server {
namespace {

// Note [Truncated mappings]: the jump target of the copy running on this thread, if any.
thread_local sigjmp_buf* t_copy_guard = nullptr;
struct sigaction g_previous_sigbus;

void OnSigbus(int sig, siginfo_t* info, void* context) {
  if (t_copy_guard != nullptr) siglongjmp(*t_copy_guard, 1);
  // Not a guarded copy: what would have happened without us.
  if ((g_previous_sigbus.sa_flags & SA_SIGINFO) != 0 &&
      g_previous_sigbus.sa_sigaction != nullptr) {
    g_previous_sigbus.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous_sigbus.sa_handler != SIG_DFL && g_previous_sigbus.sa_handler != SIG_IGN) {
    g_previous_sigbus.sa_handler(sig);
    return;
  }
  signal(SIGBUS, SIG_DFL);
  raise(SIGBUS);
}

void InstallSigbusGuard() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = OnSigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &g_previous_sigbus);
  });
}

// memcpy that returns false instead of dying when a page of the shared object is gone.
bool GuardedCopy(void* dst, const void* src, size_t n) {
  sigjmp_buf target;
  if (sigsetjmp(target, /*savemask=*/1) != 0) {
    t_copy_guard = nullptr;
    return false;
  }
  t_copy_guard = &target;
  std::memcpy(dst, src, n);
  t_copy_guard = nullptr;
  return true;
}

absl::Status Errno(const std::string& what, int err) {
  if (err == ENOSPC || err == ENOMEM || err == EFBIG) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": ", std::strerror(err),
                     " (/dev/shm has no room for the region; ask for less, or enlarge /dev/shm)"));
  }
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

absl::Status Truncated(const std::string& name) {
  return absl::DataLossError(absl::StrCat(
      "the shared memory of region ", name,
      " is gone (the client cut the object short); the region cannot be used"));
}

}  // namespace

absl::StatusOr<std::string> RandomHex128() {
  unsigned char bits[16];
  size_t got = 0;
  while (got < sizeof(bits)) {
    const ssize_t n = getrandom(bits + got, sizeof(bits) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("getrandom: ", std::strerror(errno)));
    }
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (size_t i = 0; i < sizeof(bits); ++i) {
    out[2 * i] = kHex[bits[i] >> 4];
    out[2 * i + 1] = kHex[bits[i] & 15];
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ShmRegion>> ShmRegion::Create(
    std::string id, RegionOwner owner, int64_t bytes, core::Engine* engine,
    std::unique_ptr<RegionTicket> ticket) {
  if (bytes <= 0) return absl::InvalidArgumentError("open.bytes must be > 0");
  InstallSigbusGuard();
  auto suffix = RandomHex128();
  if (!suffix.ok()) return suffix.status();
  std::unique_ptr<ShmRegion> region(new ShmRegion(std::move(id), std::move(owner),
                                                  std::move(ticket),
                                                  absl::StrCat("/optd-", *suffix)));
  const int fd = shm_open(region->name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) {
    region->unlinked_ = true;  // nothing was created
    return Errno("shm_open", errno);
  }
  // From here on the destructor unlinks the name.
  int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (err != 0) {
    close(fd);
    return Errno(absl::StrCat("posix_fallocate of ", bytes, " bytes"), err);
  }
  void* map = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  err = errno;
  close(fd);  // the mapping keeps the object
  if (map == MAP_FAILED) return Errno("mmap", err);
  region->map_ = map;
  region->bytes_ = bytes;
  auto registration = engine->RegisterHostMemory(map, bytes);
  if (!registration.ok()) return registration.status();
  region->registration_ = *std::move(registration);
  region->buffers_.push_back(RegionBuffer{map, bytes});
  // Page-locked for the CUDA engine's DMA: it may copy gradients out and weights in directly.
  region->engine_reads_in_place_ = engine->backend() == core::Backend::kCuda;
  return region;
}

ShmRegion::~ShmRegion() {
  registration_.reset();  // before the memory goes
  if (map_ != nullptr) munmap(map_, static_cast<size_t>(bytes_));
  Unlink();
}

void ShmRegion::Unlink() {
  if (unlinked_.exchange(true)) return;
  shm_unlink(name_.c_str());
}

absl::Status ShmRegion::ReadRange(int buffer, int64_t offset, int64_t bytes, void* dst) const {
  const RegionBuffer& b = buffers_[static_cast<size_t>(buffer)];
  if (!GuardedCopy(dst, static_cast<const uint8_t*>(b.data) + offset, static_cast<size_t>(bytes))) {
    return Truncated(id());
  }
  return absl::OkStatus();
}

absl::Status ShmRegion::WriteRange(int buffer, int64_t offset, const void* src,
                                   int64_t bytes) const {
  const RegionBuffer& b = buffers_[static_cast<size_t>(buffer)];
  if (!GuardedCopy(static_cast<uint8_t*>(b.data) + offset, src, static_cast<size_t>(bytes))) {
    return Truncated(id());
  }
  return absl::OkStatus();
}

}  // namespace optd::server
