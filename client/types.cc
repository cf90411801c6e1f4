#include "optd/client/types.h"

namespace optd::client {

int DTypeSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

int StateElementSize(StateElementType type) {
  switch (type) {
    case StateElementType::kUint8: return 1;
    case StateElementType::kFloat32: return 4;
    case StateElementType::kInt64: return 8;
  }
  return 1;
}

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace optd::client
