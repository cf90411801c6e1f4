// The CUDA group's host<->device copies: weights in and out, and optimizer state export/import
// (whole tensors and block-aligned ranges) through the page manager.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda/cuda_group.h"
#include "cuda/cuda_status.h"
#include "internal/request_checks.h"
#include "optd/core/state_layout.h"
#include "optd/core/tensor_state.h"

namespace optd::core::internal::cuda {

absl::Status CudaGroup::WriteParam(int tensor, int64_t offset, ConstTensorView src) {
  OPTD_CUDA_RETURN_IF_NOT_OK(
      CheckParamCopy(spec_, "src", tensor, offset, src, Placement::kHostOrDevice));
  const TensorSpec& ts = spec_.tensors[tensor];
  if (src.numel == 0) return absl::OkStatus();
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(shared_->device), "cudaSetDevice");
  const int64_t es = static_cast<int64_t>(DTypeSize(ts.dtype));
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(params_[tensor].as<char>() + offset * es, src.data,
                      src.numel * es, cudaMemcpyDefault, stream_.get()),
      "cudaMemcpyAsync(WriteParam)");
  return CudaStatus(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize(WriteParam)");
}

absl::Status CudaGroup::ReadParam(int tensor, int64_t offset, TensorView dst) const {
  OPTD_CUDA_RETURN_IF_NOT_OK(
      CheckParamCopy(spec_, "dst", tensor, offset, dst.AsConst(), Placement::kHostOrDevice));
  const TensorSpec& ts = spec_.tensors[tensor];
  if (dst.numel == 0) return absl::OkStatus();
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(shared_->device), "cudaSetDevice");
  const int64_t es = static_cast<int64_t>(DTypeSize(ts.dtype));
  OPTD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst.data, params_[tensor].as<const char>() + offset * es,
                      dst.numel * es, cudaMemcpyDefault, stream_.get()),
      "cudaMemcpyAsync(ReadParam)");
  return CudaStatus(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize(ReadParam)");
}

TensorView CudaGroup::ParamStorage(int tensor) {
  if (tensor < 0 || tensor >= num_tensors()) return TensorView{};
  return {params_[tensor].get(), spec_.tensors[tensor].dtype, numel_[tensor], MemoryKind::kDevice};
}

absl::Status CudaGroup::CopyState(int tensor, int64_t offset, int64_t count, TensorState* st,
                                  bool to_device) const {
  auto* self = const_cast<CudaGroup*>(this);  // Write needs the mutable manager
  for (int p = first_page_[tensor]; p < first_page_[tensor + 1]; ++p) {
    const PageSpec& ps = pages_->page(p);
    const PageLayout& l = pages_->layout(p);
    const int64_t lo = std::max(offset, ps.offset);
    const int64_t hi = std::min(offset + count, ps.offset + ps.count);
    if (lo >= hi) continue;
    const int64_t rel = lo - ps.offset;    // in the page
    const int64_t at = lo - offset;        // in the state arrays
    const int64_t n = hi - lo;
    const int64_t nb = CeilDiv(n, kBlockSize);
    struct Piece { int64_t page_off; void* host; int64_t bytes; };
    std::vector<Piece> pieces;
    if (ps.eight_bit) {
      pieces = {{l.state1 + rel, st->state1.data() + at, n},
                {l.state2 + rel, st->state2.data() + at, n},
                {l.absmax1 + rel / kBlockSize * 4, st->absmax1.data() + at / kBlockSize, nb * 4},
                {l.absmax2 + rel / kBlockSize * 4, st->absmax2.data() + at / kBlockSize, nb * 4}};
    } else {
      pieces = {{l.state1 + rel * 4, st->state1_f32.data() + at, n * 4},
                {l.state2 + rel * 4, st->state2_f32.data() + at, n * 4}};
    }
    for (const Piece& pc : pieces) {
      OPTD_CUDA_RETURN_IF_NOT_OK(
          to_device ? self->pages_->Write(p, pc.page_off, pc.bytes, pc.host, stream_.get())
                    : pages_->Read(p, pc.page_off, pc.bytes, pc.host, stream_.get()));
    }
  }
  if (clipping()) {
    if (to_device) {
      OPTD_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(clip_.gnorm_vec(tensor),
                          st->gnorm_vec.data(), kGnormHistory * sizeof(float),
                          cudaMemcpyHostToDevice, stream_.get()),
          "cudaMemcpyAsync(gnorm_vec)");
    } else {
      st->gnorm_vec.resize(kGnormHistory);
      OPTD_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(st->gnorm_vec.data(), clip_.gnorm_vec(tensor),
                          kGnormHistory * sizeof(float), cudaMemcpyDeviceToHost, stream_.get()),
          "cudaMemcpyAsync(gnorm_vec)");
    }
    OPTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorState> CudaGroup::ExportStateRange(int tensor, int64_t offset,
                                                        int64_t count) const {
  OPTD_CUDA_RETURN_IF_NOT_OK(CheckExportStateRange(spec_, tensor, offset, count));
  const int64_t n = numel_[tensor];
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(shared_->device), "cudaSetDevice");
  TensorState st;
  st.step = steps_[tensor];
  st.eight_bit = pages_->num_pages() > 0 && first_page_[tensor] < first_page_[tensor + 1]
                     ? pages_->page(first_page_[tensor]).eight_bit
                     : UsesEightBitStates(n, spec_.options);
  if (st.eight_bit) {
    st.state1.resize(count);
    st.state2.resize(count);
    st.absmax1.resize(CeilDiv(count, kBlockSize));
    st.absmax2.resize(CeilDiv(count, kBlockSize));
  } else {
    st.state1_f32.resize(count);
    st.state2_f32.resize(count);
  }
  OPTD_CUDA_RETURN_IF_NOT_OK(CopyState(tensor, offset, count, &st, /*to_device=*/false));
  return st;
}

absl::StatusOr<TensorState> CudaGroup::ExportState(int tensor) const {
  OPTD_CUDA_RETURN_IF_NOT_OK(CheckTensorIndex("tensor", tensor, num_tensors()));
  return ExportStateRange(tensor, 0, numel_[tensor]);
}

absl::Status CudaGroup::ImportState(int tensor, const TensorState& state) {
  OPTD_CUDA_RETURN_IF_NOT_OK(CheckImportState(spec_, tensor, state));
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(shared_->device), "cudaSetDevice");
  TensorState copy = state;
  OPTD_CUDA_RETURN_IF_NOT_OK(CopyState(tensor, 0, numel_[tensor], &copy, /*to_device=*/true));
  steps_[tensor] = state.step;
  return absl::OkStatus();
}

absl::Status CudaGroup::ImportStateRange(int tensor, int64_t offset, const TensorState& state) {
  OPTD_CUDA_RETURN_IF_NOT_OK(CheckImportStateRange(spec_, tensor, offset, state));
  const int64_t count =
      static_cast<int64_t>(state.eight_bit ? state.state1.size() : state.state1_f32.size());
  OPTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(shared_->device), "cudaSetDevice");
  TensorState copy = state;
  OPTD_CUDA_RETURN_IF_NOT_OK(CopyState(tensor, offset, count, &copy, /*to_device=*/true));
  steps_[tensor] = state.step;
  return absl::OkStatus();
}

}  // namespace optd::core::internal::cuda
