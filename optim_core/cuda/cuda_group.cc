#include "cuda/cuda_group.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cuda/cuda_status.h"
#include "cuda/quant_buckets.h"
#include "internal/request_checks.h"
#include "optd/core/group_spec.h"
#include "optd/core/options.h"
#include "optd/core/state_layout.h"
#include "optd/core/tensor_state.h"

namespace optd::core::internal::cuda {

EngineShared::~EngineShared() {
  if (tables) cudaSetDevice(device);  // the tables are freed on their device
}

absl::StatusOr<std::unique_ptr<CudaGroup>> CudaGroup::Create(
    const GroupSpec& spec, std::shared_ptr<EngineShared> shared) {
  std::unique_ptr<CudaGroup> g(new CudaGroup(spec, std::move(shared)));
  absl::Status s = g->Init();
  if (!s.ok()) return s;
  return g;
}

absl::Status CudaGroup::Init() {
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(shared_->device), "cudaSetDevice");
  OPTD_CUDA_ASSIGN_OR_RETURN(stream_, Stream::Create());
  OPTD_CUDA_ASSIGN_OR_RETURN(h2d_, Stream::Create());
  OPTD_CUDA_ASSIGN_OR_RETURN(d2h_, Stream::Create());
  const int n = num_tensors();
  numel_.resize(n);
  steps_.assign(n, 0);
  params_.resize(n);
  for (int t = 0; t < n; ++t) {
    numel_[t] = spec_.tensors[t].numel();
    const int64_t bytes = numel_[t] * static_cast<int64_t>(DTypeSize(spec_.tensors[t].dtype));
    if (bytes == 0) continue;
    OPTD_CUDA_ASSIGN_OR_RETURN(
        params_[t],
        DeviceBuffer::Allocate(bytes,
                               absl::StrCat("out of device memory allocating ", bytes,
                                            " bytes for tensor ", spec_.tensors[t].name),
                               "cudaMalloc(param)"));
    OPTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(params_[t].get(), 0, bytes, stream_.get()),
                              "cudaMemsetAsync");
    weight_bytes_ += bytes;
    shared_->counters->weight_bytes_device += bytes;
  }
  std::vector<int64_t> block_offset(n + 1, 0);
  for (int t = 0; t < n; ++t) block_offset[t + 1] = block_offset[t] + NumBlocks(numel_[t]);
  OPTD_CUDA_ASSIGN_OR_RETURN(clip_, ClipBuffers::Create(std::move(block_offset), stream_.get()));
  OPTD_CUDA_ASSIGN_OR_RETURN(
      nonfinite_, DeviceBuffer::Allocate(sizeof(unsigned long long),
                                         "out of device memory for the non-finite counter",
                                         "cudaMalloc(counter)"));
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemsetAsync(nonfinite_.get(), 0, sizeof(unsigned long long), stream_.get()),
      "cudaMemsetAsync(counter)");
  OPTD_CUDA_ASSIGN_OR_RETURN(
      nonfinite_host_, PinnedBuffer::Allocate(sizeof(unsigned long long),
                                              "out of pinned host memory for the counter",
                                              "cudaMallocHost(counter)"));
  *nonfinite_host_.as<unsigned long long>() = 0;
  if (clipping()) OPTD_CUDA_RETURN_IF_NOT_OK(clip_.EnsurePartials());
  OPTD_CUDA_ASSIGN_OR_RETURN(staging_, GradientStaging::Create());

  // Budget: resident when the states fit what the engine has left, else paged in that space.
  for (int t = 0; t < n; ++t)
    state_bytes_ += LayoutOf(numel_[t], UsesEightBitStates(numel_[t], spec_.options)).bytes;
  placement_ = shared_->budget.Place(state_bytes_, /*held=*/0);
  OPTD_CUDA_RETURN_IF_NOT_OK(BuildPages(spec_.options));
  OPTD_CUDA_RETURN_IF_NOT_OK(batcher_.Reserve(static_cast<size_t>(pages_->num_pages()) + 16,
                                              static_cast<size_t>(n)));
  return CudaStatus(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize(create)");
}

absl::Status CudaGroup::BuildPages(const AdamWOptions& options) {
  pages_.reset();
  std::vector<PageSpec> specs;
  first_page_.assign(num_tensors() + 1, 0);
  const int64_t page_elems = placement_.page_elems;
  for (int t = 0; t < num_tensors(); ++t) {
    first_page_[t] = static_cast<int>(specs.size());
    const bool eight = UsesEightBitStates(numel_[t], options);
    const int64_t step = (page_elems > 0 && eight) ? page_elems : std::max<int64_t>(numel_[t], 1);
    for (int64_t off = 0; off < numel_[t]; off += step)
      specs.push_back({t, off, std::min(step, numel_[t] - off), eight});
  }
  first_page_[num_tensors()] = static_cast<int>(specs.size());
  absl::StatusOr<std::unique_ptr<PageManager>> pm =
      PageManager::Create(std::move(specs), placement_.page_budget, shared_->counters,
                          stream_.get(), h2d_.get(), d2h_.get());
  if (!pm.ok()) return pm.status();
  pages_ = std::move(*pm);
  return absl::OkStatus();
}

absl::Status CudaGroup::UpdatePlacement() {
  if (!placement_.paged() ||
      shared_->budget.Available(placement_.reserved) <= placement_.page_budget) {
    return absl::OkStatus();
  }
  // Move the states out, place the group anew, and move them into the new pages.
  std::vector<TensorState> states(static_cast<size_t>(num_tensors()));
  for (int t = 0; t < num_tensors(); ++t) {
    absl::StatusOr<TensorState> st = ExportState(t);
    if (!st.ok()) return st.status();
    states[t] = *std::move(st);
  }
  const StatePlacement before = placement_;
  placement_ = shared_->budget.Place(state_bytes_, before.reserved);
  absl::Status built = BuildPages(spec_.options);
  if (!built.ok()) {
    // Back to the pages the group had (their memory was just freed).
    shared_->budget.Hold(placement_.reserved, before.reserved);
    placement_ = before;
    OPTD_CUDA_RETURN_IF_NOT_OK(BuildPages(spec_.options));
  }
  for (int t = 0; t < num_tensors(); ++t)
    OPTD_CUDA_RETURN_IF_NOT_OK(CopyState(t, 0, numel_[t], &states[t], /*to_device=*/true));
  return batcher_.Reserve(static_cast<size_t>(pages_->num_pages()) + 16,
                          static_cast<size_t>(num_tensors()));
}

CudaGroup::~CudaGroup() {
  // The members free their resources after this body, on this device, once the streams are idle.
  cudaSetDevice(shared_->device);
  for (const Stream* s : {&stream_, &h2d_, &d2h_})
    if (s->get() != nullptr) cudaStreamSynchronize(s->get());
  pages_.reset();
  shared_->counters->weight_bytes_device -= weight_bytes_;
  shared_->budget.Release(placement_.reserved);
}

MemoryStats CudaGroup::GetMemoryStats() const {
  MemoryStats m;
  m.weight_bytes_device = weight_bytes_;
  m.state_bytes_device = pages_->device_bytes();
  m.state_bytes_host = pages_->host_bytes();
  m.paged_out_bytes = pages_->host_bytes();
  m.buffer_bytes_device = clip_.device_bytes() + nonfinite_.bytes() + staging_.device_bytes() +
                          batcher_.device_bytes();
  m.buffer_bytes_host = nonfinite_host_.bytes() + batcher_.host_bytes();
  return m;
}

Hyper CudaGroup::HyperFor(float lr) const {
  const AdamWOptions& o = spec_.options;
  Hyper h;
  h.lr = lr;
  h.beta1 = o.beta1;
  h.beta2 = o.beta2;
  h.eps = o.eps;
  h.weight_decay = o.weight_decay;
  return h;
}

LaunchParams CudaGroup::BaseLaunchParams(const Hyper& hyper) const {
  LaunchParams lp;
  lp.qmap1 = shared_->qmaps;
  lp.qmap2 = shared_->qmaps + 256;
  lp.buckets1 = shared_->buckets;
  lp.buckets2 = shared_->buckets + kSignedBuckets;
  lp.sm_count = shared_->sm_count;
  lp.nonfinite = nonfinite_.as<unsigned long long>();
  lp.hyper = hyper;
  return lp;
}

void CudaGroup::AddUnits(int tensor, int64_t offset, ConstTensorView grad, int32_t step,
                         std::vector<Unit>* units) const {
  const int64_t gsize = static_cast<int64_t>(DTypeSize(grad.dtype));
  const int64_t end = offset + grad.numel;
  // Host gradients are cut to fit a staging buffer; device gradients only at page boundaries.
  const int64_t host_chunk = GradientStaging::kBufferBytes / gsize / kBlockSize * kBlockSize;
  for (int p = first_page_[tensor]; p < first_page_[tensor + 1]; ++p) {
    const PageSpec& ps = pages_->page(p);
    const int64_t lo = std::max(offset, ps.offset);
    const int64_t hi = std::min(end, ps.offset + ps.count);
    const int64_t chunk = grad.memory == MemoryKind::kHost ? host_chunk : hi - lo;
    for (int64_t a = lo; a < hi; a += chunk) {
      const int64_t b = std::min(hi, a + chunk);
      Unit u;
      u.tensor = tensor;
      u.page = p;
      u.offset = a;
      u.count = b - a;
      u.grad = grad;
      u.grad.data = static_cast<const char*>(grad.data) + (a - offset) * gsize;
      u.grad.numel = u.count;
      u.step = step;
      units->push_back(u);
    }
  }
}

absl::Status CudaGroup::Run(const std::vector<Unit>& units, LaunchPass pass,
                            const Hyper& hyper) {
  const LaunchParams base = BaseLaunchParams(hyper);
  batcher_.Clear();
  staging_.BeginStep();
  for (const Unit& u : units) {
    const bool streamed = pass == LaunchPass::kUpdate && !pages_->resident(u.page);
    const bool host = u.grad.memory == MemoryKind::kHost;
    const int64_t gbytes = u.count * static_cast<int64_t>(DTypeSize(u.grad.dtype));
    if (!batcher_.empty() && (streamed || (host && !staging_.Fits(gbytes)))) {
      OPTD_CUDA_RETURN_IF_NOT_OK(
          batcher_.Launch(pass, base, staging_, h2d_.get(), stream_.get()));
    }
    Segment s;
    s.numel = u.count;
    s.step = u.step;
    s.param_dtype = static_cast<uint8_t>(spec_.tensors[u.tensor].dtype);
    s.grad_dtype = static_cast<uint8_t>(u.grad.dtype);
    s.partials = clip_.partials(u.tensor, u.offset);
    s.gnorm_scale = clipping() ? clip_.scale(u.tensor) : nullptr;
    if (host) {
      absl::StatusOr<const void*> staged = staging_.Copy(u.grad.data, gbytes, h2d_.get());
      if (!staged.ok()) return staged.status();
      s.grad = *staged;
    } else {
      s.grad = u.grad.data;
    }
    s.grad_aligned = reinterpret_cast<uintptr_t>(s.grad) % (4 * DTypeSize(u.grad.dtype)) == 0;
    if (pass == LaunchPass::kUpdate) {
      absl::StatusOr<char*> page = pages_->Acquire(u.page, stream_.get());
      if (!page.ok()) return page.status();
      const PageSpec& ps = pages_->page(u.page);
      const PageLayout& l = pages_->layout(u.page);
      const int64_t rel = u.offset - ps.offset;
      s.param = params_[u.tensor].as<char>() +
                u.offset * static_cast<int64_t>(DTypeSize(spec_.tensors[u.tensor].dtype));
      s.eight_bit = ps.eight_bit;
      if (ps.eight_bit) {
        s.state1 = reinterpret_cast<uint8_t*>(*page + l.state1) + rel;
        s.state2 = reinterpret_cast<uint8_t*>(*page + l.state2) + rel;
        s.absmax1 = reinterpret_cast<float*>(*page + l.absmax1) + rel / kBlockSize;
        s.absmax2 = reinterpret_cast<float*>(*page + l.absmax2) + rel / kBlockSize;
      } else {
        s.m = reinterpret_cast<float*>(*page + l.state1) + rel;
        s.v = reinterpret_cast<float*>(*page + l.state2) + rel;
      }
    }
    batcher_.Add(s);
    if (streamed) {
      OPTD_CUDA_RETURN_IF_NOT_OK(
          batcher_.Launch(pass, base, staging_, h2d_.get(), stream_.get()));
      OPTD_CUDA_RETURN_IF_NOT_OK(pages_->Release(u.page, stream_.get()));
    }
  }
  if (!batcher_.empty())
    OPTD_CUDA_RETURN_IF_NOT_OK(batcher_.Launch(pass, base, staging_, h2d_.get(), stream_.get()));
  return absl::OkStatus();
}

absl::Status CudaGroup::Finish() {
  batcher_.EndStep();
  // The step's count of NaN/Inf gradient elements comes back with the step's synchronize.
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(nonfinite_host_.get(), nonfinite_.get(), sizeof(unsigned long long),
                      cudaMemcpyDeviceToHost, stream_.get()),
      "cudaMemcpyAsync(counter)");
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemsetAsync(nonfinite_.get(), 0, sizeof(unsigned long long), stream_.get()),
      "cudaMemsetAsync(counter)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize(step)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(h2d_.get()), "cudaStreamSynchronize(h2d)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(d2h_.get()), "cudaStreamSynchronize(d2h)");
  last_nonfinite_ = static_cast<int64_t>(*nonfinite_host_.as<unsigned long long>());
  shared_->counters->nonfinite_gradient_elements += last_nonfinite_;
  return pages_->FinishStep();
}

absl::Status CudaGroup::Step(absl::Span<const TensorGradient> grads, const StepArgs& args) {
  // Everything is validated before anything changes (all or nothing).
  const absl::StatusOr<float> lr =
      CheckStep(spec_, grads, args, [this](int t) { return steps_[t]; },
                Placement::kHostOrDevice, seen_scratch_);
  if (!lr.ok()) return lr.status();
  bool any_host = false;
  for (const TensorGradient& g : grads) any_host |= g.grad.memory == MemoryKind::kHost;
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(shared_->device), "cudaSetDevice");
  OPTD_CUDA_RETURN_IF_NOT_OK(UpdatePlacement());
  if (any_host) OPTD_CUDA_RETURN_IF_NOT_OK(staging_.Allocate());
  std::vector<Unit> units;
  for (const TensorGradient& g : grads)
    AddUnits(g.tensor, 0, g.grad, static_cast<int32_t>(steps_[g.tensor] + 1), &units);
  OPTD_CUDA_RETURN_IF_NOT_OK(batcher_.Reserve(2 * units.size() + 1, grads.size()));
  const Hyper hyper = HyperFor(*lr);
  if (clipping() && !units.empty()) {
    OPTD_CUDA_RETURN_IF_NOT_OK(Run(units, LaunchPass::kSumSquares, hyper));
    ClipJob* jobs = batcher_.clip_jobs();
    for (size_t i = 0; i < grads.size(); ++i) {
      const int t = grads[i].tensor;
      ClipJob& j = jobs[i];
      j.partials = clip_.partials(t, 0);
      j.num_blocks = clip_.num_blocks(t);
      j.gnorm_vec = clip_.gnorm_vec(t);
      j.scale = clip_.scale(t);
      j.step = static_cast<int32_t>(steps_[t] + 1);
      j.percentile = spec_.options.percentile_clipping;
    }
    OPTD_CUDA_RETURN_IF_NOT_OK(
        batcher_.LaunchClip(static_cast<int>(grads.size()), stream_.get()));
  }
  OPTD_CUDA_RETURN_IF_NOT_OK(Run(units, LaunchPass::kUpdate, hyper));
  OPTD_CUDA_RETURN_IF_NOT_OK(Finish());
  for (const TensorGradient& g : grads) ++steps_[g.tensor];
  return absl::OkStatus();
}

absl::Status CudaGroup::ApplyRange(const RangeGradient& range, int64_t step,
                                   const StepArgs& args) {
  const absl::StatusOr<float> lr =
      CheckApplyRange(spec_, range, step, args, Placement::kHostOrDevice);
  if (!lr.ok()) return lr.status();
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(shared_->device), "cudaSetDevice");
  OPTD_CUDA_RETURN_IF_NOT_OK(UpdatePlacement());
  if (range.grad.memory == MemoryKind::kHost) OPTD_CUDA_RETURN_IF_NOT_OK(staging_.Allocate());
  std::vector<Unit> units;
  AddUnits(range.tensor, range.offset, range.grad, static_cast<int32_t>(step), &units);
  OPTD_CUDA_RETURN_IF_NOT_OK(batcher_.Reserve(2 * units.size() + 1, 1));
  OPTD_CUDA_RETURN_IF_NOT_OK(Run(units, LaunchPass::kUpdate, HyperFor(*lr)));
  return Finish();
}

int64_t CudaGroup::GetStep(int tensor) const {
  if (tensor < 0 || tensor >= num_tensors()) return -1;
  return steps_[tensor];
}

absl::Status CudaGroup::SetStep(int tensor, int64_t step) {
  OPTD_CUDA_RETURN_IF_NOT_OK(CheckSetStep(spec_, tensor, step));
  steps_[tensor] = step;
  return absl::OkStatus();
}

absl::Status CudaGroup::SetOptions(const AdamWOptions& options) {
  OPTD_CUDA_RETURN_IF_NOT_OK(
      CheckSetOptions(spec_, options, [this](int t) { return steps_[t]; }));
  bool layout_changes = false;
  const bool clip_changes = (options.percentile_clipping < 100) != clipping();
  for (int t = 0; t < num_tensors(); ++t)
    layout_changes |= UsesEightBitStates(numel_[t], options) !=
                      UsesEightBitStates(numel_[t], spec_.options);
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(shared_->device), "cudaSetDevice");
  if (layout_changes) {
    if (pages_->paging())
      return absl::FailedPreconditionError(
          "changing min_8bit_size of a group whose states are paged is not supported");
    // Keep the states of tensors whose layout stays; the others restart from zero.
    std::vector<std::optional<TensorState>> kept(num_tensors());
    for (int t = 0; t < num_tensors(); ++t) {
      if (UsesEightBitStates(numel_[t], options) != UsesEightBitStates(numel_[t], spec_.options))
        continue;
      absl::StatusOr<TensorState> st = ExportState(t);
      if (!st.ok()) return st.status();
      kept[t] = std::move(*st);
    }
    OPTD_CUDA_RETURN_IF_NOT_OK(BuildPages(options));
    spec_.options = options;
    for (int t = 0; t < num_tensors(); ++t)
      if (kept[t].has_value()) {
        if (kept[t]->gnorm_vec.size() != static_cast<size_t>(kGnormHistory))
          kept[t]->gnorm_vec.assign(kGnormHistory, 0.0f);
        OPTD_CUDA_RETURN_IF_NOT_OK(CopyState(t, 0, numel_[t], &*kept[t], /*to_device=*/true));
      }
    OPTD_CUDA_RETURN_IF_NOT_OK(
        batcher_.Reserve(static_cast<size_t>(pages_->num_pages()) + 16, 1));
  }
  if (clip_changes) {
    if (options.percentile_clipping < 100) OPTD_CUDA_RETURN_IF_NOT_OK(clip_.EnsurePartials());
    OPTD_CUDA_RETURN_IF_NOT_OK(clip_.ClearHistory(stream_.get()));
    OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
  }
  spec_.options = options;
  return absl::OkStatus();
}

}  // namespace optd::core::internal::cuda
