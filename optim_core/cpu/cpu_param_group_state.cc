// CpuParamGroup: step counters and the export/import of states in the reference's layout.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "cpu/cpu_param_group.h"
#include "internal/request_checks.h"
#include "optd/core/state_layout.h"

namespace optd::core::cpu {

int64_t CpuParamGroup::GetStep(int tensor) const {
  if (tensor < 0 || tensor >= num_tensors()) return -1;
  return tensors_[tensor].step;
}

absl::Status CpuParamGroup::SetStep(int tensor, int64_t step) {
  if (absl::Status s = internal::CheckSetStep(spec_, tensor, step); !s.ok()) return s;
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
  if (absl::Status s = internal::CheckImportState(spec_, tensor, state); !s.ok()) return s;
  return ImportStateRange(tensor, 0, state);
}

absl::StatusOr<TensorState> CpuParamGroup::ExportStateRange(int tensor, int64_t offset,
                                                            int64_t count) const {
  if (absl::Status s = internal::CheckExportStateRange(spec_, tensor, offset, count); !s.ok()) {
    return s;
  }
  const Tensor& t = tensors_[tensor];
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
  if (absl::Status s = internal::CheckImportStateRange(spec_, tensor, offset, state); !s.ok()) {
    return s;
  }
  Tensor& t = tensors_[tensor];
  const int64_t count = static_cast<int64_t>(state.eight_bit ? state.state1.size()
                                                             : state.state1_f32.size());
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
