#include "server/sync_round.h"

#include "absl/strings/str_cat.h"

namespace optd::server {

int64_t WorkerGradients::bytes() const {
  int64_t total = 0;
  for (const auto& g : grads) total += static_cast<int64_t>(g.size()) * 4;
  return total;
}

int64_t SyncRound::accumulated_bytes() const {
  int64_t total = 0;
  for (const auto& w : workers) {
    if (w.has_value()) total += w->bytes();
  }
  return total;
}

absl::Status AverageInto(SyncRound* round, WorkerGradients** out) {
  const int n = static_cast<int>(round->workers.size());
  for (int w = 0; w < n; ++w) {
    if (!round->workers[w].has_value()) {
      return absl::InternalError(absl::StrCat("worker ", w, " has not pushed step ", round->step));
    }
  }
  WorkerGradients& acc = *round->workers[0];
  for (int w = 1; w < n; ++w) {
    const WorkerGradients& g = *round->workers[w];
    if (g.tensors != acc.tensors) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sync step ", round->step, ": worker ", w, " sent gradients for ", g.tensors.size(),
          " tensors, worker 0 for ", acc.tensors.size(),
          " (every worker must send the same tensors); no update applied"));
    }
  }
  // Note [Sync averaging order]: accumulate in worker order, then divide once.
  for (size_t t = 0; t < acc.tensors.size(); ++t) {
    float* sum = acc.grads[t].data();
    const size_t numel = acc.grads[t].size();
    for (int w = 1; w < n; ++w) {
      const float* g = round->workers[w]->grads[t].data();
      for (size_t i = 0; i < numel; ++i) sum[i] = sum[i] + g[i];
    }
    const float divisor = static_cast<float>(n);
    for (size_t i = 0; i < numel; ++i) sum[i] = sum[i] / divisor;
  }
  *out = &acc;
  return absl::OkStatus();
}

}  // namespace optd::server
