#include "server/limits_memory.h"

#include <sys/resource.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace optd::server {
namespace {

// The value of "Key:  123 kB" lines of /proc/meminfo or /proc/self/status, in bytes; -1 if absent.
int64_t ProcKilobytes(const char* path, absl::string_view key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest(line);
    if (!absl::ConsumePrefix(&rest, key) || !absl::ConsumePrefix(&rest, ":")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, " kB");
    int64_t kb = 0;
    if (absl::SimpleAtoi(rest, &kb)) return kb * 1024;
  }
  return -1;
}

// A file holding one decimal number ("max" and unparsable: -1).
int64_t ReadNumber(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text)) return -1;
  int64_t v = 0;
  return absl::SimpleAtoi(text, &v) ? v : -1;
}

// "key value" lines (cgroup memory.stat).
int64_t StatValue(const std::string& path, absl::string_view key) {
  std::ifstream in(path);
  std::string k;
  int64_t v = 0;
  while (in >> k >> v) {
    if (k == key) return v;
  }
  return -1;
}

// Limit minus working set of this process's memory cgroup (v2, then v1); -1 without a limit.
// The working set leaves out inactive file cache, which the kernel reclaims before it OOMs us.
int64_t CgroupRoom() {
  std::ifstream self("/proc/self/cgroup");
  std::string line;
  std::string v2_path;
  while (std::getline(self, line)) {
    if (absl::StartsWith(line, "0::")) v2_path = line.substr(3);
  }
  auto room = [](const std::string& limit_file, const std::string& usage_file,
                 const std::string& stat_file, absl::string_view inactive_key) -> int64_t {
    const int64_t limit = ReadNumber(limit_file);
    const int64_t usage = ReadNumber(usage_file);
    // v1 reports "no limit" as a huge page-rounded number.
    if (limit < 0 || usage < 0 || limit >= (int64_t{1} << 60)) return -1;
    const int64_t inactive = std::max<int64_t>(0, StatValue(stat_file, inactive_key));
    return std::max<int64_t>(0, limit - std::max<int64_t>(0, usage - inactive));
  };
  if (!v2_path.empty()) {
    const std::string dir = absl::StrCat("/sys/fs/cgroup", v2_path == "/" ? "" : v2_path);
    const int64_t r =
        room(dir + "/memory.max", dir + "/memory.current", dir + "/memory.stat", "inactive_file");
    if (r >= 0) return r;
  }
  return room("/sys/fs/cgroup/memory/memory.limit_in_bytes",
              "/sys/fs/cgroup/memory/memory.usage_in_bytes", "/sys/fs/cgroup/memory/memory.stat",
              "total_inactive_file");
}

std::string Bytes(int64_t n) {
  return absl::StrCat(n, " bytes (", absl::SixDigits(static_cast<double>(n) / (1 << 30)), " GiB)");
}

}  // namespace

HostMemory ReadHostMemory() {
  HostMemory m;
  m.available = ProcKilobytes("/proc/meminfo", "MemAvailable");
  const int64_t cgroup = CgroupRoom();
  if (cgroup >= 0 && (m.available < 0 || cgroup < m.available)) m.available = cgroup;
  m.resident = std::max<int64_t>(0, ProcKilobytes("/proc/self/status", "VmRSS"));
  struct rlimit as;
  if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) {
    const int64_t size = std::max<int64_t>(0, ProcKilobytes("/proc/self/status", "VmSize"));
    m.address_space_room = std::max<int64_t>(0, static_cast<int64_t>(as.rlim_cur) - size);
  }
  return m;
}

MemoryNeed GroupMemoryNeed(const GroupBytes& bytes, core::Backend backend,
                           const core::EngineStats& stats) {
  MemoryNeed need;
  // Inputs are bounded by CheckGroupSpec (no int64 overflow); saturate anyway.
  auto add = [](int64_t a, int64_t b) {
    int64_t out;
    return __builtin_add_overflow(a, b, &out) ? INT64_MAX : out;
  };
  auto mul = [](int64_t a, int64_t b) {
    int64_t out;
    return __builtin_mul_overflow(a, b, &out) ? INT64_MAX : out;
  };
  need.host = mul(kWorkingCopies, bytes.weights);
  if (backend == core::Backend::kCuda) {
    const int64_t budget_left =
        std::max<int64_t>(0, stats.device_budget_bytes - stats.state_bytes_device);
    const int64_t resident = std::min(bytes.states, budget_left);
    need.device = add(bytes.weights, resident);
    need.host = add(need.host, bytes.states - resident);
  } else {
    need.host = add(need.host, add(bytes.weights, bytes.states));
  }
  return need;
}

int64_t LiveWorkingCopies(const core::EngineStats& stats) {
  return kWorkingCopies * (stats.weight_bytes_host + stats.weight_bytes_device);
}

MemoryNeed LiveMemoryNeed(const core::EngineStats& stats) {
  MemoryNeed need;
  need.host = stats.weight_bytes_host + stats.state_bytes_host + LiveWorkingCopies(stats);
  need.device = stats.weight_bytes_device + stats.state_bytes_device;
  return need;
}

GroupAdmission::Ticket::~Ticket() { owner_->Release(slot_, need_); }

GroupAdmission::GroupAdmission(core::Engine* engine, Limits limits,
                               std::function<int()> live_groups)
    : engine_(engine),
      limits_(std::move(limits)),
      reserve_(limits_.memory_reserve_bytes),
      live_groups_(std::move(live_groups)) {}

void GroupAdmission::Release(bool slot, MemoryNeed need) {
  absl::MutexLock lock(&mu_);
  if (slot) --pending_groups_;
  pending_.host -= need.host;
  pending_.device -= need.device;
}

absl::StatusOr<std::unique_ptr<GroupAdmission::Ticket>> GroupAdmission::Admit(
    const std::string& name, const core::GroupSpec& spec, bool new_name) {
  const std::optional<GroupBytes> bytes = CountGroupBytes(spec);
  if (!bytes.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("group '", name, "': its weight and state bytes overflow a 64-bit count"));
  }
  // Read before taking the lock: /proc and the CUDA driver may be slow-ish.
  const core::EngineStats stats = engine_->Stats();
  const HostMemory host = ReadHostMemory();
  const MemoryNeed need = GroupMemoryNeed(*bytes, engine_->backend(), stats);
  const MemoryNeed live = LiveMemoryNeed(stats);
  const std::string what = absl::StrCat("group '", name, "' (", bytes->weights, " weight bytes, ",
                                        bytes->states, " state bytes)");

  absl::MutexLock lock(&mu_);
  if (new_name) {
    const int groups = live_groups_() + pending_groups_;
    if (groups >= limits_.max_groups) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot create ", what,
                                                       ": the server holds ", groups,
                                                       " groups, the limit (--max_groups)"));
    }
  }
  if (host.available >= 0) {
    const int64_t room = host.available + host.resident - reserve_ - live.host - pending_.host;
    if (need.host > room) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot create ", what, ": it needs ", Bytes(need.host), " of host memory, ",
          Bytes(std::max<int64_t>(room, 0)),
          " are free (available + this server's resident memory - what its groups need - "
          "--memory_reserve_bytes=",
          reserve_, ")"));
    }
  }
  if (host.address_space_room >= 0) {
    // The engines' own allocations are in VmSize already; the live groups' working copies may
    // not be yet, and are counted as if none were (an overrun here kills the process).
    const int64_t room =
        host.address_space_room - reserve_ - pending_.host - LiveWorkingCopies(stats);
    if (need.host > room) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot create ", what, ": it needs ", Bytes(need.host), " of host memory, ",
          Bytes(std::max<int64_t>(room, 0)),
          " are left under the address-space limit (RLIMIT_AS) after the live groups' working "
          "copies and --memory_reserve_bytes=",
          reserve_));
    }
  }
  if (need.device > 0 && stats.device_free_bytes >= 0) {
    const int64_t room = stats.device_free_bytes - reserve_ - pending_.device;
    if (need.device > room) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot create ", what, ": it needs ", Bytes(need.device), " of device memory, ",
          Bytes(std::max<int64_t>(room, 0)), " are free after --memory_reserve_bytes=", reserve_));
    }
  }
  if (new_name) ++pending_groups_;
  pending_.host += need.host;
  pending_.device += need.device;
  return std::unique_ptr<Ticket>(new Ticket(this, new_name, need));
}

}  // namespace optd::server
