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
// Note [A colocated step]
// A step whose begin names a region (docs/colocated.md) takes the same road: each
// region_gradient range is checked against the group and the region (region_chunk_checks.h) and
// copied once, from the region into the step's gradient buffer, exactly where a wire chunk's
// bytes would have gone; so K streams, sync rounds and async workers need nothing new. After the
// commit, instead of sending weight messages, the stream writes each range's new weights from the
// snapshot into the region at the range's weights destination, then sends StepDone: when the
// trainer sees StepDone its weights are in the region. The step holds a reference to the region
// until then (Note [Region lifetime] in colocated_region.h).
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
#include "server/region_chunk_checks.h"
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

// Copies a region range into the step's gradient buffer `dst` (the engine counts its NaN/Inf
// when it applies the step).
absl::Status CopyRegionRange(const ColocatedRegion& region, const CheckedRegionRange& r,
                             void* dst) {
  return region.ReadRange(r.buffer, r.buffer_offset, r.bytes, dst);
}

// What one stream of a step carried.
struct Carried {
  std::vector<Range> ranges;               // wire chunks: their weights go back on the wire
  std::vector<CheckedRegionRange> region;  // region ranges: their weights go into the region
  int64_t bytes = 0;                       // gradient payload bytes
  int64_t in_place_weight_bytes = 0;       // weights the engine writes into the region itself
};

// Reads this stream's chunks of the step into `pending`, up to the commit. `region`: the
// step's region, or null for a wire step.
// Note [Steps read in place]
// A step over a region the engine can reach directly (ColocatedRegion::engine_reads_in_place: a
// CUDA IPC region, or a shared-memory region page-locked for a CUDA engine), on one stream, of a
// group without sync rounds, that sends whole tensors, moves no byte through the server's CPU:
// the engine reads each gradient where the trainer left it (GradientSet::AttachInPlace) and
// writes each tensor's new weights straight into the region as the step commits (CommitStep):
// device to device for CUDA IPC, one DMA each way for shared memory. Anything else (parts of
// tensors, K streams, sync rounds, which average on the host, a CPU engine) takes the general
// road: the ranges are copied into the step's gradient buffer and the weights out of the
// snapshot, under the region's guards.
absl::Status Gather(Group& group, const StepPlan& plan, const ColocatedRegion* region,
                    bool in_place, StepStream* stream, PendingStep& pending,
                    Carried* carried) {
  StepRequestRef request;
  while (true) {
    auto more = stream->Read(&request);
    if (!more.ok()) return more.status();
    if (!*more) return ClientGone(group, plan.step);
    if (request.kind == StepRequestRef::Kind::kCommit) return absl::OkStatus();
    if (request.kind == StepRequestRef::Kind::kRegionGradient) {
      if (region == nullptr) {
        return absl::InvalidArgumentError(
            "region_gradient needs a begin.region (a region from Colocate); send gradient "
            "chunks otherwise");
      }
      auto r = CheckRegionChunk(group, *region, request.region_gradient);
      if (!r.ok()) return r.status();
      if (r->writes_weights && plan.weights == v1::UPDATED) {
        absl::Status s =
            pending.ReserveWeightsDestination(r->weights_buffer, r->weights_offset, r->weights_bytes);
        if (!s.ok()) return s;
      }
      if (in_place && r->chunk.offset == 0 &&
          r->chunk.n == group.tensor(r->chunk.tensor).numel()) {
        const auto& buffers = region->buffers();
        const core::MemoryKind kind = region->memory() == MemoryKind::kDevice
                                          ? core::MemoryKind::kDevice
                                          : core::MemoryKind::kHost;
        const char* grad = static_cast<const char*>(buffers[static_cast<size_t>(r->buffer)].data) +
                           r->buffer_offset;
        if (absl::Status s = pending.AttachInPlace(group, r->chunk, grad, kind); !s.ok()) {
          return s;
        }
        if (r->writes_weights && plan.weights == v1::UPDATED) {
          char* weights = static_cast<char*>(buffers[static_cast<size_t>(r->weights_buffer)].data) +
                          r->weights_offset;
          pending.AddInPlaceWeights({r->chunk.tensor, weights, kind});
          carried->in_place_weight_bytes += r->weights_bytes;
        }
        group.metrics().AddGradientBytesReceived(r->bytes);
        carried->bytes += r->bytes;
        carried->region.push_back(*r);
        continue;
      }
      auto dst = pending.Reserve(group, r->chunk);
      if (!dst.ok()) return dst.status();
      if (absl::Status s = CopyRegionRange(*region, *r, *dst); !s.ok()) return s;
      group.metrics().AddGradientBytesReceived(r->bytes);
      carried->bytes += r->bytes;
      carried->region.push_back(*r);
      continue;
    }
    if (request.kind != StepRequestRef::Kind::kGradient) {
      return absl::InvalidArgumentError(
          absl::StrCat("begin received before the commit of step ", plan.step));
    }
    if (region != nullptr) {
      return absl::InvalidArgumentError(
          "gradient: a step with begin.region carries its gradients as region_gradient ranges");
    }
    auto c = CheckGradientChunk(group, request.gradient);
    if (!c.ok()) return c.status();
    auto dst = pending.Reserve(group, *c);
    if (!dst.ok()) return dst.status();
    request.gradient.data.CopyTo(*dst);
    const auto bytes = static_cast<int64_t>(request.gradient.data.size());
    group.metrics().AddGradientBytesReceived(bytes);
    carried->bytes += bytes;
    carried->ranges.push_back(Range{c->tensor, c->offset, c->n});
  }
}

// Writes the new weights of the region ranges that name a destination, from the snapshot into
// the region. Returns the bytes written.
absl::StatusOr<int64_t> WriteRegionWeights(Group& group, const StepOutcome& outcome,
                                           const std::vector<CheckedRegionRange>& ranges,
                                           const ColocatedRegion& region) {
  const WeightSnapshot& snap = *outcome.weights;
  int64_t written = 0;
  for (const CheckedRegionRange& r : ranges) {
    if (!r.writes_weights) continue;
    const int slot = snap.SlotOf(r.chunk.tensor);
    if (slot < 0) continue;
    if (absl::Status s = snap.AwaitFilled(slot); !s.ok()) return s;
    const int64_t esize =
        static_cast<int64_t>(core::DTypeSize(group.tensor(r.chunk.tensor).dtype));
    const uint8_t* src = snap.data[static_cast<size_t>(slot)].data() + r.chunk.offset * esize;
    if (absl::Status s = region.WriteRange(r.weights_buffer, r.weights_offset, src,
                                           r.weights_bytes);
        !s.ok()) {
      return s;
    }
    group.metrics().AddWeightBytesSent(r.weights_bytes);
    written += r.weights_bytes;
  }
  return written;
}

// Sends the new weights of `ranges` from the snapshot, at most chunk_bytes per message. Returns
// the payload bytes sent.
absl::StatusOr<int64_t> SendRanges(Group& group, const StepPlan& plan, const StepOutcome& outcome,
                        const std::vector<Range>& ranges, StepStream* stream) {
  const WeightSnapshot& snap = *outcome.weights;
  int64_t sent = 0;
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
      sent += static_cast<int64_t>(out.bytes);
    }
  }
  return sent;
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

absl::Status OptimizerCore::Step(StepStream* stream, const std::string& principal) {
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
    std::shared_ptr<ColocatedRegion> region;  // held until this step's weights are written
    if (!begin.region().empty()) {
      auto r = regions_.Find(begin.region(), group.name(), principal, "begin.region");
      if (!r.ok()) return r.status();
      region = *std::move(r);
      if (plan.weights == v1::ALL) {
        return absl::InvalidArgumentError(
            "begin.weights ALL cannot be used with begin.region: the new weights are written "
            "at each region_gradient's weights destination, and a tensor without a gradient "
            "range has none; use UPDATED (or NONE and PullWeights)");
      }
    }
    const Transport transport = region != nullptr ? region->transport() : Transport::kGrpc;

    CommitContext context;
    context.stopping = &shutting_down_;
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
                                    plan.stream_index, timeout, plan.weights, begin.attempt());
    if (!joined.ok()) return joined.status();
    std::shared_ptr<PendingStep> pending = *std::move(joined);
    Carried carried;
    const absl::Time gather_start = absl::Now();
    const bool in_place = region != nullptr && region->engine_reads_in_place() &&
                          plan.streams == 1 && !context.sync;
    if (absl::Status s = Gather(group, plan, region.get(), in_place, stream, *pending, &carried);
        !s.ok()) {
      pending->Fail(group, s);
      return s;
    }
    absl::Duration transfer = absl::Now() - gather_start;
    int64_t moved = carried.bytes;
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
    const absl::Time return_start = absl::Now();
    if (!outcome->duplicate) {
      moved += carried.in_place_weight_bytes;
      group.metrics().AddWeightBytesSent(carried.in_place_weight_bytes);
    }
    if (outcome->weights != nullptr && !outcome->duplicate && region != nullptr &&
        plan.weights == v1::UPDATED) {
      auto written = WriteRegionWeights(group, *outcome, carried.region, *region);
      if (!written.ok()) return written.status();
      moved += *written;
    } else if (outcome->weights != nullptr && !outcome->duplicate && region == nullptr) {
      const std::vector<Range> ranges =
          ReturnRanges(group, plan, std::move(carried.ranges), *pending);
      auto sent = SendRanges(group, plan, *outcome, ranges, stream);
      if (!sent.ok()) return sent.status();
      moved += *sent;
    }
    transfer += absl::Now() - return_start;
    metrics_->AddTransportBytes(transport, moved);
    metrics_->ObserveTransfer(transport, absl::ToDoubleSeconds(transfer));
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
