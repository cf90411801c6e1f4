// The Step stream: begin, gradient chunks, commit; then the next begin.
//
// Note [Three ways to apply a step]
// 1. Streamed (one worker, or async mode; no percentile clipping): each block-aligned gradient
//    chunk is applied with ParamGroup::ApplyRange as soon as it lands and that range's new
//    weights are written back at once, by the stream's sender thread (Note [Overlapping a
//    step's directions] in wire_step_sender.h), so network and update overlap and the server
//    holds a few chunks per stream. Before a range is updated its old weights and state range go into an
//    undo journal (host memory); if the stream ends or fails before the commit, the journal is
//    replayed backwards and the group is exactly as before. Step counters move only at commit.
// 2. Accumulated (percentile clipping needs the whole gradient's norm first): the gradient is
//    gathered per tensor in its wire dtype, then one ParamGroup::Step (all or nothing).
// 3. Sync (N > 1 workers, SYNC): each worker's gradient is widened to fp32 into its own buffer;
//    the last worker to arrive averages them (Note [Sync averaging order]) and applies one Step;
//    a worker missing past sync_timeout_ms fails the step for everyone and nothing is applied.
// Paths 1 and 2 hold the group's mutex for the whole step, which serializes one group's steps in
// arrival order while other groups proceed in parallel. Path 3 holds it only to apply.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "server/convert.h"
#include "server/optimizer_core.h"
#include "server/widen.h"
#include "server/wire_buffer.h"
#include "server/wire_step_sender.h"

namespace optd::server {
namespace {

using StepStream = grpc::ServerReaderWriterInterface<v1::StepResponse, v1::StepRequest>;

// A validated gradient chunk; `data` points into the request message.
struct GradChunk {
  int tensor = 0;
  int64_t offset = 0;
  int64_t n = 0;
  core::DType dtype = core::DType::kFloat32;
  const void* data = nullptr;
};

absl::StatusOr<GradChunk> ParseGradient(const Group& group, const v1::TensorChunk& c) {
  GradChunk g;
  g.tensor = group.FindTensor(c.tensor());
  if (g.tensor < 0) {
    return absl::NotFoundError(absl::StrCat("gradient.tensor '", c.tensor(),
                                            "' is not in group '", group.name(), "'"));
  }
  const core::TensorSpec& spec = group.tensor(g.tensor);
  auto dtype = FromProtoDType(c.dtype(), "gradient.dtype");
  if (!dtype.ok()) return dtype.status();
  g.dtype = *dtype;
  if (core::DTypeSize(g.dtype) > core::DTypeSize(spec.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient.dtype ", DTypeStr(g.dtype), " is wider than tensor '", spec.name,
        "' (", DTypeStr(spec.dtype), "); send its dtype or a narrower one"));
  }
  const int64_t esize = static_cast<int64_t>(core::DTypeSize(g.dtype));
  const int64_t nbytes = static_cast<int64_t>(c.data().size());
  if (nbytes % esize != 0) {
    return absl::InvalidArgumentError(absl::StrCat("gradient.data of tensor '", spec.name,
                                                   "' has ", nbytes, " bytes, not a multiple of ",
                                                   esize, " (", DTypeStr(g.dtype), ")"));
  }
  g.n = nbytes / esize;
  g.offset = c.offset();
  g.data = c.data().data();
  const int64_t numel = spec.numel();
  if (g.n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient.data of tensor '", spec.name, "' is empty"));
  }
  if (g.offset < 0 || g.offset > numel - g.n) {
    return absl::InvalidArgumentError(absl::StrCat("gradient.offset ", g.offset, " + ", g.n,
                                                   " elements is outside tensor '", spec.name,
                                                   "' of ", numel, " elements"));
  }
  if (g.offset % core::kBlockSize != 0) {
    return absl::InvalidArgumentError(absl::StrCat("gradient.offset ", g.offset, " of tensor '",
                                                   spec.name, "' is not a multiple of ",
                                                   core::kBlockSize));
  }
  if (g.n % core::kBlockSize != 0 && g.offset + g.n != numel) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient of tensor '", spec.name, "' at offset ", g.offset, " has ", g.n,
        " elements: not a multiple of ", core::kBlockSize, " and not reaching its end (", numel,
        ")"));
  }
  return g;
}

// Per-step bookkeeping of which ranges of which tensors arrived.
class Coverage {
 public:
  explicit Coverage(const Group& group) : group_(group), sets_(group.num_tensors()) {}

  absl::Status Add(const GradChunk& g, int64_t step) {
    if (!sets_[g.tensor].InsertDisjoint(g.offset, g.offset + g.n)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradient.offset ", g.offset, ": elements [", g.offset, ", ", g.offset + g.n,
          ") of tensor '", group_.tensor(g.tensor).name, "' overlap a chunk already sent in step ",
          step));
    }
    return absl::OkStatus();
  }
  bool touched(int t) const { return sets_[t].covered() > 0; }
  std::vector<int> Touched() const {
    std::vector<int> out;
    for (int t = 0; t < group_.num_tensors(); ++t) {
      if (touched(t)) out.push_back(t);
    }
    return out;
  }
  // InvalidArgument when a touched tensor is not fully covered, or nothing arrived.
  absl::Status CheckComplete(int64_t step) const {
    for (int t = 0; t < group_.num_tensors(); ++t) {
      const int64_t numel = group_.tensor(t).numel();
      if (touched(t) && sets_[t].covered() != numel) {
        return absl::InvalidArgumentError(absl::StrCat(
            "gradient of tensor '", group_.tensor(t).name, "' is incomplete in step ", step,
            ": ", sets_[t].covered(), " of ", numel,
            " elements arrived (missing ranges); nothing was applied"));
      }
    }
    if (Touched().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("step ", step, " of group '", group_.name(),
                                                     "' carried no gradient"));
    }
    return absl::OkStatus();
  }

 private:
  const Group& group_;
  std::vector<IntervalSet> sets_;
};

absl::Status ClientGone(const Group& group, int64_t step) {
  return absl::CancelledError(absl::StrCat("step ", step, " of group '", group.name(),
                                           "': the stream ended before the commit; nothing was "
                                           "applied"));
}

absl::Status WeightsClientGone(const Group& group) {
  return absl::CancelledError(
      absl::StrCat("the client went away while receiving weights of group '", group.name(), "'"));
}

// Fills messages with weights [offset, offset + n) of tensor t, at most chunk_bytes each:
// `next()` gives the message to fill, `submit(m)` sends it (false: the client went away).
// Messages are reused from chunk to chunk, so their data string keeps its size and each chunk is
// read straight into memory that is already faulted in, not a fresh zero-filled string.
template <typename NextFn, typename SubmitFn>
absl::Status FillWeights(Group& group, int t, int64_t offset, int64_t n, int64_t chunk_bytes,
                         NextFn next, SubmitFn submit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(group.mu()) {
  const core::TensorSpec& spec = group.tensor(t);
  const int64_t esize = static_cast<int64_t>(core::DTypeSize(spec.dtype));
  const int64_t piece =
      std::max<int64_t>(core::kBlockSize, chunk_bytes / esize / core::kBlockSize * core::kBlockSize);
  for (int64_t done = 0; done < n; done += piece) {
    const int64_t m = std::min(piece, n - done);
    v1::StepResponse* response = next();
    v1::TensorChunk* chunk = response->mutable_weights();
    chunk->set_tensor(spec.name);
    chunk->set_dtype(ToProtoDType(spec.dtype));
    std::string* data = chunk->mutable_data();
    data->resize(static_cast<size_t>(m * esize));
    core::TensorView dst{data->data(), spec.dtype, m, core::MemoryKind::kHost};
    if (absl::Status s = group.params().ReadParam(t, offset + done, dst); !s.ok()) return s;
    chunk->set_offset(offset + done);
    if (!submit(response)) return WeightsClientGone(group);
  }
  return absl::OkStatus();
}

// Writes one weights message on the calling thread and counts its bytes.
bool WriteWeights(Group& group, StepStream* stream, const v1::StepResponse& response) {
  if (!stream->Write(response)) return false;
  group.metrics().AddWeightBytesSent(static_cast<int64_t>(response.weights().data().size()));
  return true;
}

absl::Status SendTensors(Group& group, const std::vector<int>& tensors, int64_t chunk_bytes,
                         StepStream* stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(group.mu()) {
  v1::StepResponse response;
  for (int t : tensors) {
    if (absl::Status s = FillWeights(
            group, t, 0, group.tensor(t).numel(), chunk_bytes, [&] { return &response; },
            [&](v1::StepResponse* m) { return WriteWeights(group, stream, *m); });
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

std::vector<int> Untouched(const Group& group, const std::vector<int>& touched) {
  std::vector<int> out;
  for (int t = 0; t < group.num_tensors(); ++t) {
    if (!std::binary_search(touched.begin(), touched.end(), t)) out.push_back(t);
  }
  return out;
}

std::vector<int> AllTensors(const Group& group) {
  std::vector<int> out(static_cast<size_t>(group.num_tensors()));
  for (int t = 0; t < group.num_tensors(); ++t) out[static_cast<size_t>(t)] = t;
  return out;
}

absl::Status SendDone(StepStream* stream, int64_t step, int64_t version, bool duplicate,
                      int64_t nonfinite) {
  v1::StepResponse response;
  v1::StepDone* done = response.mutable_done();
  done->set_step(step);
  done->set_version(version);
  done->set_duplicate(duplicate);
  done->set_nonfinite_gradient_elements(nonfinite);
  if (!stream->Write(response)) {
    return absl::CancelledError("the client went away before the step's acknowledgement");
  }
  return absl::OkStatus();
}

// Reads and ignores the rest of a step (a retried duplicate), up to its commit.
absl::Status Drain(const Group& group, int64_t step, StepStream* stream) {
  v1::StepRequest request;
  while (stream->Read(&request)) {
    if (request.has_commit()) return absl::OkStatus();
    if (request.has_begin()) {
      return absl::InvalidArgumentError(
          absl::StrCat("begin received before the commit of step ", step));
    }
  }
  return ClientGone(group, step);
}

struct JournalEntry {
  int tensor = 0;
  int64_t offset = 0;
  int64_t n = 0;
  WireBuffer weights;  // overwritten in full by ReadParam (Note [Uninitialized staging])
  core::TensorState state;
};

// Puts back what a cancelled streamed step changed, newest range first.
absl::Status Undo(Group& group, std::vector<JournalEntry>* journal)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(group.mu()) {
  absl::Status result;
  for (auto it = journal->rbegin(); it != journal->rend(); ++it) {
    const core::TensorSpec& spec = group.tensor(it->tensor);
    core::ConstTensorView src{it->weights.data(), spec.dtype, it->n, core::MemoryKind::kHost};
    absl::Status s = group.params().WriteParam(it->tensor, it->offset, src);
    if (s.ok()) s = group.params().ImportStateRange(it->tensor, it->offset, it->state);
    if (!s.ok() && result.ok()) result = s;
  }
  journal->clear();
  return result;
}

struct StepPlan {
  int64_t step = 0;
  int worker = 0;
  core::StepArgs args;
  v1::WeightsReturn weights = v1::UPDATED;
  int64_t chunk_bytes = 0;
};

struct StepOutcome {
  int64_t version = 0;
  int64_t nonfinite = 0;
};

// Path 1 of Note [Three ways to apply a step].
absl::StatusOr<StepOutcome> RunStreamed(Group& group, const StepPlan& plan, StepStream* stream)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(group.mu()) {
  core::ParamGroup& params = group.params();
  Coverage coverage(group);
  std::vector<JournalEntry> journal;
  int64_t nonfinite = 0;
  auto fail = [&](absl::Status s) {
    if (absl::Status u = Undo(group, &journal); !u.ok()) {
      return absl::InternalError(absl::StrCat(s.message(), "; undoing the partial step failed: ",
                                              u.message()));
    }
    return s;
  };
  v1::StepRequest request;
  // Note [Overlapping a step's directions]; no thread when no weights go back.
  std::optional<StepWeightsSender> sender;
  if (plan.weights != v1::NONE) {
    sender.emplace([&group, stream](const v1::StepResponse& r) {
      return WriteWeights(group, stream, r);
    });
  }
  bool committed = false;
  while (!committed && stream->Read(&request)) {
    if (request.has_commit()) {
      committed = true;
      break;
    }
    if (!request.has_gradient()) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("begin received before the commit of step ", plan.step)));
    }
    auto g = ParseGradient(group, request.gradient());
    if (!g.ok()) return fail(g.status());
    if (absl::Status s = coverage.Add(*g, plan.step); !s.ok()) return fail(s);

    const core::TensorSpec& spec = group.tensor(g->tensor);
    JournalEntry entry{g->tensor, g->offset, g->n, {}, {}};
    entry.weights = WireBuffer(static_cast<size_t>(g->n) * core::DTypeSize(spec.dtype));
    core::TensorView old{entry.weights.data(), spec.dtype, g->n, core::MemoryKind::kHost};
    if (absl::Status s = params.ReadParam(g->tensor, g->offset, old); !s.ok()) return fail(s);
    auto state = params.ExportStateRange(g->tensor, g->offset, g->n);
    if (!state.ok()) return fail(state.status());
    entry.state = *std::move(state);
    journal.push_back(std::move(entry));

    const core::RangeGradient range{
        g->tensor, g->offset, core::ConstTensorView{g->data, g->dtype, g->n, core::MemoryKind::kHost}};
    if (absl::Status s = params.ApplyRange(range, params.GetStep(g->tensor) + 1, plan.args);
        !s.ok()) {
      return fail(s);
    }
    const int64_t bad = CountNonFinite(g->dtype, g->data, g->n);
    nonfinite += bad;
    group.metrics().AddGradientBytesReceived(
        static_cast<int64_t>(request.gradient().data().size()));
    if (plan.weights != v1::NONE) {
      if (absl::Status s = FillWeights(
              group, g->tensor, g->offset, g->n, plan.chunk_bytes, [&] { return sender->Next(); },
              [&](v1::StepResponse* m) { return sender->Submit(m); });
          !s.ok()) {
        return fail(s);
      }
    }
  }
  // Every weights message of the step is written before the step counts (and before StepDone).
  if (sender.has_value() && !sender->Flush()) return fail(WeightsClientGone(group));
  if (!committed) return fail(ClientGone(group, plan.step));
  if (absl::Status s = coverage.CheckComplete(plan.step); !s.ok()) return fail(s);
  const std::vector<int> touched = coverage.Touched();
  for (int t : touched) {
    if (absl::Status s = params.SetStep(t, params.GetStep(t) + 1); !s.ok()) return fail(s);
  }
  journal.clear();
  GroupRecord& record = group.record();
  record.version += 1;
  record.worker_steps[static_cast<size_t>(plan.worker)] = plan.step;
  group.metrics().AddNonfiniteGradientElements(nonfinite);
  if (plan.weights == v1::ALL) {
    if (absl::Status s = SendTensors(group, Untouched(group, touched), plan.chunk_bytes, stream);
        !s.ok()) {
      return s;  // applied; only the reply was lost
    }
  }
  return StepOutcome{record.version, nonfinite};
}

// Gradient buffers of one step, in the gradient's wire dtype per tensor.
struct GradientBuffers {
  std::vector<std::vector<uint8_t>> data;
  std::vector<core::DType> dtype;
  int64_t bytes = 0;
};

// Reads one step's chunks into whole-tensor buffers (paths 2 and 3), up to the commit.
absl::Status Gather(Group& group, const StepPlan& plan, StepStream* stream, Coverage* coverage,
                    GradientBuffers* buffers, int64_t* nonfinite) {
  buffers->data.resize(static_cast<size_t>(group.num_tensors()));
  buffers->dtype.resize(static_cast<size_t>(group.num_tensors()));
  v1::StepRequest request;
  while (stream->Read(&request)) {
    if (request.has_commit()) return coverage->CheckComplete(plan.step);
    if (!request.has_gradient()) {
      return absl::InvalidArgumentError(
          absl::StrCat("begin received before the commit of step ", plan.step));
    }
    auto g = ParseGradient(group, request.gradient());
    if (!g.ok()) return g.status();
    const size_t t = static_cast<size_t>(g->tensor);
    if (coverage->touched(g->tensor) && buffers->dtype[t] != g->dtype) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradient.dtype ", DTypeStr(g->dtype), " of tensor '",
          group.tensor(g->tensor).name, "' differs from its earlier chunks (",
          DTypeStr(buffers->dtype[t]), ") in step ", plan.step));
    }
    if (absl::Status s = coverage->Add(*g, plan.step); !s.ok()) return s;
    const int64_t esize = static_cast<int64_t>(core::DTypeSize(g->dtype));
    if (buffers->data[t].empty()) {
      buffers->dtype[t] = g->dtype;
      const int64_t size = group.tensor(g->tensor).numel() * esize;
      buffers->data[t].resize(static_cast<size_t>(size));
      buffers->bytes += size;
      group.metrics().SetAccumulationBytes(buffers->bytes);
    }
    std::memcpy(buffers->data[t].data() + g->offset * esize, g->data,
                static_cast<size_t>(g->n * esize));
    *nonfinite += CountNonFinite(g->dtype, g->data, g->n);
    group.metrics().AddGradientBytesReceived(
        static_cast<int64_t>(request.gradient().data().size()));
  }
  return ClientGone(group, plan.step);
}

// Path 2 of Note [Three ways to apply a step].
absl::StatusOr<StepOutcome> RunAccumulated(Group& group, const StepPlan& plan, StepStream* stream)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(group.mu()) {
  Coverage coverage(group);
  GradientBuffers buffers;
  int64_t nonfinite = 0;
  absl::Status gathered = Gather(group, plan, stream, &coverage, &buffers, &nonfinite);
  std::vector<core::TensorGradient> grads;
  const std::vector<int> touched = coverage.Touched();
  if (gathered.ok()) {
    for (int t : touched) {
      grads.push_back(core::TensorGradient{
          t, core::ConstTensorView{buffers.data[static_cast<size_t>(t)].data(),
                                   buffers.dtype[static_cast<size_t>(t)], group.tensor(t).numel(),
                                   core::MemoryKind::kHost}});
    }
    gathered = group.params().Step(grads, plan.args);
  }
  buffers = GradientBuffers();
  group.metrics().SetAccumulationBytes(0);
  if (!gathered.ok()) return gathered;
  GroupRecord& record = group.record();
  record.version += 1;
  record.worker_steps[static_cast<size_t>(plan.worker)] = plan.step;
  group.metrics().AddNonfiniteGradientElements(nonfinite);
  if (plan.weights != v1::NONE) {
    absl::Status s = plan.weights == v1::ALL
                         ? SendTensors(group, AllTensors(group), plan.chunk_bytes, stream)
                         : SendTensors(group, touched, plan.chunk_bytes, stream);
    if (!s.ok()) return s;
  }
  return StepOutcome{record.version, nonfinite};
}

// Path 3 of Note [Three ways to apply a step]. Returns the outcome after the update was applied
// by whichever worker arrived last.
absl::StatusOr<StepOutcome> RunSync(Group& group, const StepPlan& plan, StepStream* stream,
                                    int64_t timeout_ms, const std::atomic<bool>& shutting_down,
                                    core::Backend backend, std::vector<int>* touched_out) {
  std::shared_ptr<SyncRound> round;
  const int num_workers = [&] {
    absl::MutexLock lock(&group.mu());
    return group.record().num_workers;
  }();
  {
    absl::MutexLock lock(&group.sync_mu());
    std::shared_ptr<SyncRound>& current = group.round();
    if (current != nullptr && !current->done && current->step != plan.step) {
      return absl::FailedPreconditionError(absl::StrCat(
          "begin.step ", plan.step, " of worker ", plan.worker, ": group '", group.name(),
          "' is collecting step ", current->step));
    }
    if (current == nullptr || current->done) {
      current = std::make_shared<SyncRound>(plan.step, num_workers,
                                            absl::Now() + absl::Milliseconds(timeout_ms));
    }
    round = current;
  }

  // Receive this worker's gradient without holding any group lock.
  Coverage coverage(group);
  GradientBuffers buffers;
  int64_t nonfinite = 0;
  if (absl::Status s = Gather(group, plan, stream, &coverage, &buffers, &nonfinite); !s.ok()) {
    return s;
  }
  WorkerGradients mine;
  mine.tensors = coverage.Touched();
  mine.lr = plan.args.lr;
  mine.nonfinite = nonfinite;
  for (int t : mine.tensors) {
    std::vector<float> g(static_cast<size_t>(group.tensor(t).numel()));
    WidenToFloat(buffers.dtype[static_cast<size_t>(t)], buffers.data[static_cast<size_t>(t)].data(),
                 group.tensor(t).numel(), g.data());
    buffers.data[static_cast<size_t>(t)] = {};
    mine.grads.push_back(std::move(g));
  }
  *touched_out = mine.tensors;

  bool apply = false;
  {
    absl::MutexLock lock(&group.sync_mu());
    if (round->done) return round->result.ok() ? absl::InternalError("sync round ended") : round->result;
    if (round->workers[static_cast<size_t>(plan.worker)].has_value()) {
      return absl::FailedPreconditionError(absl::StrCat("worker ", plan.worker,
                                                        " already pushed step ", plan.step,
                                                        " of group '", group.name(), "'"));
    }
    round->workers[static_cast<size_t>(plan.worker)] = std::move(mine);
    round->arrived += 1;
    group.metrics().SetAccumulationBytes(round->accumulated_bytes());
    group.metrics().SetWorkersPending(num_workers - round->arrived);  // still missing
    if (round->arrived == num_workers) {
      round->applying = true;
      apply = true;
    } else {
      auto finished = [&round]() { return round->done; };
      auto finished_or_applying = [&round]() { return round->done || round->applying; };
      // Wakes every 100 ms to notice a server shutdown: a SIGTERM should not wait out a long
      // sync_timeout_ms for workers that will not come.
      bool stopping = false;
      while (!group.sync_mu().AwaitWithDeadline(
          absl::Condition(&finished_or_applying),
          std::min(round->deadline, absl::Now() + absl::Milliseconds(100)))) {
        if (absl::Now() >= round->deadline) break;
        if (shutting_down.load()) {
          stopping = true;
          break;
        }
      }
      if (!round->done && !round->applying) {
        std::vector<int> missing;
        for (int w = 0; w < num_workers; ++w) {
          if (!round->workers[static_cast<size_t>(w)].has_value()) missing.push_back(w);
        }
        round->done = true;
        round->result =
            stopping
                ? absl::UnavailableError(absl::StrCat(
                      "sync step ", plan.step, " of group '", group.name(),
                      "': the server is shutting down while worker(s) ",
                      absl::StrJoin(missing, ", "), " had not pushed; no update was applied"))
                : absl::DeadlineExceededError(absl::StrCat(
                      "sync step ", plan.step, " of group '", group.name(), "': worker(s) ",
                      absl::StrJoin(missing, ", "), " did not push within sync_timeout_ms=",
                      timeout_ms, "; no update was applied"));
        for (auto& w : round->workers) w.reset();
        group.metrics().SetAccumulationBytes(0);
        group.metrics().SetWorkersPending(0);
        if (group.round() == round) group.round().reset();
      }
      group.sync_mu().Await(absl::Condition(&finished));
    }
  }

  if (apply) {
    WorkerGradients* avg = nullptr;
    absl::Status result = AverageInto(round.get(), &avg);
    int64_t version = 0;
    int64_t total_nonfinite = 0;
    for (const auto& w : round->workers) total_nonfinite += w->nonfinite;
    if (result.ok()) {
      std::vector<core::TensorGradient> grads;
      for (size_t i = 0; i < avg->tensors.size(); ++i) {
        grads.push_back(core::TensorGradient{
            avg->tensors[i],
            core::ConstTensorView{avg->grads[i].data(), core::DType::kFloat32,
                                  static_cast<int64_t>(avg->grads[i].size()),
                                  core::MemoryKind::kHost}});
      }
      core::StepArgs args;
      args.lr = avg->lr;
      absl::MutexLock lock(&group.mu());
      result = group.params().Step(grads, args);
      if (result.ok()) {
        GroupRecord& record = group.record();
        record.version += 1;
        for (auto& s : record.worker_steps) s = plan.step;
        version = record.version;
        group.metrics().AddNonfiniteGradientElements(total_nonfinite);
        group.UpdateByteMetrics(backend);
        group.Publish();
      }
    }
    absl::MutexLock lock(&group.sync_mu());
    round->done = true;
    round->result = result;
    round->version_after = version;
    round->nonfinite = total_nonfinite;
    for (auto& w : round->workers) w.reset();
    group.metrics().SetAccumulationBytes(0);
    group.metrics().SetWorkersPending(0);
    if (group.round() == round) group.round().reset();
  }
  absl::MutexLock lock(&group.sync_mu());
  if (!round->result.ok()) return round->result;
  return StepOutcome{round->version_after, round->nonfinite};
}

}  // namespace

absl::Status OptimizerCore::Step(grpc::ServerContext* /*context*/, StepStream* stream) {
  v1::StepRequest request;
  while (stream->Read(&request)) {
    if (!request.has_begin()) {
      return absl::InvalidArgumentError(
          "a step must open with StepRequest.begin (got a gradient or commit first)");
    }
    const v1::StepBegin& begin = request.begin();
    const absl::Time start = absl::Now();
    auto found = registry_.Find(begin.group());
    if (!found.ok()) {
      return absl::NotFoundError(absl::StrCat("begin.group: ", found.status().message()));
    }
    Group& group = **found;

    StepPlan plan;
    plan.step = begin.step();
    plan.worker = begin.worker();
    plan.chunk_bytes = options_.chunk_bytes;
    plan.weights = begin.weights() == v1::WEIGHTS_RETURN_UNSPECIFIED ? v1::UPDATED : begin.weights();
    if (begin.has_lr()) {
      if (!(begin.lr() > 0.0f)) {
        return absl::InvalidArgumentError(absl::StrCat("begin.lr must be > 0, got ", begin.lr()));
      }
      plan.args.lr = begin.lr();
    }
    if (plan.step < 1) {
      return absl::InvalidArgumentError(absl::StrCat("begin.step must be >= 1, got ", plan.step));
    }

    int num_workers = 0;
    bool sync = false;
    int64_t timeout_ms = 0;
    int64_t version = 0;
    int64_t last = 0;
    {
      absl::MutexLock lock(&group.mu());
      const GroupRecord& r = group.record();
      num_workers = r.num_workers;
      sync = num_workers > 1 && r.mode == v1::SYNC;
      timeout_ms = r.sync_timeout_ms;
      version = r.version;
      if (plan.worker >= 0 && plan.worker < num_workers) {
        last = r.worker_steps[static_cast<size_t>(plan.worker)];
      }
    }
    if (plan.worker < 0 || plan.worker >= num_workers) {
      return absl::InvalidArgumentError(absl::StrCat("begin.worker ", plan.worker,
                                                     " is outside [0, ", num_workers,
                                                     ") for group '", group.name(), "'"));
    }

    absl::StatusOr<StepOutcome> outcome;
    std::vector<int> touched;
    if (sync) {
      if (plan.step <= last) {
        if (absl::Status s = Drain(group, plan.step, stream); !s.ok()) return s;
        if (absl::Status s = SendDone(stream, plan.step, version, true, 0); !s.ok()) return s;
        continue;
      }
      if (plan.step != version + 1) {
        return absl::FailedPreconditionError(absl::StrCat(
            "begin.step ", plan.step, " of worker ", plan.worker, " is ",
            plan.step <= version ? "in the past" : "too far ahead", ": group '", group.name(),
            "' is at version ", version, ", so the next sync step is ", version + 1));
      }
      outcome = RunSync(group, plan, stream, timeout_ms, shutting_down_, engine_->backend(),
                        &touched);
      if (outcome.ok() && plan.weights != v1::NONE) {
        absl::MutexLock lock(&group.mu());
        absl::Status s = plan.weights == v1::ALL
                             ? SendTensors(group, AllTensors(group), options_.chunk_bytes, stream)
                             : SendTensors(group, touched, options_.chunk_bytes, stream);
        if (!s.ok()) return s;
      }
    } else {
      absl::MutexLock lock(&group.mu());
      GroupRecord& r = group.record();
      last = r.worker_steps[static_cast<size_t>(plan.worker)];
      if (plan.step <= last) {
        if (absl::Status s = Drain(group, plan.step, stream); !s.ok()) return s;
        if (absl::Status s = SendDone(stream, plan.step, r.version, true, 0); !s.ok()) return s;
        continue;
      }
      if (plan.step != last + 1) {
        return absl::FailedPreconditionError(absl::StrCat(
            "begin.step ", plan.step, " of worker ", plan.worker, " is too far ahead: group '",
            group.name(), "' applied its step ", last, ", so the next is ", last + 1));
      }
      const int64_t base = begin.has_base_version() ? begin.base_version() : plan.step - 1;
      if (r.max_staleness > 0 && base < r.version - r.max_staleness) {
        return absl::FailedPreconditionError(absl::StrCat(
            "begin.base_version ", base, " is too stale: group '", group.name(),
            "' is at version ", r.version, " and max_staleness is ", r.max_staleness));
      }
      if (r.spec.options.percentile_clipping < 100) {
        outcome = RunAccumulated(group, plan, stream);
      } else {
        outcome = RunStreamed(group, plan, stream);
      }
      if (outcome.ok()) {
        group.Publish();
        group.UpdateByteMetrics(engine_->backend());
      }
    }
    if (!outcome.ok()) return outcome.status();
    group.metrics().ObserveStep(absl::ToDoubleSeconds(absl::Now() - start));
    UpdateEngineMetrics();
    if (absl::Status s = SendDone(stream, plan.step, outcome->version, false, outcome->nonfinite);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace optd::server
