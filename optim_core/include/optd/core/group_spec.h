// What a parameter group is made of: named tensors and one set of hyperparameters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "optd/core/dtype.h"
#include "optd/core/options.h"

namespace optd::core {

struct TensorSpec {
  std::string name;             // unique within the group, non-empty
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;   // each dim >= 0; an empty shape is a scalar (numel 1)

  // Product of the dims (64-bit: tensors past 2^31 elements are allowed).
  int64_t numel() const;
};

struct GroupSpec {
  std::vector<TensorSpec> tensors;
  AdamWOptions options;
};

// OK, or InvalidArgument naming the field: options (see ValidateOptions), an empty or duplicate
// tensor name ("tensors[3].name ..."), a negative dim, or an element count that overflows int64.
[[nodiscard]] absl::Status ValidateGroupSpec(const GroupSpec& spec);

}  // namespace optd::core
