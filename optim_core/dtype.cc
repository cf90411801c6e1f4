#include "optd/core/dtype.h"

#include <cctype>
#include <string>

#include "absl/strings/str_cat.h"

namespace optd::core {

std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
  }
  return "unknown";
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  std::string s;
  s.reserve(name.size());
  for (char c : name) s.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  // Accept torch's spelling ("torch.float16") as well as the bare name.
  std::string_view bare = s;
  if (bare.substr(0, 6) == "torch.") bare.remove_prefix(6);
  if (bare == "float32" || bare == "fp32" || bare == "float" || bare == "f32") {
    return DType::kFloat32;
  }
  if (bare == "float16" || bare == "fp16" || bare == "half" || bare == "f16") {
    return DType::kFloat16;
  }
  if (bare == "bfloat16" || bare == "bf16") return DType::kBFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype: unknown element type \"", std::string(name),
                   "\" (expected float32, float16 or bfloat16)"));
}

}  // namespace optd::core
