#include "cpu/cpu_param_group.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cpu/percentile_clipping.h"
#include "internal/request_checks.h"
#include "optd/core/state_layout.h"

namespace optd::core::cpu {
namespace {

using internal::Placement;

// Task sizes: large enough to amortize claiming a task, small enough to balance threads.
constexpr int64_t kBlocksPerTask = 64;
constexpr int64_t kElementsPerTask = kBlocksPerTask * kBlockSize;
// Below this many elements a step runs on the calling thread: waking workers costs more.
constexpr int64_t kParallelThreshold = 4 * kElementsPerTask;

}  // namespace

absl::StatusOr<std::unique_ptr<ParamGroup>> CpuParamGroup::Create(
    const GroupSpec& spec, std::shared_ptr<EngineShared> shared) {
  if (absl::Status s = ValidateGroupSpec(spec); !s.ok()) return s;
  std::unique_ptr<CpuParamGroup> group(new CpuParamGroup(spec, std::move(shared)));
  group->tensors_.resize(spec.tensors.size());
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const TensorSpec& ts = spec.tensors[i];
    Tensor& t = group->tensors_[i];
    t.numel = ts.numel();
    absl::StatusOr<HostBuffer> param =
        HostBuffer::Allocate(t.numel, DTypeSize(ts.dtype), "parameters");
    if (!param.ok()) return param.status();
    t.param = *std::move(param);
    absl::StatusOr<States> states = NewStates(t.numel, spec.options);
    if (!states.ok()) return states.status();
    t.states = *std::move(states);
    group->weight_bytes_ += t.param.bytes();
  }
  group->shared_->weight_bytes.fetch_add(group->weight_bytes_, std::memory_order_relaxed);
  group->UpdateStateBytes();
  return std::unique_ptr<ParamGroup>(std::move(group));
}

CpuParamGroup::CpuParamGroup(GroupSpec spec, std::shared_ptr<EngineShared> shared)
    : spec_(std::move(spec)), shared_(std::move(shared)) {}

CpuParamGroup::~CpuParamGroup() {
  shared_->weight_bytes.fetch_sub(weight_bytes_, std::memory_order_relaxed);
  shared_->state_bytes.fetch_sub(state_bytes_, std::memory_order_relaxed);
}

absl::StatusOr<CpuParamGroup::States> CpuParamGroup::NewStates(int64_t numel,
                                                               const AdamWOptions& options) {
  States s;
  s.eight_bit = UsesEightBitStates(numel, options);
  const int64_t blocks = NumBlocks(numel);
  absl::StatusOr<HostBuffer> b1 = s.eight_bit ? HostBuffer::Allocate(numel, 1, "state1")
                                              : HostBuffer::Allocate(numel, 4, "state1");
  if (!b1.ok()) return b1.status();
  absl::StatusOr<HostBuffer> b2 = s.eight_bit ? HostBuffer::Allocate(numel, 1, "state2")
                                              : HostBuffer::Allocate(numel, 4, "state2");
  if (!b2.ok()) return b2.status();
  s.state1 = *std::move(b1);
  s.state2 = *std::move(b2);
  if (s.eight_bit) {
    absl::StatusOr<HostBuffer> a1 = HostBuffer::Allocate(blocks, 4, "absmax1");
    if (!a1.ok()) return a1.status();
    absl::StatusOr<HostBuffer> a2 = HostBuffer::Allocate(blocks, 4, "absmax2");
    if (!a2.ok()) return a2.status();
    s.absmax1 = *std::move(a1);
    s.absmax2 = *std::move(a2);
  }
  if (options.percentile_clipping < 100) s.gnorm_vec.assign(kGnormHistory, 0.0f);
  return s;
}

int64_t CpuParamGroup::StateBytes(const States& s) {
  return s.state1.bytes() + s.state2.bytes() + s.absmax1.bytes() + s.absmax2.bytes() +
         static_cast<int64_t>(s.gnorm_vec.size() * sizeof(float));
}

void CpuParamGroup::UpdateStateBytes() {
  int64_t total = 0;
  for (const Tensor& t : tensors_) total += StateBytes(t.states);
  shared_->state_bytes.fetch_add(total - state_bytes_, std::memory_order_relaxed);
  state_bytes_ = total;
}

MemoryStats CpuParamGroup::GetMemoryStats() const {
  MemoryStats m;
  m.weight_bytes_host = weight_bytes_;
  m.state_bytes_host = state_bytes_;
  auto bytes = [](const auto& v) {
    return static_cast<int64_t>(v.capacity() * sizeof(v[0]));
  };
  m.buffer_bytes_host = bytes(seen_scratch_) + bytes(works_) + bytes(tasks_) +
                        bytes(partial_sums_) + bytes(work_sums_) + bytes(task_nonfinite_);
  return m;
}

absl::Status CpuParamGroup::SetOptions(const AdamWOptions& options) {
  if (absl::Status s = internal::CheckSetOptions(
          spec_, options, [this](int t) { return tensors_[t].step; });
      !s.ok()) {
    return s;
  }
  const bool new_clipping = options.percentile_clipping < 100;
  std::vector<int> rebuild;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    const bool layout_changes = UsesEightBitStates(t.numel, options) != t.states.eight_bit;
    const bool clipping_changes = new_clipping != clipping();
    if (layout_changes || clipping_changes) rebuild.push_back(static_cast<int>(i));
  }
  // Allocate everything first, so a failure leaves the group as it was.
  std::vector<States> fresh;
  fresh.reserve(rebuild.size());
  for (int i : rebuild) {
    absl::StatusOr<States> s = NewStates(tensors_[i].numel, options);
    if (!s.ok()) return s.status();
    fresh.push_back(*std::move(s));
  }
  for (size_t r = 0; r < rebuild.size(); ++r) {
    States& old_states = tensors_[rebuild[r]].states;
    if (fresh[r].eight_bit == old_states.eight_bit) {
      // Only the clipping history changes: keep the states (they may have been imported).
      old_states.gnorm_vec = std::move(fresh[r].gnorm_vec);
    } else {
      old_states = std::move(fresh[r]);
    }
  }
  spec_.options = options;
  UpdateStateBytes();
  return absl::OkStatus();
}

absl::Status CpuParamGroup::WriteParam(int tensor, int64_t offset, ConstTensorView src) {
  if (absl::Status s =
          internal::CheckParamCopy(spec_, "src", tensor, offset, src, Placement::kHostOnly);
      !s.ok()) {
    return s;
  }
  const TensorSpec& ts = spec_.tensors[tensor];
  Tensor& t = tensors_[tensor];
  if (src.numel > 0) {
    const size_t esize = DTypeSize(ts.dtype);
    std::memcpy(t.param.as<char>() + offset * esize, src.data, src.numel * esize);
  }
  return absl::OkStatus();
}

absl::Status CpuParamGroup::ReadParam(int tensor, int64_t offset, TensorView dst) const {
  if (absl::Status s = internal::CheckParamCopy(spec_, "dst", tensor, offset, dst.AsConst(),
                                                Placement::kHostOnly);
      !s.ok()) {
    return s;
  }
  const TensorSpec& ts = spec_.tensors[tensor];
  const Tensor& t = tensors_[tensor];
  if (dst.numel > 0) {
    const size_t esize = DTypeSize(ts.dtype);
    std::memcpy(dst.data, t.param.as<char>() + offset * esize, dst.numel * esize);
  }
  return absl::OkStatus();
}

TensorView CpuParamGroup::ParamStorage(int tensor) {
  if (tensor < 0 || tensor >= num_tensors()) return TensorView{};
  Tensor& t = tensors_[tensor];
  return TensorView{t.param.data(), spec_.tensors[tensor].dtype, t.numel, MemoryKind::kHost};
}

TensorBuffers CpuParamGroup::Buffers(int i) {
  Tensor& t = tensors_[i];
  TensorBuffers b;
  b.param = t.param.data();
  b.param_dtype = spec_.tensors[i].dtype;
  b.numel = t.numel;
  if (t.states.eight_bit) {
    b.state1 = t.states.state1.as<uint8_t>();
    b.state2 = t.states.state2.as<uint8_t>();
    b.absmax1 = t.states.absmax1.as<float>();
    b.absmax2 = t.states.absmax2.as<float>();
  } else {
    b.state1_f32 = t.states.state1.as<float>();
    b.state2_f32 = t.states.state2.as<float>();
  }
  return b;
}

void CpuParamGroup::SumSquaresOfWorks(std::vector<double>& sums) {
  tasks_.clear();
  for (size_t w = 0; w < works_.size(); ++w) {
    const int64_t n = works_[w].buffers.numel;
    for (int64_t b = 0; b < n; b += kElementsPerTask) {
      tasks_.push_back(Task{static_cast<int>(w), b, std::min(n, b + kElementsPerTask)});
    }
  }
  partial_sums_.assign(tasks_.size(), 0.0);
  auto run = [&](int64_t i) {
    const Task& task = tasks_[i];
    const TensorBuffers& b = works_[task.work].buffers;
    partial_sums_[i] = SumSquares(b.grad, b.grad_dtype, task.first, task.end);
  };
  shared_->pool.Run(static_cast<int64_t>(tasks_.size()), run);
  // Added in task order, so the result does not depend on the thread schedule.
  sums.assign(works_.size(), 0.0);
  for (size_t i = 0; i < tasks_.size(); ++i) sums[tasks_[i].work] += partial_sums_[i];
}

void CpuParamGroup::RunWorks() {
  tasks_.clear();
  int64_t total_elements = 0;
  for (size_t w = 0; w < works_.size(); ++w) {
    const Work& work = works_[w];
    const bool eight_bit = work.eight_bit;
    const int64_t chunk = eight_bit ? kBlocksPerTask : kElementsPerTask;
    for (int64_t b = work.first; b < work.end; b += chunk) {
      tasks_.push_back(Task{static_cast<int>(w), b, std::min(work.end, b + chunk)});
    }
    total_elements += (work.end - work.first) * (eight_bit ? kBlockSize : 1);
  }
  task_nonfinite_.assign(tasks_.size(), 0);
  auto run = [&](int64_t i) {
    const Task& task = tasks_[i];
    const Work& work = works_[task.work];
    task_nonfinite_[i] =
        work.eight_bit ? Update8BitBlocks(work.buffers, work.constants, task.first, task.end)
                  : Update32Bit(work.buffers, work.constants, task.first, task.end);
  };
  if (total_elements < kParallelThreshold) {
    for (size_t i = 0; i < tasks_.size(); ++i) run(static_cast<int64_t>(i));
  } else {
    shared_->pool.Run(static_cast<int64_t>(tasks_.size()), run);
  }
  int64_t nonfinite = 0;
  for (int64_t n : task_nonfinite_) nonfinite += n;
  last_nonfinite_ = nonfinite;
  if (nonfinite > 0) {
    shared_->nonfinite_gradient_elements.fetch_add(nonfinite, std::memory_order_relaxed);
  }
}

absl::Status CpuParamGroup::Step(absl::Span<const TensorGradient> grads, const StepArgs& args) {
  // Everything is validated before anything changes (all or nothing).
  absl::StatusOr<float> lr =
      internal::CheckStep(spec_, grads, args, [this](int t) { return tensors_[t].step; },
                          Placement::kHostOnly, seen_scratch_);
  if (!lr.ok()) return lr.status();
  works_.clear();
  for (const TensorGradient& g : grads) {
    Work w;
    w.tensor = g.tensor;
    w.buffers = Buffers(g.tensor);
    w.buffers.grad = g.grad.data;
    w.buffers.grad_dtype = g.grad.dtype;
    w.buffers.grad_offset = 0;
    const Tensor& t = tensors_[g.tensor];
    w.eight_bit = t.states.eight_bit;
    w.first = 0;
    w.end = t.states.eight_bit ? NumBlocks(t.numel) : t.numel;
    works_.push_back(w);
  }
  if (clipping()) SumSquaresOfWorks(work_sums_);
  for (size_t w = 0; w < works_.size(); ++w) {
    Tensor& t = tensors_[works_[w].tensor];
    const int64_t step = t.step + 1;
    float gnorm_scale = 1.0f;
    if (clipping()) {
      gnorm_scale = UpdateGnormHistory(t.states.gnorm_vec.data(), step,
                                       spec_.options.percentile_clipping,
                                       static_cast<float>(work_sums_[w]));
    }
    works_[w].constants = MakeStepConstants(spec_.options, *lr, step, gnorm_scale);
  }
  RunWorks();
  for (const Work& w : works_) ++tensors_[w.tensor].step;
  return absl::OkStatus();
}

absl::Status CpuParamGroup::ApplyRange(const RangeGradient& range, int64_t step,
                                       const StepArgs& args) {
  absl::StatusOr<float> lr =
      internal::CheckApplyRange(spec_, range, step, args, Placement::kHostOnly);
  if (!lr.ok()) return lr.status();
  const Tensor& t = tensors_[range.tensor];
  works_.clear();
  Work w;
  w.tensor = range.tensor;
  w.buffers = Buffers(range.tensor);
  w.buffers.grad = range.grad.data;
  w.buffers.grad_dtype = range.grad.dtype;
  w.buffers.grad_offset = range.offset;
  const int64_t end = range.offset + range.grad.numel;
  w.eight_bit = t.states.eight_bit;
  if (t.states.eight_bit) {
    w.first = range.offset / kBlockSize;
    w.end = NumBlocks(end);
  } else {
    w.first = range.offset;
    w.end = end;
  }
  w.constants = MakeStepConstants(spec_.options, *lr, step, 1.0f);
  works_.push_back(w);
  RunWorks();
  return absl::OkStatus();
}

}  // namespace optd::core::cpu
