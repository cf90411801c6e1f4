#include "optd/core/tensor_state.h"

#include "absl/strings/str_cat.h"
#include "optd/core/options.h"
#include "optd/core/state_layout.h"

namespace optd::core {
namespace {

absl::Status CheckSize(const char* what, size_t have, int64_t want) {
  if (static_cast<int64_t>(have) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has ", have, " entries, expected ", want));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateTensorState(const TensorState& state, int64_t numel, bool clipping) {
  if (numel < 0) return absl::InvalidArgumentError(absl::StrCat("numel is negative: ", numel));
  if (state.step < 0) {
    return absl::InvalidArgumentError(absl::StrCat("step must be >= 0, got ", state.step));
  }
  const int64_t blocks = NumBlocks(numel);
  absl::Status s;
  if (state.eight_bit) {
    if (!(s = CheckSize("state1", state.state1.size(), numel)).ok()) return s;
    if (!(s = CheckSize("state2", state.state2.size(), numel)).ok()) return s;
    if (!(s = CheckSize("absmax1", state.absmax1.size(), blocks)).ok()) return s;
    if (!(s = CheckSize("absmax2", state.absmax2.size(), blocks)).ok()) return s;
    if (!(s = CheckSize("state1_f32", state.state1_f32.size(), 0)).ok()) return s;
    if (!(s = CheckSize("state2_f32", state.state2_f32.size(), 0)).ok()) return s;
  } else {
    if (!(s = CheckSize("state1_f32", state.state1_f32.size(), numel)).ok()) return s;
    if (!(s = CheckSize("state2_f32", state.state2_f32.size(), numel)).ok()) return s;
    if (!(s = CheckSize("state1", state.state1.size(), 0)).ok()) return s;
    if (!(s = CheckSize("state2", state.state2.size(), 0)).ok()) return s;
    if (!(s = CheckSize("absmax1", state.absmax1.size(), 0)).ok()) return s;
    if (!(s = CheckSize("absmax2", state.absmax2.size(), 0)).ok()) return s;
  }
  return CheckSize("gnorm_vec", state.gnorm_vec.size(), clipping ? kGnormHistory : 0);
}

}  // namespace optd::core
