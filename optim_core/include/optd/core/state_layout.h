// The shape of a tensor's optimizer states, defined once for the engines, the server and the
// tools: whether a tensor keeps 8-bit states, and how many blocks (absmax scales) it has.
#pragma once

#include <cstdint>

#include "optd/core/options.h"

namespace optd::core {

// ceil(a / b) for a >= 0 and b > 0, without the overflow of (a + b - 1) / b near INT64_MAX.
constexpr int64_t CeilDiv(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

// Blocks of kBlockSize in `numel` elements: the number of absmax scales of each 8-bit state.
constexpr int64_t NumBlocks(int64_t numel) { return CeilDiv(numel, kBlockSize); }

// Whether a tensor of `numel` elements keeps 8-bit blockwise states under `options`; otherwise
// it takes the 32-bit path (fp32 m and v), as the reference does below min_8bit_size.
constexpr bool UsesEightBitStates(int64_t numel, const AdamWOptions& options) {
  return numel >= options.min_8bit_size;
}

}  // namespace optd::core
