// Non-owning views of flat, contiguous tensors.
#pragma once

#include <cstdint>

#include "optd/core/dtype.h"

namespace optd::core {

// Where a view's memory lives. The CPU engine accepts only kHost; the CUDA engine accepts both
// (kHost memory is copied to the device by the engine, pinned or not).
enum class MemoryKind : uint8_t { kHost = 0, kDevice = 1 };

// A read-only view of `numel` elements of `dtype` at `data`. The caller owns the memory and keeps
// it alive for the duration of the call that receives the view.
struct ConstTensorView {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t numel = 0;
  MemoryKind memory = MemoryKind::kHost;
};

// A writable view; same ownership rule as ConstTensorView.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t numel = 0;
  MemoryKind memory = MemoryKind::kHost;

  ConstTensorView AsConst() const { return {data, dtype, numel, memory}; }
};

}  // namespace optd::core
