#include "cuda/cuda_group.h"

#include <algorithm>
#include <cstring>
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
namespace {

constexpr int64_t kStagingBytes = int64_t{32} << 20;  // per buffer; two buffers
constexpr int64_t kMaxPageBytes = int64_t{64} << 20;
constexpr int64_t kPageBytesPerBlock = 2 * kBlockSize + 2 * 4;  // two codes each + two scales


}  // namespace

EngineShared::~EngineShared() {
  if (qmaps != nullptr) {
    cudaSetDevice(device);
    cudaFree(qmaps);
  }
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
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                            "cudaStreamCreate");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&h2d_, cudaStreamNonBlocking),
                            "cudaStreamCreate");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&d2h_, cudaStreamNonBlocking),
                            "cudaStreamCreate");
  const int n = num_tensors();
  numel_.resize(n);
  steps_.assign(n, 0);
  params_.assign(n, nullptr);
  for (int t = 0; t < n; ++t) {
    numel_[t] = spec_.tensors[t].numel();
    const int64_t bytes = numel_[t] * static_cast<int64_t>(DTypeSize(spec_.tensors[t].dtype));
    if (bytes == 0) continue;
    const cudaError_t err = cudaMalloc(&params_[t], bytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat(
          "out of device memory allocating ", bytes, " bytes for tensor ", spec_.tensors[t].name));
    }
    OPTD_CUDA_RETURN_IF_ERROR(err, "cudaMalloc(param)");
    OPTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(params_[t], 0, bytes, stream_), "cudaMemsetAsync");
    weight_bytes_ += bytes;
  }
  shared_->counters->weight_bytes_device += weight_bytes_;
  const size_t clip_floats = static_cast<size_t>(n) * (kGnormHistory + 2);
  if (n > 0) {
    OPTD_CUDA_RETURN_IF_ERROR(cudaMalloc(&clip_, clip_floats * sizeof(float)), "cudaMalloc(clip)");
    OPTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(clip_, 0, clip_floats * sizeof(float), stream_),
                              "cudaMemsetAsync");
  }
  OPTD_CUDA_RETURN_IF_ERROR(cudaMalloc(&nonfinite_, sizeof(*nonfinite_)), "cudaMalloc(counter)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(nonfinite_, 0, sizeof(*nonfinite_), stream_),
                            "cudaMemsetAsync(counter)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaMallocHost(&nonfinite_host_, sizeof(*nonfinite_host_)),
                            "cudaMallocHost(counter)");
  *nonfinite_host_ = 0;
  block_offset_.assign(n + 1, 0);
  for (int t = 0; t < n; ++t) block_offset_[t + 1] = block_offset_[t] + CeilDiv(numel_[t], kBlockSize);
  if (clipping()) OPTD_CUDA_RETURN_IF_NOT_OK(EnsurePartials());
  OPTD_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&staging_ready_, cudaEventDisableTiming),
                            "cudaEventCreate");
  for (cudaEvent_t& e : staging_free_)
    OPTD_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
                              "cudaEventCreate");

  // Budget: resident when the states fit what the engine has left, else paged in that space.
  int64_t total = 0;
  for (int t = 0; t < n; ++t)
    total += LayoutOf(numel_[t], UsesEightBitStates(numel_[t], spec_.options)).bytes;
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    const int64_t left = std::max<int64_t>(0, shared_->budget_bytes - shared_->reserved_bytes);
    if (total <= left) {
      page_budget_ = -1;
      reserved_ = total;
    } else {
      const int64_t target = std::clamp<int64_t>(left / 8, kPageBytesPerBlock, kMaxPageBytes);
      page_elems_ = std::max<int64_t>(1, target / kPageBytesPerBlock) * kBlockSize;
      page_budget_ = left;
      reserved_ = left;
    }
    shared_->reserved_bytes += reserved_;
  }
  OPTD_CUDA_RETURN_IF_NOT_OK(BuildPages(spec_.options));
  OPTD_CUDA_RETURN_IF_NOT_OK(EnsureCapacity(static_cast<size_t>(pages_->num_pages()) + 16,
                                      static_cast<size_t>(n)));
  return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize(create)");
}

absl::Status CudaGroup::BuildPages(const AdamWOptions& options) {
  pages_.reset();
  std::vector<PageSpec> specs;
  first_page_.assign(num_tensors() + 1, 0);
  for (int t = 0; t < num_tensors(); ++t) {
    first_page_[t] = static_cast<int>(specs.size());
    const bool eight = UsesEightBitStates(numel_[t], options);
    const int64_t step = (page_elems_ > 0 && eight) ? page_elems_ : std::max<int64_t>(numel_[t], 1);
    for (int64_t off = 0; off < numel_[t]; off += step)
      specs.push_back({t, off, std::min(step, numel_[t] - off), eight});
  }
  first_page_[num_tensors()] = static_cast<int>(specs.size());
  absl::StatusOr<std::unique_ptr<PageManager>> pm = PageManager::Create(
      std::move(specs), page_budget_, shared_->counters, stream_, h2d_, d2h_);
  if (!pm.ok()) return pm.status();
  pages_ = std::move(*pm);
  return absl::OkStatus();
}

CudaGroup::~CudaGroup() {
  cudaSetDevice(shared_->device);
  if (stream_) cudaStreamSynchronize(stream_);
  if (h2d_) cudaStreamSynchronize(h2d_);
  if (d2h_) cudaStreamSynchronize(d2h_);
  pages_.reset();
  for (void* p : params_)
    if (p) cudaFree(p);
  shared_->counters->weight_bytes_device -= weight_bytes_;
  if (clip_) cudaFree(clip_);
  if (partials_) cudaFree(partials_);
  if (nonfinite_) cudaFree(nonfinite_);
  if (nonfinite_host_) cudaFreeHost(nonfinite_host_);
  if (host_segments_) cudaFreeHost(host_segments_);
  if (device_segments_) cudaFree(device_segments_);
  if (host_jobs_) cudaFreeHost(host_jobs_);
  if (device_jobs_) cudaFree(device_jobs_);
  for (char* s : staging_)
    if (s) cudaFree(s);
  for (cudaEvent_t e : staging_free_)
    if (e) cudaEventDestroy(e);
  if (staging_ready_) cudaEventDestroy(staging_ready_);
  for (cudaStream_t s : {stream_, h2d_, d2h_})
    if (s) cudaStreamDestroy(s);
  std::lock_guard<std::mutex> lock(shared_->mu);
  shared_->reserved_bytes -= reserved_;
}

MemoryStats CudaGroup::GetMemoryStats() const {
  MemoryStats m;
  m.weight_bytes_device = weight_bytes_;
  m.state_bytes_device = pages_->device_bytes();
  m.state_bytes_host = pages_->host_bytes();
  m.paged_out_bytes = pages_->host_bytes();
  const int64_t n = num_tensors();
  m.buffer_bytes_device =
      (clip_ != nullptr ? n * (kGnormHistory + 2) * static_cast<int64_t>(sizeof(float)) : 0) +
      (partials_ != nullptr ? block_offset_.back() * static_cast<int64_t>(sizeof(float)) : 0) +
      static_cast<int64_t>(sizeof(*nonfinite_)) +
      static_cast<int64_t>(segment_capacity_ * sizeof(Segment) + job_capacity_ * sizeof(ClipJob));
  for (const char* s : staging_)
    if (s != nullptr) m.buffer_bytes_device += kStagingBytes;
  m.buffer_bytes_host =
      static_cast<int64_t>(sizeof(*nonfinite_host_) + segment_capacity_ * sizeof(Segment) +
                           job_capacity_ * sizeof(ClipJob));
  return m;
}

absl::Status CudaGroup::EnsureCapacity(size_t segments, size_t clip_jobs) {
  if (segments > segment_capacity_) {
    if (host_segments_) cudaFreeHost(host_segments_);
    if (device_segments_) cudaFree(device_segments_);
    host_segments_ = nullptr;
    device_segments_ = nullptr;
    segment_capacity_ = 0;
    OPTD_CUDA_RETURN_IF_ERROR(cudaMallocHost(&host_segments_, segments * sizeof(Segment)),
                              "cudaMallocHost(segments)");
    OPTD_CUDA_RETURN_IF_ERROR(cudaMalloc(&device_segments_, segments * sizeof(Segment)),
                              "cudaMalloc(segments)");
    segment_capacity_ = segments;
  }
  if (clip_jobs > job_capacity_) {
    if (host_jobs_) cudaFreeHost(host_jobs_);
    if (device_jobs_) cudaFree(device_jobs_);
    host_jobs_ = nullptr;
    device_jobs_ = nullptr;
    job_capacity_ = 0;
    OPTD_CUDA_RETURN_IF_ERROR(cudaMallocHost(&host_jobs_, clip_jobs * sizeof(ClipJob)),
                              "cudaMallocHost(jobs)");
    OPTD_CUDA_RETURN_IF_ERROR(cudaMalloc(&device_jobs_, clip_jobs * sizeof(ClipJob)),
                              "cudaMalloc(jobs)");
    job_capacity_ = clip_jobs;
  }
  return absl::OkStatus();
}

absl::Status CudaGroup::EnsurePartials() {
  if (partials_ != nullptr || block_offset_.back() == 0) return absl::OkStatus();
  const size_t bytes = static_cast<size_t>(block_offset_.back()) * sizeof(float);
  const cudaError_t err = cudaMalloc(&partials_, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return absl::ResourceExhaustedError("out of device memory for gradient norm partials");
  }
  return CudaStatus(err, "cudaMalloc(partials)");
}

absl::Status CudaGroup::EnsureStaging() {
  // Allocated on the first step with host gradients and kept: later steps never allocate.
  for (char*& s : staging_) {
    if (s != nullptr) continue;
    const cudaError_t err = cudaMalloc(&s, kStagingBytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return absl::ResourceExhaustedError("out of device memory for gradient staging");
    }
    OPTD_CUDA_RETURN_IF_ERROR(err, "cudaMalloc(staging)");
  }
  return absl::OkStatus();
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

void CudaGroup::AddUnits(int tensor, int64_t offset, ConstTensorView grad, int32_t step,
                         std::vector<Unit>* units) const {
  const int64_t gsize = static_cast<int64_t>(DTypeSize(grad.dtype));
  const int64_t end = offset + grad.numel;
  // Host gradients are cut to fit a staging buffer; device gradients only at page boundaries.
  const int64_t host_chunk = kStagingBytes / gsize / kBlockSize * kBlockSize;
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

absl::Status CudaGroup::Run(const std::vector<Unit>& units, Pass pass, const Hyper& hyper) {
  batch_.clear();
  int64_t blocks = 0;
  bool staged = false;
  for (const Unit& u : units) {
    const bool streamed = pass == Pass::kUpdate && !pages_->resident(u.page);
    const bool host = u.grad.memory == MemoryKind::kHost;
    const int64_t gbytes = u.count * static_cast<int64_t>(DTypeSize(u.grad.dtype));
    if (!batch_.empty() && (streamed || (host && staging_used_ + gbytes > kStagingBytes))) {
      OPTD_CUDA_RETURN_IF_NOT_OK(Flush(0, static_cast<int>(batch_.size()), pass, hyper, staged));
      batch_.clear();
      blocks = 0;
      staged = false;
    }
    Segment s;
    s.numel = u.count;
    s.first_block = blocks;
    s.step = u.step;
    s.param_dtype = static_cast<uint8_t>(spec_.tensors[u.tensor].dtype);
    s.grad_dtype = static_cast<uint8_t>(u.grad.dtype);
    if (partials_ != nullptr) s.partials = partials_ + block_offset_[u.tensor] + u.offset / kBlockSize;
    s.gnorm_scale = clipping() ? clip_ + static_cast<size_t>(num_tensors()) * (kGnormHistory + 1) +
                                     u.tensor
                               : nullptr;
    if (host) {
      if (!staged) {
        OPTD_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(h2d_, staging_free_[staging_buf_], 0),
                                  "cudaStreamWaitEvent");
        staging_used_ = 0;
        staged = true;
      }
      char* dst = staging_[staging_buf_] + staging_used_;
      OPTD_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(dst, u.grad.data, gbytes, cudaMemcpyHostToDevice, h2d_),
          "cudaMemcpyAsync(gradient)");
      staging_used_ += (gbytes + 255) / 256 * 256;
      s.grad = dst;
    } else {
      s.grad = u.grad.data;
    }
    s.grad_aligned = reinterpret_cast<uintptr_t>(s.grad) % (4 * DTypeSize(u.grad.dtype)) == 0;
    if (pass == Pass::kUpdate) {
      absl::StatusOr<char*> base = pages_->Acquire(u.page, stream_);
      if (!base.ok()) return base.status();
      const PageSpec& ps = pages_->page(u.page);
      const PageLayout& l = pages_->layout(u.page);
      const int64_t rel = u.offset - ps.offset;
      s.param = static_cast<char*>(params_[u.tensor]) +
                u.offset * static_cast<int64_t>(DTypeSize(spec_.tensors[u.tensor].dtype));
      s.eight_bit = ps.eight_bit;
      if (ps.eight_bit) {
        s.state1 = reinterpret_cast<uint8_t*>(*base + l.state1) + rel;
        s.state2 = reinterpret_cast<uint8_t*>(*base + l.state2) + rel;
        s.absmax1 = reinterpret_cast<float*>(*base + l.absmax1) + rel / kBlockSize;
        s.absmax2 = reinterpret_cast<float*>(*base + l.absmax2) + rel / kBlockSize;
      } else {
        s.m = reinterpret_cast<float*>(*base + l.state1) + rel;
        s.v = reinterpret_cast<float*>(*base + l.state2) + rel;
      }
    }
    batch_.push_back(s);
    blocks += CeilDiv(u.count, kBlockSize);
    if (streamed) {
      OPTD_CUDA_RETURN_IF_NOT_OK(Flush(0, static_cast<int>(batch_.size()), pass, hyper, staged));
      OPTD_CUDA_RETURN_IF_NOT_OK(pages_->Release(u.page, stream_));
      batch_.clear();
      blocks = 0;
      staged = false;
    }
  }
  if (!batch_.empty())
    OPTD_CUDA_RETURN_IF_NOT_OK(Flush(0, static_cast<int>(batch_.size()), pass, hyper, staged));
  batch_.clear();
  return absl::OkStatus();
}

absl::Status CudaGroup::Flush(int begin, int end, Pass pass, const Hyper& hyper, bool staged) {
  const size_t n = static_cast<size_t>(end - begin);
  if (segments_used_ + n > segment_capacity_)
    return absl::InternalError("launch descriptor buffer too small");  // sized before the step
  Segment* host = host_segments_ + segments_used_;
  Segment* dev = device_segments_ + segments_used_;
  std::memcpy(host, batch_.data() + begin, n * sizeof(Segment));
  segments_used_ += n;
  if (staged) {
    OPTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(staging_ready_, h2d_), "cudaEventRecord");
    OPTD_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream_, staging_ready_, 0),
                              "cudaStreamWaitEvent");
  }
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dev, host, n * sizeof(Segment), cudaMemcpyHostToDevice, stream_),
      "cudaMemcpyAsync(segments)");
  LaunchParams lp;
  lp.segments = dev;
  lp.host_segments = host;
  lp.num_segments = static_cast<int>(n);
  const Segment& last = batch_[end - 1];
  lp.total_blocks = last.first_block + CeilDiv(last.numel, kBlockSize);
  lp.qmap1 = shared_->qmaps;
  lp.qmap2 = shared_->qmaps + 256;
  lp.buckets1 = shared_->buckets;
  lp.buckets2 = shared_->buckets + kSignedBuckets;
  lp.sm_count = shared_->sm_count;
  lp.nonfinite = nonfinite_;
  lp.hyper = hyper;
  OPTD_CUDA_RETURN_IF_ERROR(pass == Pass::kUpdate ? LaunchAdamWUpdate(lp, stream_)
                                                  : LaunchGradSumSquares(lp, stream_),
                            pass == Pass::kUpdate ? "AdamWUpdateKernel" : "SumSquaresKernel");
  if (staged) {
    OPTD_CUDA_RETURN_IF_ERROR(cudaEventRecord(staging_free_[staging_buf_], stream_),
                              "cudaEventRecord");
    staging_buf_ ^= 1;
    staging_used_ = 0;
  }
  return absl::OkStatus();
}

absl::Status CudaGroup::Finish() {
  segments_used_ = 0;
  // The step's count of NaN/Inf gradient elements comes back with the step's synchronize.
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(nonfinite_host_, nonfinite_, sizeof(*nonfinite_),
                                            cudaMemcpyDeviceToHost, stream_),
                            "cudaMemcpyAsync(counter)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(nonfinite_, 0, sizeof(*nonfinite_), stream_),
                            "cudaMemsetAsync(counter)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "cudaStreamSynchronize(step)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(h2d_), "cudaStreamSynchronize(h2d)");
  OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(d2h_), "cudaStreamSynchronize(d2h)");
  last_nonfinite_ = static_cast<int64_t>(*nonfinite_host_);
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
  if (any_host) OPTD_CUDA_RETURN_IF_NOT_OK(EnsureStaging());
  std::vector<Unit> units;
  for (const TensorGradient& g : grads)
    AddUnits(g.tensor, 0, g.grad, static_cast<int32_t>(steps_[g.tensor] + 1), &units);
  OPTD_CUDA_RETURN_IF_NOT_OK(EnsureCapacity(2 * units.size() + 1, grads.size()));
  const Hyper hyper = HyperFor(*lr);
  if (clipping() && !units.empty()) {
    const size_t n = static_cast<size_t>(num_tensors());
    OPTD_CUDA_RETURN_IF_NOT_OK(Run(units, Pass::kSumSquares, hyper));
    for (size_t i = 0; i < grads.size(); ++i) {
      const int t = grads[i].tensor;
      ClipJob& j = host_jobs_[i];
      j.partials = partials_ + block_offset_[t];
      j.num_blocks = CeilDiv(numel_[t], kBlockSize);
      j.gnorm_vec = clip_ + static_cast<size_t>(t) * kGnormHistory;
      j.scale = clip_ + n * (kGnormHistory + 1) + t;
      j.step = static_cast<int32_t>(steps_[t] + 1);
      j.percentile = spec_.options.percentile_clipping;
    }
    OPTD_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_jobs_, host_jobs_,
                                              grads.size() * sizeof(ClipJob),
                                              cudaMemcpyHostToDevice, stream_),
                              "cudaMemcpyAsync(jobs)");
    OPTD_CUDA_RETURN_IF_ERROR(
        LaunchClipScale(device_jobs_, static_cast<int>(grads.size()), stream_), "ClipScaleKernel");
  }
  OPTD_CUDA_RETURN_IF_NOT_OK(Run(units, Pass::kUpdate, hyper));
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
  if (range.grad.memory == MemoryKind::kHost) OPTD_CUDA_RETURN_IF_NOT_OK(EnsureStaging());
  std::vector<Unit> units;
  AddUnits(range.tensor, range.offset, range.grad, static_cast<int32_t>(step), &units);
  OPTD_CUDA_RETURN_IF_NOT_OK(EnsureCapacity(2 * units.size() + 1, 1));
  OPTD_CUDA_RETURN_IF_NOT_OK(Run(units, Pass::kUpdate, HyperFor(*lr)));
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
      if (UsesEightBitStates(numel_[t], options) != UsesEightBitStates(numel_[t], spec_.options)) continue;
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
    OPTD_CUDA_RETURN_IF_NOT_OK(EnsureCapacity(static_cast<size_t>(pages_->num_pages()) + 16, 1));
  }
  if (clip_changes) {
    if (options.percentile_clipping < 100) OPTD_CUDA_RETURN_IF_NOT_OK(EnsurePartials());
    const size_t n = static_cast<size_t>(num_tensors());
    OPTD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(clip_, 0, n * kGnormHistory * sizeof(float), stream_),
                              "cudaMemsetAsync(gnorm_vec)");
    OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  spec_.options = options;
  return absl::OkStatus();
}

}  // namespace optd::core::internal::cuda
