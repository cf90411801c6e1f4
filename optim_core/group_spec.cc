#include "optd/core/group_spec.h"

#include <limits>
#include <string_view>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace optd::core {
namespace {

// Multiplies a by b (both >= 0) unless the product would pass int64; false then.
bool CheckedMul(int64_t a, int64_t b, int64_t* out) {
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

}  // namespace

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status ValidateGroupSpec(const GroupSpec& spec) {
  if (absl::Status s = ValidateOptions(spec.options); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("options: ", s.message()));
  }
  std::unordered_set<std::string_view> names;
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const TensorSpec& t = spec.tensors[i];
    if (t.name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("tensors[", i, "].name is empty"));
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensors[", i, "].name \"", t.name, "\" is a duplicate"));
    }
    if (t.dtype != DType::kFloat32 && t.dtype != DType::kFloat16 &&
        t.dtype != DType::kBFloat16) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensors[", i, "].dtype has unknown value ", static_cast<int>(t.dtype)));
    }
    int64_t n = 1;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] < 0) {
        return absl::InvalidArgumentError(absl::StrCat("tensors[", i, "].shape[", d,
                                                       "] is negative: ", t.shape[d]));
      }
      if (!CheckedMul(n, t.shape[d], &n)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensors[", i, "].shape: element count overflows int64 (\"", t.name, "\")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace optd::core
