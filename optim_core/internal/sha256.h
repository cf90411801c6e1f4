// SHA-256 (FIPS 180-4), for checking constant tables against published digests in tests.
// Not for security purposes; no streaming interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace optd::core::internal {

// Lowercase hex digest of `size` bytes at `data`.
std::string Sha256Hex(const void* data, size_t size);

}  // namespace optd::core::internal
