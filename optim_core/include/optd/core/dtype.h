// Element types of parameters and gradients.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace optd::core {

enum class DType : uint8_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Bytes per element: 4 for fp32, 2 for fp16 and bf16.
constexpr size_t DTypeSize(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// "float32", "float16", "bfloat16".
std::string_view DTypeName(DType t);

// Accepts the names above and the torch spellings ("torch.float32", "fp32", "half", "bf16", ...).
// InvalidArgument naming the unknown value otherwise.
absl::StatusOr<DType> ParseDType(std::string_view name);

}  // namespace optd::core
