#include "bench/wire/layout.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace optd::bench {

int64_t LayoutTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t Layout::numel() const {
  int64_t n = 0;
  for (const LayoutTensor& t : tensors) n += t.numel();
  return n;
}

namespace {

// The shapes of bench/torch/trainer_bench.py's decoder, in its parameter order, divided by
// `scale` per dimension.
Layout TinyLlama(const std::string& name, int64_t scale) {
  const int64_t hidden = 2048 / scale, kv = 4 * 64 / scale, inter = 5632 / scale,
                vocab = 32000 / scale;
  Layout l{name, {}};
  l.tensors.push_back({"embed", {vocab, hidden}});
  for (int i = 0; i < 22; ++i) {
    const std::string p = absl::StrCat("layers.", i, ".");
    l.tensors.push_back({p + "attn_norm", {hidden}});
    l.tensors.push_back({p + "q", {hidden, hidden}});
    l.tensors.push_back({p + "k", {kv, hidden}});
    l.tensors.push_back({p + "v", {kv, hidden}});
    l.tensors.push_back({p + "o", {hidden, hidden}});
    l.tensors.push_back({p + "mlp_norm", {hidden}});
    l.tensors.push_back({p + "gate", {inter, hidden}});
    l.tensors.push_back({p + "up", {inter, hidden}});
    l.tensors.push_back({p + "down", {hidden, inter}});
  }
  l.tensors.push_back({"norm", {hidden}});
  l.tensors.push_back({"lm_head", {vocab, hidden}});
  return l;
}

}  // namespace

absl::StatusOr<Layout> MakeLayout(const std::string& name) {
  if (name == "tinyllama") return TinyLlama(name, 1);
  if (name == "tiny") return TinyLlama(name, 16);
  if (name == "default") {
    Layout l{name, {}};
    for (int i = 0; i < 16; ++i) l.tensors.push_back({absl::StrCat("t", i), {8 << 20}});
    return l;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("layout: unknown layout '", name, "' (default, tinyllama or tiny)"));
}

void FillBf16(uint16_t* data, int64_t n, float scale, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    // 24 random bits -> [-1, 1) -> [-scale, scale); bf16 keeps the top 16 bits of the float.
    const float f = (static_cast<float>(x >> 40) / 8388608.0f - 1.0f) * scale;
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    data[i] = static_cast<uint16_t>(bits >> 16);
  }
}

}  // namespace optd::bench
