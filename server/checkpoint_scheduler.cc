#include "server/checkpoint_scheduler.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/checkpoint_dir.h"
#include "server/checkpoint_file.h"

namespace optd::server {
namespace {

// How often the thread looks at the groups' versions for the step trigger.
constexpr absl::Duration kPollInterval = absl::Seconds(1);

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointScheduler>> CheckpointScheduler::Start(
    OptimizerCore* core, CheckpointScheduleOptions options) {
  if (core->options().checkpoint_dir.empty()) {
    return absl::InvalidArgumentError("periodic checkpoints need --checkpoint_dir");
  }
  if (options.keep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--checkpoint_keep must be >= 1, got ", options.keep));
  }
  if (options.every_steps < 0 || options.every < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "--checkpoint_every_steps and --checkpoint_every_seconds must be >= 0");
  }
  if (options.every_steps == 0 && options.every == absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "periodic checkpoints need --checkpoint_every_steps or --checkpoint_every_seconds");
  }
  // Numbering goes on from the files already there, so names keep sorting in write order
  // across restarts.
  auto existing = ListPeriodicCheckpoints(core->options().checkpoint_dir, options.prefix);
  if (!existing.ok()) return existing.status();
  const int64_t next = existing->empty() ? 1 : existing->back().first + 1;
  auto scheduler =
      std::unique_ptr<CheckpointScheduler>(new CheckpointScheduler(core, std::move(options), next));
  scheduler->thread_ = std::thread([s = scheduler.get()] { s->Run(); });
  return scheduler;
}

CheckpointScheduler::CheckpointScheduler(OptimizerCore* core, CheckpointScheduleOptions options,
                                         int64_t next_seq)
    : core_(core),
      options_(std::move(options)),
      next_seq_(next_seq),
      // The state at start (empty, or just restored) is already on disk or needs no file.
      last_(core->Progress()),
      last_time_(absl::Now()) {}

CheckpointScheduler::~CheckpointScheduler() { Stop(/*final_checkpoint=*/false); }

void CheckpointScheduler::Stop(bool final_checkpoint) {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (!final_checkpoint || !options_.on_shutdown) return;
  absl::MutexLock lock(&mu_);
  CoreProgress now = core_->Progress();
  if (now.changes != last_.changes || now.versions != last_.versions) {
    Write(std::move(now), absl::Now());
  }
}

int64_t CheckpointScheduler::written() const {
  absl::MutexLock lock(&mu_);
  return written_;
}

std::string CheckpointScheduler::last_name() const {
  absl::MutexLock lock(&mu_);
  return last_name_;
}

bool CheckpointScheduler::Due(const CoreProgress& now, absl::Time time) const {
  if (time - last_failure_ < kRetryAfter) return false;
  if (options_.every_steps > 0) {
    for (const auto& [name, version] : now.versions) {
      auto it = last_.versions.find(name);
      const int64_t before = it == last_.versions.end() ? 0 : it->second;
      if (version - before >= options_.every_steps) return true;
    }
  }
  if (options_.every > absl::ZeroDuration() && time - last_time_ >= options_.every) {
    return now.changes != last_.changes || now.versions != last_.versions;
  }
  return false;
}

void CheckpointScheduler::Run() {
  const absl::Duration poll = options_.every > absl::ZeroDuration()
                                  ? std::min(kPollInterval, options_.every)
                                  : kPollInterval;
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.AwaitWithTimeout(absl::Condition(&stop_), poll);
    if (stop_) return;
    // Progress() takes each group's mutex briefly; the scheduler's own mutex only guards its
    // bookkeeping, which nothing on the data path touches.
    CoreProgress now = core_->Progress();
    const absl::Time time = absl::Now();
    if (Due(now, time)) Write(std::move(now), time);
  }
}

void CheckpointScheduler::Write(CoreProgress now, absl::Time time) {
  const std::string name = PeriodicCheckpointName(options_.prefix, next_seq_, time);
  v1::SaveCheckpointRequest request;
  request.set_name(name);
  v1::SaveCheckpointResponse response;
  // `now` was read before the copy: a step that lands meanwhile is in the file or in the next
  // one, never lost from the bookkeeping.
  const absl::Status s = core_->SaveCheckpoint(request, &response);
  if (!s.ok()) {
    last_failure_ = time;
    std::fprintf(stderr, "optd: periodic checkpoint %s failed (next try in %s or later): %s\n",
                 name.c_str(), absl::FormatDuration(kRetryAfter).c_str(), s.ToString().c_str());
    return;
  }
  ++next_seq_;
  ++written_;
  last_name_ = name;
  last_ = std::move(now);
  last_time_ = time;
  std::fprintf(stderr, "optd: periodic checkpoint %s written (%lld bytes, %d groups)\n",
               name.c_str(), static_cast<long long>(response.bytes()), response.groups_size());
  auto files = ListPeriodicCheckpoints(core_->options().checkpoint_dir, options_.prefix);
  if (!files.ok()) {
    std::fprintf(stderr, "optd: checkpoint retention skipped: %s\n",
                 files.status().ToString().c_str());
    return;
  }
  const size_t keep = static_cast<size_t>(options_.keep);
  for (size_t i = 0; i + keep < files->size(); ++i) {
    const std::string& old = (*files)[i].second;
    if (unlink(absl::StrCat(core_->options().checkpoint_dir, "/", old).c_str()) != 0) {
      std::fprintf(stderr, "optd: checkpoint retention could not remove %s\n", old.c_str());
    }
  }
}

absl::StatusOr<std::string> RestoreAtStart(OptimizerCore* core, const std::string& which) {
  if (which.empty()) return std::string();
  const std::string& dir = core->options().checkpoint_dir;
  if (dir.empty()) return absl::InvalidArgumentError("--restore needs --checkpoint_dir");
  std::vector<std::string> candidates;
  if (which == "latest") {
    auto files = CheckpointFilesNewestFirst(dir);
    if (!files.ok()) return files.status();
    candidates = *std::move(files);
  } else {
    candidates.push_back(which);
  }
  for (const std::string& name : candidates) {
    if (which == "latest") {
      // Complete and intact? The reader checks the footer and the whole file's checksum; a file
      // cut short or damaged is passed over for the next newest. (RestoreCheckpoint reads it
      // again, mostly from the page cache.)
      auto reader = CheckpointReader::Open(absl::StrCat(dir, "/", name));
      if (!reader.ok()) {
        std::fprintf(stderr, "optd: --restore=latest skips %s: %s\n", name.c_str(),
                     core->HideCheckpointDir(reader.status()).ToString().c_str());
        continue;
      }
    }
    v1::RestoreCheckpointRequest request;
    request.set_name(name);
    v1::RestoreCheckpointResponse response;
    if (absl::Status s = core->RestoreCheckpoint(request, &response); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("--restore=", which, ": ", s.message()));
    }
    std::fprintf(stderr, "optd: restored %d groups from checkpoint %s\n", response.groups_size(),
                 name.c_str());
    return name;
  }
  if (which == "latest") {
    std::fprintf(stderr, "optd: --restore=latest: no complete checkpoint, starting empty\n");
  }
  return std::string();
}

}  // namespace optd::server
