#include "server/checkpoint_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace optd::server {
namespace {

// Regular files of `dir` with their modification times (ns).
absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> RegularFiles(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    return absl::ErrnoToStatus(errno, "listing the checkpoint directory");
  }
  std::vector<std::pair<std::string, int64_t>> out;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    out.emplace_back(name, int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec);
  }
  closedir(d);
  return out;
}

bool ProcessRuns(int64_t pid) {
  if (pid <= 0 || pid > INT32_MAX) return false;
  return kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

}  // namespace

bool IsCheckpointTempName(std::string_view name, int64_t* pid) {
  // CheckpointWriter: "<path>.tmp-<pid>-XXXXXX" (mkostemp's six characters).
  const size_t at = name.rfind(".tmp-");
  if (at == std::string_view::npos) return false;
  std::string_view rest = name.substr(at + 5);
  const size_t dash = rest.find('-');
  if (dash == std::string_view::npos || dash == 0 || rest.size() - dash - 1 != 6) return false;
  int64_t p = 0;
  if (!absl::SimpleAtoi(absl::string_view(rest.data(), dash), &p)) return false;
  if (pid != nullptr) *pid = p;
  return true;
}

absl::StatusOr<std::vector<std::string>> RemoveOrphanTempFiles(const std::string& dir) {
  auto files = RegularFiles(dir);
  if (!files.ok()) return files.status();
  std::vector<std::string> removed;
  const int64_t self = getpid();
  for (const auto& [name, mtime] : *files) {
    int64_t pid = 0;
    if (!IsCheckpointTempName(name, &pid)) continue;
    if (pid != self && ProcessRuns(pid)) continue;
    if (unlink(absl::StrCat(dir, "/", name).c_str()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("removing orphaned temporary file ", name));
    }
    removed.push_back(name);
  }
  return removed;
}

std::string PeriodicCheckpointName(std::string_view prefix, int64_t sequence, absl::Time time) {
  return absl::StrCat(absl::string_view(prefix.data(), prefix.size()),
                      absl::Dec(sequence, absl::kZeroPad10), "-",
                      absl::FormatTime("%Y%m%dT%H%M%SZ", time, absl::UTCTimeZone()));
}

int64_t PeriodicCheckpointSequence(std::string_view prefix, std::string_view name) {
  if (name.size() < prefix.size() + 11 || name.substr(0, prefix.size()) != prefix) return -1;
  const std::string_view digits = name.substr(prefix.size(), 10);
  if (name[prefix.size() + 10] != '-' || IsCheckpointTempName(name)) return -1;
  int64_t seq = 0;
  for (char c : digits) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return -1;
    seq = seq * 10 + (c - '0');
  }
  return seq;
}

absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> ListPeriodicCheckpoints(
    const std::string& dir, std::string_view prefix) {
  auto files = RegularFiles(dir);
  if (!files.ok()) return files.status();
  std::vector<std::pair<int64_t, std::string>> out;
  for (const auto& [name, mtime] : *files) {
    const int64_t seq = PeriodicCheckpointSequence(prefix, name);
    if (seq >= 0) out.emplace_back(seq, name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::vector<std::string>> CheckpointFilesNewestFirst(const std::string& dir) {
  auto files = RegularFiles(dir);
  if (!files.ok()) return files.status();
  std::vector<std::pair<std::string, int64_t>> kept;
  for (auto& f : *files) {
    if (!IsCheckpointTempName(f.first)) kept.push_back(std::move(f));
  }
  std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
    return std::tie(b.second, b.first) < std::tie(a.second, a.first);
  });
  std::vector<std::string> out;
  for (auto& f : kept) out.push_back(std::move(f.first));
  return out;
}

}  // namespace optd::server
