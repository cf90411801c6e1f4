#include "server/group_snapshot.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace optd::server {

absl::StatusOr<std::unique_ptr<GroupSnapshot>> GroupSnapshot::Copy(const core::ParamGroup& group) {
  auto snap = std::unique_ptr<GroupSnapshot>(new GroupSnapshot());
  snap->spec_ = group.spec();
  for (int t = 0; t < group.num_tensors(); ++t) {
    const core::TensorSpec& ts = snap->spec_.tensors[static_cast<size_t>(t)];
    WireBuffer w(static_cast<size_t>(ts.numel()) * core::DTypeSize(ts.dtype));
    core::TensorView view{w.data(), ts.dtype, ts.numel(), core::MemoryKind::kHost};
    if (absl::Status s = group.ReadParam(t, 0, view); !s.ok()) return s;
    snap->weights_.push_back(std::move(w));
    auto state = group.ExportState(t);
    if (!state.ok()) return state.status();
    snap->states_.push_back(*std::move(state));
  }
  return snap;
}

absl::Status GroupSnapshot::ReadParam(int tensor, int64_t offset, core::TensorView dst) const {
  if (tensor < 0 || tensor >= num_tensors()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor, " out of range"));
  }
  const core::TensorSpec& ts = spec_.tensors[static_cast<size_t>(tensor)];
  if (dst.dtype != ts.dtype || offset < 0 || dst.numel < 0 || offset + dst.numel > ts.numel()) {
    return absl::InvalidArgumentError(absl::StrCat("ReadParam of tensor '", ts.name,
                                                   "': bad dtype or range"));
  }
  const size_t esize = core::DTypeSize(ts.dtype);
  std::memcpy(dst.data, weights_[static_cast<size_t>(tensor)].data() + offset * esize,
              static_cast<size_t>(dst.numel) * esize);
  return absl::OkStatus();
}

absl::StatusOr<core::TensorState> GroupSnapshot::ExportState(int tensor) const {
  if (tensor < 0 || tensor >= num_tensors()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor, " out of range"));
  }
  return states_[static_cast<size_t>(tensor)];
}

int64_t GroupSnapshot::GetStep(int tensor) const {
  return states_[static_cast<size_t>(tensor)].step;
}

core::TensorView GroupSnapshot::ParamStorage(int tensor) {
  const core::TensorSpec& ts = spec_.tensors[static_cast<size_t>(tensor)];
  return core::TensorView{weights_[static_cast<size_t>(tensor)].data(), ts.dtype, ts.numel(),
                          core::MemoryKind::kHost};
}

core::MemoryStats GroupSnapshot::GetMemoryStats() const {
  core::MemoryStats m;
  for (const WireBuffer& w : weights_) m.weight_bytes_host += static_cast<int64_t>(w.size());
  for (const core::TensorState& st : states_) {
    m.state_bytes_host += static_cast<int64_t>(
        st.state1.size() + st.state2.size() +
        sizeof(float) * (st.absmax1.size() + st.absmax2.size() + st.state1_f32.size() +
                         st.state2_f32.size() + st.gnorm_vec.size()));
  }
  return m;
}

}  // namespace optd::server
