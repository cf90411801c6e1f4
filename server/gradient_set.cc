#include "server/gradient_set.h"

#include "absl/strings/str_cat.h"
#include "server/convert.h"
#include "server/group.h"

namespace optd::server {

void GradientSet::Reset() {
  for (Tensor& t : tensors_) {
    t.touched = false;
    t.in_place = nullptr;
    t.covered.Clear();
  }
}

absl::StatusOr<void*> GradientSet::Reserve(const Group& group, const CheckedChunk& c,
                                           int64_t step) {
  Tensor& t = tensors_[static_cast<size_t>(c.tensor)];
  const core::TensorSpec& spec = group.tensor(c.tensor);
  if (t.touched && t.dtype != c.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient.dtype ", DTypeStr(c.dtype), " of tensor '", spec.name,
        "' differs from its earlier chunks (", DTypeStr(t.dtype), ") in step ", step));
  }
  if (!t.covered.InsertDisjoint(c.offset, c.offset + c.n)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient.offset ", c.offset, ": elements [", c.offset, ", ", c.offset + c.n,
        ") of tensor '", spec.name, "' overlap a chunk already sent in step ", step));
  }
  const size_t esize = core::DTypeSize(c.dtype);
  const size_t size = static_cast<size_t>(spec.numel()) * esize;
  if (!t.touched) {
    t.touched = true;
    t.dtype = c.dtype;
    if (t.data.size() != size) t.data = WireBuffer(size, engine_);
  }
  return t.data.data() + static_cast<size_t>(c.offset) * esize;
}

absl::Status GradientSet::AttachInPlace(const Group& group, const CheckedChunk& c,
                                        const void* data, core::MemoryKind kind, int64_t step) {
  Tensor& t = tensors_[static_cast<size_t>(c.tensor)];
  if (t.touched) {
    return absl::InvalidArgumentError(absl::StrCat(
        "region_gradient.tensor '", group.tensor(c.tensor).name,
        "': the whole tensor was sent, and another range of it already in step ", step));
  }
  t.touched = true;
  t.dtype = c.dtype;
  t.in_place = data;
  t.in_place_kind = kind;
  t.covered.Clear();
  (void)t.covered.InsertDisjoint(0, c.n);
  return absl::OkStatus();
}

absl::Status GradientSet::CheckComplete(const Group& group, int64_t step) const {
  bool any = false;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    if (!t.touched) continue;
    any = true;
    const core::TensorSpec& spec = group.tensor(static_cast<int>(i));
    if (t.covered.covered() != spec.numel()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradient of tensor '", spec.name, "' is incomplete in step ", step, ": ",
          t.covered.covered(), " of ", spec.numel(),
          " elements arrived (missing ranges); nothing was applied"));
    }
  }
  if (!any) {
    return absl::InvalidArgumentError(
        absl::StrCat("step ", step, " of group '", group.name(), "' carried no gradient"));
  }
  return absl::OkStatus();
}

std::vector<int> GradientSet::Touched() const {
  std::vector<int> out;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i].touched) out.push_back(static_cast<int>(i));
  }
  return out;
}

std::vector<core::TensorGradient> GradientSet::Gradients(const Group& group) const {
  std::vector<core::TensorGradient> out;
  for (int t : Touched()) {
    const Tensor& g = tensors_[static_cast<size_t>(t)];
    if (g.in_place != nullptr) {
      out.push_back(core::TensorGradient{
          t, core::ConstTensorView{g.in_place, g.dtype, group.tensor(t).numel(),
                                   g.in_place_kind}});
      continue;
    }
    out.push_back(core::TensorGradient{
        t, core::ConstTensorView{g.data.data(), g.dtype, group.tensor(t).numel(),
                                 core::MemoryKind::kHost}});
  }
  return out;
}

int64_t GradientSet::bytes() const {
  int64_t total = 0;
  for (const Tensor& t : tensors_) total += static_cast<int64_t>(t.data.size());
  return total;
}

}  // namespace optd::server
