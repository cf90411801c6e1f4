#include "cpu/cpu_param_group.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cpu/percentile_clipping.h"
#include "internal/request_checks.h"

namespace optd::core::cpu {
namespace {

using internal::Placement;

// Task sizes: large enough to amortize claiming a task, small enough to balance threads.
constexpr int64_t kBlocksPerTask = 64;
constexpr int64_t kElementsPerTask = kBlocksPerTask * kBlockSize;
// Below this many elements a step runs on the calling thread: waking workers costs more.
constexpr int64_t kParallelThreshold = 4 * kElementsPerTask;

int64_t NumBlocks(int64_t numel) { return (numel + kBlockSize - 1) / kBlockSize; }

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
  s.eight_bit = internal::UsesEightBit(numel, options);
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

absl::Status CpuParamGroup::SetOptions(const AdamWOptions& options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  const bool new_clipping = options.percentile_clipping < 100;
  std::vector<int> rebuild;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    const bool layout_changes = internal::UsesEightBit(t.numel, options) != t.states.eight_bit;
    const bool clipping_changes = new_clipping != clipping();
    if (t.step > 0 && layout_changes) {
      return absl::FailedPreconditionError(absl::StrCat(
          "min_8bit_size: changing it from ", spec_.options.min_8bit_size, " to ",
          options.min_8bit_size, " would change the state layout of tensor \"",
          spec_.tensors[i].name, "\" after its first step"));
    }
    if (t.step > 0 && clipping_changes) {
      return absl::FailedPreconditionError(absl::StrCat(
          "percentile_clipping: changing it from ", spec_.options.percentile_clipping, " to ",
          options.percentile_clipping, " would add or drop the clipping history of tensor \"",
          spec_.tensors[i].name, "\" after its first step"));
    }
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
  if (absl::Status s = internal::CheckTensorIndex("tensor", tensor, num_tensors()); !s.ok()) {
    return s;
  }
  const TensorSpec& ts = spec_.tensors[tensor];
  Tensor& t = tensors_[tensor];
  if (absl::Status s = internal::CheckView("src", src, &ts.dtype, src.numel, Placement::kHostOnly);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = internal::CheckElementRange("offset", offset, src.numel, t.numel);
      !s.ok()) {
    return s;
  }
  if (src.numel > 0) {
    const size_t esize = DTypeSize(ts.dtype);
    std::memcpy(t.param.as<char>() + offset * esize, src.data, src.numel * esize);
  }
  return absl::OkStatus();
}

absl::Status CpuParamGroup::ReadParam(int tensor, int64_t offset, TensorView dst) const {
  if (absl::Status s = internal::CheckTensorIndex("tensor", tensor, num_tensors()); !s.ok()) {
    return s;
  }
  const TensorSpec& ts = spec_.tensors[tensor];
  const Tensor& t = tensors_[tensor];
  if (absl::Status s = internal::CheckView("dst", dst.AsConst(), &ts.dtype, dst.numel,
                                           Placement::kHostOnly);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = internal::CheckElementRange("offset", offset, dst.numel, t.numel);
      !s.ok()) {
    return s;
  }
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
    const bool eight_bit = work.buffers.state1 != nullptr || work.buffers.absmax1 != nullptr;
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
    const bool eight_bit = work.buffers.absmax1 != nullptr;
    task_nonfinite_[i] =
        eight_bit ? Update8BitBlocks(work.buffers, work.constants, task.first, task.end)
                  : Update32Bit(work.buffers, work.constants, task.first, task.end);
  };
  if (total_elements < kParallelThreshold) {
    for (size_t i = 0; i < tasks_.size(); ++i) run(static_cast<int64_t>(i));
  } else {
    shared_->pool.Run(static_cast<int64_t>(tasks_.size()), run);
  }
  int64_t nonfinite = 0;
  for (int64_t n : task_nonfinite_) nonfinite += n;
  if (nonfinite > 0) {
    shared_->nonfinite_gradient_elements.fetch_add(nonfinite, std::memory_order_relaxed);
  }
}

absl::Status CpuParamGroup::Step(absl::Span<const TensorGradient> grads, const StepArgs& args) {
  // Everything is validated before anything changes (all or nothing).
  absl::StatusOr<float> lr = internal::StepLearningRate(args, spec_.options);
  if (!lr.ok()) return lr.status();
  if (absl::Status s =
          internal::CheckStepGradients(spec_, grads, Placement::kHostOnly, seen_scratch_);
      !s.ok()) {
    return s;
  }
  works_.clear();
  for (const TensorGradient& g : grads) {
    Work w;
    w.tensor = g.tensor;
    w.buffers = Buffers(g.tensor);
    w.buffers.grad = g.grad.data;
    w.buffers.grad_dtype = g.grad.dtype;
    w.buffers.grad_offset = 0;
    const Tensor& t = tensors_[g.tensor];
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
  if (absl::Status s = internal::CheckTensorIndex("range.tensor", range.tensor, num_tensors());
      !s.ok()) {
    return s;
  }
  if (clipping()) {
    return absl::FailedPreconditionError(
        "ApplyRange: percentile_clipping is on and needs the whole gradient; use Step");
  }
  if (step < 1) {
    return absl::InvalidArgumentError(absl::StrCat("step must be >= 1, got ", step));
  }
  absl::StatusOr<float> lr = internal::StepLearningRate(args, spec_.options);
  if (!lr.ok()) return lr.status();
  const Tensor& t = tensors_[range.tensor];
  if (absl::Status s = internal::CheckBlockRange("range", range.offset, range.grad.numel, t.numel);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = internal::CheckView("range.grad", range.grad, nullptr, range.grad.numel,
                                           Placement::kHostOnly);
      !s.ok()) {
    return s;
  }
  works_.clear();
  Work w;
  w.tensor = range.tensor;
  w.buffers = Buffers(range.tensor);
  w.buffers.grad = range.grad.data;
  w.buffers.grad_dtype = range.grad.dtype;
  w.buffers.grad_offset = range.offset;
  const int64_t end = range.offset + range.grad.numel;
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

int64_t CpuParamGroup::GetStep(int tensor) const {
  if (tensor < 0 || tensor >= num_tensors()) return -1;
  return tensors_[tensor].step;
}

absl::Status CpuParamGroup::SetStep(int tensor, int64_t step) {
  if (absl::Status s = internal::CheckTensorIndex("tensor", tensor, num_tensors()); !s.ok()) {
    return s;
  }
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("step must be >= 0, got ", step));
  tensors_[tensor].step = step;
  return absl::OkStatus();
}

absl::StatusOr<TensorState> CpuParamGroup::ExportState(int tensor) const {
  if (absl::Status s = internal::CheckTensorIndex("tensor", tensor, num_tensors()); !s.ok()) {
    return s;
  }
  return ExportStateRange(tensor, 0, tensors_[tensor].numel);
}

absl::Status CpuParamGroup::ImportState(int tensor, const TensorState& state) {
  if (absl::Status s = internal::CheckTensorIndex("tensor", tensor, num_tensors()); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateTensorState(state, tensors_[tensor].numel, clipping()); !s.ok()) {
    return s;
  }
  return ImportStateRange(tensor, 0, state);
}

absl::StatusOr<TensorState> CpuParamGroup::ExportStateRange(int tensor, int64_t offset,
                                                            int64_t count) const {
  if (absl::Status s = internal::CheckTensorIndex("tensor", tensor, num_tensors()); !s.ok()) {
    return s;
  }
  const Tensor& t = tensors_[tensor];
  if (absl::Status s = internal::CheckBlockRange("range", offset, count, t.numel); !s.ok()) {
    return s;
  }
  TensorState out;
  out.step = t.step;
  out.eight_bit = t.states.eight_bit;
  out.gnorm_vec = t.states.gnorm_vec;
  if (t.states.eight_bit) {
    const uint8_t* s1 = t.states.state1.as<uint8_t>();
    const uint8_t* s2 = t.states.state2.as<uint8_t>();
    if (count > 0) {
      out.state1.assign(s1 + offset, s1 + offset + count);
      out.state2.assign(s2 + offset, s2 + offset + count);
      const int64_t b0 = offset / kBlockSize;
      const int64_t b1 = NumBlocks(offset + count);
      out.absmax1.assign(t.states.absmax1.as<float>() + b0, t.states.absmax1.as<float>() + b1);
      out.absmax2.assign(t.states.absmax2.as<float>() + b0, t.states.absmax2.as<float>() + b1);
    }
  } else if (count > 0) {
    const float* s1 = t.states.state1.as<float>();
    const float* s2 = t.states.state2.as<float>();
    out.state1_f32.assign(s1 + offset, s1 + offset + count);
    out.state2_f32.assign(s2 + offset, s2 + offset + count);
  }
  return out;
}

absl::Status CpuParamGroup::ImportStateRange(int tensor, int64_t offset,
                                             const TensorState& state) {
  if (absl::Status s = internal::CheckTensorIndex("tensor", tensor, num_tensors()); !s.ok()) {
    return s;
  }
  Tensor& t = tensors_[tensor];
  if (state.eight_bit != t.states.eight_bit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "eight_bit is ", state.eight_bit ? "true" : "false", " but tensor \"",
        spec_.tensors[tensor].name, "\" (", t.numel, " elements, min_8bit_size ",
        spec_.options.min_8bit_size, ") keeps ", t.states.eight_bit ? "8-bit" : "32-bit",
        " states"));
  }
  const int64_t count = static_cast<int64_t>(state.eight_bit ? state.state1.size()
                                                             : state.state1_f32.size());
  if (absl::Status s = internal::CheckBlockRange("range", offset, count, t.numel); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateTensorState(state, count, clipping()); !s.ok()) return s;
  if (count > 0) {
    if (state.eight_bit) {
      std::memcpy(t.states.state1.as<uint8_t>() + offset, state.state1.data(), count);
      std::memcpy(t.states.state2.as<uint8_t>() + offset, state.state2.data(), count);
      const int64_t b0 = offset / kBlockSize;
      std::memcpy(t.states.absmax1.as<float>() + b0, state.absmax1.data(),
                  state.absmax1.size() * sizeof(float));
      std::memcpy(t.states.absmax2.as<float>() + b0, state.absmax2.data(),
                  state.absmax2.size() * sizeof(float));
    } else {
      std::memcpy(t.states.state1.as<float>() + offset, state.state1_f32.data(),
                  count * sizeof(float));
      std::memcpy(t.states.state2.as<float>() + offset, state.state2_f32.data(),
                  count * sizeof(float));
    }
  }
  t.step = state.step;
  if (clipping()) t.states.gnorm_vec = state.gnorm_vec;
  return absl::OkStatus();
}

}  // namespace optd::core::cpu
