// CRC-32C (Castagnoli), the checksum of checkpoint files. Written here rather than taken from a
// library so the server has no extra dependency; uses the SSE4.2 crc32 instruction when the CPU
// has it (several GB/s, so checksumming never dominates writing a checkpoint) and a table
// otherwise. Both give the same values.
#pragma once

#include <cstddef>
#include <cstdint>

namespace optd::server::checkpoint_internal {

// Continues a CRC-32C: pass 0 for the first piece, then the previous result. The value of the
// whole is independent of how the data is split. Thread-safe (no state).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);

inline uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }

// The table-driven version, exposed so tests can check it against the hardware one.
uint32_t Crc32cExtendPortable(uint32_t crc, const void* data, size_t n);

}  // namespace optd::server::checkpoint_internal
