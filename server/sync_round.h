// One synchronous step of a multi-worker group: the workers' gradients gathered until all N
// have pushed, or the deadline passes.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace optd::server {

// One worker's gradient for one step, widened to fp32 (whole tensors).
struct WorkerGradients {
  std::vector<int> tensors;               // tensor indices, ascending
  std::vector<std::vector<float>> grads;  // grads[i] is tensor tensors[i]'s gradient
  std::optional<float> lr;
  int64_t bytes() const;
};

// Thread safety: guarded by the owning Group's sync mutex.
struct SyncRound {
  SyncRound(int64_t step, int num_workers, absl::Time deadline)
      : step(step), deadline(deadline), workers(static_cast<size_t>(num_workers)) {}

  int64_t step;
  absl::Time deadline;
  std::vector<std::optional<WorkerGradients>> workers;
  int arrived = 0;
  bool applying = false;      // all workers arrived; one of them is applying the update
  bool done = false;          // applied or failed; result says which
  absl::Status result;
  int64_t version_after = 0;  // the group's version after the update, when result is OK
  int64_t nonfinite = 0;      // NaN/Inf elements of the averaged gradient (the engine's count)

  int64_t accumulated_bytes() const;
};

// Note [Sync averaging order]
// The average of N workers' gradients is computed per element, in fp32, as
//   avg[i] = (((g_0[i] + g_1[i]) + g_2[i]) + ... + g_{N-1}[i]) / float(N)
// (worker ids ascending, one rounding per addition, one division). A client that computes the
// same expression in fp32 and pushes it as one worker gets bit-for-bit the same update.
//
// Checks that every worker sent the same tensors, then averages into workers[0]'s buffers and
// returns them. InvalidArgument naming the worker and tensor otherwise.
[[nodiscard]] absl::Status AverageInto(SyncRound* round, WorkerGradients** out);

}  // namespace optd::server
