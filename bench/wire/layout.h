// Tensor layouts of the wire benchmark and the bf16 data that fills them.
// Thread safety: plain values and free functions; no shared state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace optd::bench {

struct LayoutTensor {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

struct Layout {
  std::string name;
  std::vector<LayoutTensor> tensors;  // all bf16
  int64_t numel() const;
  int64_t bytes() const { return numel() * 2; }
};

// "default": 16 bf16 tensors of 8 Mi elements (256 MiB), small enough for a 2-core machine.
// "tinyllama": TinyLlama-1.1B (hidden 2048, intermediate 5632, 22 layers, 4 KV heads of 64,
// vocab 32000, untied embeddings): 201 bf16 tensors, 1,100,048,384 parameters.
// "tiny": the same 201-tensor structure divided by 16 per dimension (a smoke test).
[[nodiscard]] absl::StatusOr<Layout> MakeLayout(const std::string& name);

// Fills `n` bf16 values (raw bits) with pseudo-random finite numbers in [-scale, scale)
// (xorshift; `seed` picks the sequence). Writing every byte also faults the pages in, so the
// buffer is resident before anything is timed.
void FillBf16(uint16_t* data, int64_t n, float scale, uint64_t seed);

}  // namespace optd::bench
