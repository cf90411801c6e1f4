// Automatic recovery: periodic checkpoints with retention, and the restore at start-up.
//
// Note [Periodic checkpoints]
// A server restarted after kill -9 or a node failure comes back with what its newest complete
// checkpoint holds. The scheduler's thread writes one through OptimizerCore::SaveCheckpoint (each
// group copied under its mutex, written without it) when either trigger fires:
// - steps: some group's version is `every_steps` or more past its version in the last
//   checkpoint (a group that is new since then counts from 0);
// - time: `every` has passed since the last checkpoint and something changed (a version, or a
//   create, upload, delete, hyperparameter update, import or restore: CoreProgress).
// An idle server writes nothing. Files are named "<prefix><sequence>-<UTC time>"
// (checkpoint_dir.h); after each successful write all but the newest `keep` periodic files are
// deleted (files saved by SaveCheckpoint under other names are never touched). A failed write
// (ENOSPC, an unwritable directory) is logged and retried no sooner than kRetryAfter later; it
// never stops the server. The writes are atomic (checkpoint_file.h), so a crash leaves the
// previous files intact and at worst a temporary file, which the next start removes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/optimizer_core.h"

namespace optd::server {

struct CheckpointScheduleOptions {
  // Checkpoint when some group advanced this many steps; 0 = no step trigger.
  int64_t every_steps = 0;
  // Checkpoint this often when something changed; zero = no time trigger.
  absl::Duration every = absl::ZeroDuration();
  // Periodic checkpoints kept (>= 1).
  int keep = 3;
  // Name prefix of periodic checkpoints.
  std::string prefix = "auto-";
  // On Stop(), write a last checkpoint when something changed since the previous one.
  bool on_shutdown = true;
};

// Thread safety: thread-safe. Owns one thread.
class CheckpointScheduler {
 public:
  static constexpr absl::Duration kRetryAfter = absl::Seconds(10);

  // Starts the thread. `core` (with a checkpoint directory) must outlive the scheduler.
  // InvalidArgument for keep < 1, negative triggers or no trigger at all.
  static absl::StatusOr<std::unique_ptr<CheckpointScheduler>> Start(
      OptimizerCore* core, CheckpointScheduleOptions options);
  ~CheckpointScheduler();  // Stop(/*final_checkpoint=*/false)

  // Stops the thread; with final_checkpoint and options.on_shutdown, then writes a last
  // checkpoint if anything changed. Idempotent.
  void Stop(bool final_checkpoint);

  // Periodic checkpoints written so far, and the last one's name ("" before the first).
  int64_t written() const;
  std::string last_name() const;

 private:
  CheckpointScheduler(OptimizerCore* core, CheckpointScheduleOptions options, int64_t next_seq);
  void Run();
  // Whether a trigger fires for `now` (Note [Periodic checkpoints]).
  bool Due(const CoreProgress& now, absl::Time time) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the next checkpoint and applies retention; logs the outcome.
  void Write(CoreProgress now, absl::Time time) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  OptimizerCore* const core_;
  const CheckpointScheduleOptions options_;
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  int64_t next_seq_ ABSL_GUARDED_BY(mu_);
  CoreProgress last_ ABSL_GUARDED_BY(mu_);  // what the last checkpoint (or the start) held
  absl::Time last_time_ ABSL_GUARDED_BY(mu_);
  absl::Time last_failure_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int64_t written_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_name_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// --restore at start-up: "latest" restores the newest file of the checkpoint directory that
// opens as a complete checkpoint (files cut short or corrupted are skipped with a log line; an
// empty directory restores nothing), any other value the checkpoint of that name. Returns the
// name restored, or "" when there was none. A checkpoint whose metadata breaks the rules fails
// the start (DataLoss naming the file, group and field).
absl::StatusOr<std::string> RestoreAtStart(OptimizerCore* core, const std::string& which);

}  // namespace optd::server
