// The Step stream: begin, gradient chunks, commit; then the next begin.
//
// Note [How a step is applied]
// Every step takes the same road: its chunks are checked (chunk_checks.h) and copied once, from
// the receive buffers straight into the worker's gradient buffers (GradientSet, reused from
// step to step), by the thread of the stream that carried them; a step may come over K streams
// at once (Note [A step over K streams]). When the last stream commits, the whole gradient is
// applied in one ParamGroup::Step (all or nothing: a step that fails or is abandoned half way
// changed nothing, so there is no undo journal), or, for N > 1 workers in SYNC mode, taken to
// the sync round (sync_rendezvous.h). The commit (step_commit.h) bumps the version and copies
// the weights to return; each stream then sends the weights of the ranges it carried.
// Percentile clipping needs nothing special: the whole gradient is there before the update.
//
// Note [No I/O under a group's mutex]
// A group's mutex is held for engine work and memory copies only: the begin's checks, the
// update, the snapshot of the new weights. Reading chunks, waiting for a step's other streams or
// workers, and sending weights all happen without it, so a trainer that stalls mid-step, a slow
// subscriber or a slow reader of its own weights never delays another client's step, pull,
// checkpoint or listing. Two steps of one group (async workers) are serialized only by the
// update itself.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/chunk_checks.h"
#include "server/optimizer_core.h"
#include "server/pending_step.h"
#include "server/step_commit.h"
#include "server/step_plan.h"
#include "server/convert.h"
#include "server/widen.h"

namespace optd::server {
namespace {

// Upper bound on StepBegin.streams: far above what helps (the machine's cores), low enough that
// a request cannot make the server allocate much for it.
constexpr int kMaxStreamsPerStep = 64;

// A range of one tensor that a stream carried (and whose new weights it sends back).
struct Range {
  int tensor = 0;
  int64_t offset = 0;
  int64_t n = 0;
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

absl::StatusOr<StepPlan> PlanFromBegin(const v1::StepBegin& begin, int64_t chunk_bytes) {
  StepPlan plan;
  plan.step = begin.step();
  plan.worker = begin.worker();
  plan.chunk_bytes = chunk_bytes;
  switch (begin.weights()) {
    case v1::WEIGHTS_RETURN_UNSPECIFIED:
    case v1::UPDATED:
      plan.weights = v1::UPDATED;
      break;
    case v1::ALL:
    case v1::NONE:
      plan.weights = begin.weights();
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "begin.weights ", static_cast<int>(begin.weights()),
          " is not UPDATED (1), ALL (2) or NONE (3)"));
  }
  if (begin.has_lr()) {
    if (!(begin.lr() > 0.0f) || !std::isfinite(begin.lr())) {
      return absl::InvalidArgumentError(
          absl::StrCat("begin.lr must be finite and > 0, got ", begin.lr()));
    }
    plan.args.lr = begin.lr();
  }
  if (plan.step < 1) {
    return absl::InvalidArgumentError(absl::StrCat("begin.step must be >= 1, got ", plan.step));
  }
  plan.streams = begin.streams() == 0 ? 1 : begin.streams();
  if (plan.streams < 1 || plan.streams > kMaxStreamsPerStep) {
    return absl::InvalidArgumentError(absl::StrCat("begin.streams must be in [1, ",
                                                   kMaxStreamsPerStep, "], got ",
                                                   begin.streams()));
  }
  plan.stream_index = begin.stream_index();
  if (plan.stream_index < 0 || plan.stream_index >= plan.streams) {
    return absl::InvalidArgumentError(absl::StrCat("begin.stream_index ", begin.stream_index(),
                                                   " is outside [0, ", plan.streams, ")"));
  }
  return plan;
}

// Reads and ignores the rest of a step (a retried duplicate), up to its commit.
absl::Status Drain(const Group& group, int64_t step, StepStream* stream) {
  StepRequestRef request;
  while (true) {
    auto more = stream->Read(&request);
    if (!more.ok()) return more.status();
    if (!*more) return ClientGone(group, step);
    if (request.kind == StepRequestRef::Kind::kCommit) return absl::OkStatus();
    if (request.kind == StepRequestRef::Kind::kBegin) {
      return absl::InvalidArgumentError(
          absl::StrCat("begin received before the commit of step ", step));
    }
  }
}

// The one copy of a gradient chunk's bytes, from the receive buffers into the step's gradient
// buffer, in windows small enough to stay in cache for the NaN/Inf count that follows each.
int64_t CopyAndCountNonFinite(const Payload& payload, core::DType dtype, void* dst) {
  constexpr size_t kWindowBytes = 256 << 10;  // a multiple of every element size
  const size_t esize = core::DTypeSize(dtype);
  auto* out = static_cast<uint8_t*>(dst);
  int64_t nonfinite = 0;
  for (size_t off = 0; off < payload.size(); off += kWindowBytes) {
    const size_t n = std::min(kWindowBytes, payload.size() - off);
    payload.CopyRange(off, n, out + off);
    nonfinite += CountNonFinite(dtype, out + off, static_cast<int64_t>(n / esize));
  }
  return nonfinite;
}

// Reads this stream's chunks of the step into `pending`, up to the commit.
absl::Status Gather(Group& group, const StepPlan& plan, StepStream* stream, PendingStep& pending,
                    std::vector<Range>* ranges) {
  StepRequestRef request;
  while (true) {
    auto more = stream->Read(&request);
    if (!more.ok()) return more.status();
    if (!*more) return ClientGone(group, plan.step);
    if (request.kind == StepRequestRef::Kind::kCommit) return absl::OkStatus();
    if (request.kind != StepRequestRef::Kind::kGradient) {
      return absl::InvalidArgumentError(
          absl::StrCat("begin received before the commit of step ", plan.step));
    }
    auto c = CheckGradientChunk(group, request.gradient);
    if (!c.ok()) return c.status();
    auto dst = pending.Reserve(group, *c);
    if (!dst.ok()) return dst.status();
    pending.AddNonfinite(CopyAndCountNonFinite(request.gradient.data, c->dtype, *dst));
    group.metrics().AddGradientBytesReceived(static_cast<int64_t>(request.gradient.data.size()));
    ranges->push_back(Range{c->tensor, c->offset, c->n});
  }
}

// Sends the new weights of `ranges` from the snapshot, at most chunk_bytes per message.
absl::Status SendRanges(Group& group, const StepPlan& plan, const StepOutcome& outcome,
                        const std::vector<Range>& ranges, StepStream* stream) {
  const WeightSnapshot& snap = *outcome.weights;
  for (const Range& r : ranges) {
    const int slot = snap.SlotOf(r.tensor);
    if (slot < 0) continue;
    if (absl::Status s = snap.AwaitFilled(slot); !s.ok()) return s;
    const core::TensorSpec& spec = group.tensor(r.tensor);
    const int64_t esize = static_cast<int64_t>(core::DTypeSize(spec.dtype));
    const int64_t piece = ElementsPerMessage(plan.chunk_bytes, spec.dtype);
    const uint8_t* base = snap.data[static_cast<size_t>(slot)].data();
    for (int64_t done = 0; done < r.n; done += piece) {
      const int64_t m = std::min(piece, r.n - done);
      OutChunk out;
      out.tensor = &spec.name;
      out.offset = r.offset + done;
      out.dtype = ToProtoDType(spec.dtype);
      out.data = base + (r.offset + done) * esize;
      out.bytes = static_cast<size_t>(m * esize);
      out.keepalive = outcome.weights;
      if (!stream->SendWeights(out)) return WeightsClientGone(group);
      group.metrics().AddWeightBytesSent(static_cast<int64_t>(out.bytes));
    }
  }
  return absl::OkStatus();
}

// The ranges this stream returns: what it carried, merged per tensor into whole ranges where
// contiguous; with ALL, stream 0 also returns every tensor no stream touched.
std::vector<Range> ReturnRanges(const Group& group, const StepPlan& plan,
                                std::vector<Range> carried, const PendingStep& pending) {
  if (plan.weights == v1::NONE) return {};
  std::sort(carried.begin(), carried.end(), [](const Range& a, const Range& b) {
    return a.tensor != b.tensor ? a.tensor < b.tensor : a.offset < b.offset;
  });
  std::vector<Range> out;
  for (const Range& r : carried) {
    if (!out.empty() && out.back().tensor == r.tensor &&
        out.back().offset + out.back().n == r.offset) {
      out.back().n += r.n;
    } else {
      out.push_back(r);
    }
  }
  if (plan.weights == v1::ALL && plan.stream_index == 0) {
    const std::vector<int> touched = pending.gradient().Touched();
    for (int t = 0; t < group.num_tensors(); ++t) {
      if (!std::binary_search(touched.begin(), touched.end(), t)) {
        out.push_back(Range{t, 0, group.tensor(t).numel()});
      }
    }
  }
  return out;
}

}  // namespace

absl::Status OptimizerCore::Step(StepStream* stream) {
  StepRequestRef request;
  while (true) {
    auto more = stream->Read(&request);
    if (!more.ok()) return more.status();
    if (!*more) return absl::OkStatus();
    if (request.kind != StepRequestRef::Kind::kBegin) {
      return absl::InvalidArgumentError(
          "a step must open with StepRequest.begin (got a gradient or commit first)");
    }
    const v1::StepBegin begin = request.begin;
    const absl::Time start = absl::Now();
    auto found = FindGroup(begin.group());
    if (!found.ok()) {
      return absl::Status(found.status().code(),
                          absl::StrCat("begin.group: ", found.status().message()));
    }
    std::shared_ptr<Group> group_ref = *std::move(found);
    Group& group = *group_ref;
    auto planned = PlanFromBegin(begin, options_.chunk_bytes);
    if (!planned.ok()) return planned.status();
    if (begin.has_lr()) {
      if (absl::Status s = CheckLearningRate(begin.lr(), "begin.lr", options_.limits); !s.ok()) {
        return s;
      }
    }
    const StepPlan plan = *planned;

    CommitContext context;
    context.stopping = &shutting_down_;
    context.backend = engine_->backend();
    int num_workers = 0;
    int64_t version = 0;
    int64_t last = 0;
    bool initialized = false;
    {
      absl::MutexLock lock(&group.mu());
      const GroupRecord& r = group.record();
      num_workers = r.num_workers;
      context.sync = num_workers > 1 && r.mode == v1::SYNC;
      context.timeout_ms = r.sync_timeout_ms;
      version = r.version;
      initialized = group.weights_initialized();
      if (plan.worker >= 0 && plan.worker < num_workers) {
        last = r.worker_steps[static_cast<size_t>(plan.worker)];
      }
      if (plan.worker >= 0 && plan.worker < num_workers && !context.sync && plan.step > last) {
        const int64_t base = begin.has_base_version() ? begin.base_version() : plan.step - 1;
        if (r.max_staleness > 0 && base < r.version - r.max_staleness) {
          return absl::FailedPreconditionError(absl::StrCat(
              "begin.base_version ", base, " is too stale: group '", group.name(),
              "' is at version ", r.version, " and max_staleness is ", r.max_staleness));
        }
      }
    }
    if (plan.worker < 0 || plan.worker >= num_workers) {
      return absl::InvalidArgumentError(absl::StrCat("begin.worker ", plan.worker,
                                                     " is outside [0, ", num_workers,
                                                     ") for group '", group.name(), "'"));
    }
    if (plan.step <= last) {
      // A retry of a step this worker already applied: acknowledged, not applied again.
      if (absl::Status s = Drain(group, plan.step, stream); !s.ok()) return s;
      v1::StepDone done;
      done.set_step(plan.step);
      done.set_version(version);
      done.set_duplicate(true);
      if (!stream->SendDone(done)) {
        return absl::CancelledError("the client went away before the step's acknowledgement");
      }
      continue;
    }
    if (begin.has_expect_last_step() && begin.expect_last_step() != last) {
      return absl::FailedPreconditionError(absl::StrCat(
          "begin.expect_last_step ", begin.expect_last_step(), ": the last step applied for worker ",
          plan.worker, " of group '", group.name(), "' is ", last,
          " (the group was restored from another checkpoint, or another process steps as this "
          "worker); nothing was applied"));
    }
    if (!initialized) {
      return absl::FailedPreconditionError(absl::StrCat(
          "group '", group.name(), "' has tensors whose weights were never uploaded; upload "
          "every tensor (UploadWeights) before the first step"));
    }
    if (context.sync && plan.step != version + 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "begin.step ", plan.step, " of worker ", plan.worker, " is ",
          plan.step <= version ? "in the past" : "too far ahead", ": group '", group.name(),
          "' is at version ", version, ", so the next sync step is ", version + 1));
    }

    const absl::Duration timeout = absl::Milliseconds(context.timeout_ms);
    auto joined = PendingStep::Join(group, plan.worker, plan.step, plan.streams,
                                    plan.stream_index, timeout, plan.weights);
    if (!joined.ok()) return joined.status();
    std::shared_ptr<PendingStep> pending = *std::move(joined);
    std::vector<Range> carried;
    if (absl::Status s = Gather(group, plan, stream, *pending, &carried); !s.ok()) {
      pending->Fail(group, s);
      return s;
    }
    auto last_commit = pending->Commit(plan.stream_index);
    if (!last_commit.ok()) return last_commit.status();
    absl::StatusOr<StepOutcome> outcome;
    if (*last_commit) {
      absl::Status complete = pending->CheckComplete(group);
      outcome = complete.ok() ? CommitStep(group, plan, *pending, context)
                              : absl::StatusOr<StepOutcome>(complete);
      pending->Resolve(group, outcome);
      group.metrics().SetAccumulationBytes(group.gradient_pool()->bytes());
      if (outcome.ok() && !outcome->duplicate) {
        group.metrics().ObserveStep(absl::ToDoubleSeconds(absl::Now() - start));
      }
      UpdateEngineMetrics();
    } else {
      outcome = pending->Await(group, shutting_down_);
    }
    if (!outcome.ok()) return outcome.status();
    if (outcome->weights != nullptr && !outcome->duplicate) {
      const std::vector<Range> ranges = ReturnRanges(group, plan, std::move(carried), *pending);
      if (absl::Status s = SendRanges(group, plan, *outcome, ranges, stream); !s.ok()) return s;
    }
    pending.reset();
    v1::StepDone done;
    done.set_step(plan.step);
    done.set_version(outcome->version);
    done.set_duplicate(outcome->duplicate);
    done.set_nonfinite_gradient_elements(outcome->nonfinite);
    if (!stream->SendDone(done)) {
      return absl::CancelledError("the client went away before the step's acknowledgement");
    }
  }
}

}  // namespace optd::server
