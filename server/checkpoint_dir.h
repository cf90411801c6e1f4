// The files of the checkpoint directory: names of periodic checkpoints, the newest complete
// checkpoint for --restore=latest, and temporary files orphaned by a writer that died.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace optd::server {

// Whether `name` has the form of CheckpointWriter's temporary files, "<name>.tmp-<pid>-<6
// characters>"; `pid` (may be null) gets the writer's process id.
bool IsCheckpointTempName(std::string_view name, int64_t* pid = nullptr);

// Removes the temporary files that writers left behind when they died (kill -9 during a save):
// those of processes that no longer run, and those carrying this process's own id (a restarted
// container runs optd as pid 1 again; nothing of ours is written before start-up ends). Files of
// another live process are left alone. Returns the names removed.
absl::StatusOr<std::vector<std::string>> RemoveOrphanTempFiles(const std::string& dir);

// Name of periodic checkpoint `sequence`: "<prefix><10-digit sequence>-<UTC time>", e.g.
// "auto-0000000042-20261201T101500Z". The sequence comes first so that names sort in the order
// they were written whatever the clock does.
std::string PeriodicCheckpointName(std::string_view prefix, int64_t sequence, absl::Time time);
// The sequence of a periodic checkpoint name with `prefix`, or -1 for any other name.
int64_t PeriodicCheckpointSequence(std::string_view prefix, std::string_view name);
// The periodic checkpoints with `prefix` in `dir` as (sequence, name), oldest first.
absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> ListPeriodicCheckpoints(
    const std::string& dir, std::string_view prefix);

// Every regular file of `dir` except temporary files, newest first (modification time, then
// name): the candidates for --restore=latest.
absl::StatusOr<std::vector<std::string>> CheckpointFilesNewestFirst(const std::string& dir);

}  // namespace optd::server
