// A reader of NumPy .npy files: little-endian, C order; float32, float16 and uint8 elements.
// Enough for the golden reference data (tests/data/golden), nothing more.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace optd::tools {

struct NpyArray {
  std::string descr;           // "<f4", "<f2" or "|u1"
  std::vector<int64_t> shape;  // empty for a scalar
  std::vector<uint8_t> bytes;  // the raw elements, numel * element size

  int64_t numel() const;
  int element_size() const;  // 4, 2 or 1
};

// NotFound when the file is missing; InvalidArgument naming the file and the field for a
// malformed or unsupported header (big-endian, Fortran order, other dtypes) or a short body.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// Parses the bytes of a whole .npy file (what ReadNpy does after reading the file).
absl::StatusOr<NpyArray> ParseNpy(const std::string& contents, const std::string& name);

// The elements widened to fp32 (float32 and float16 arrays). InvalidArgument otherwise.
absl::StatusOr<std::vector<float>> NpyToFloat(const NpyArray& a, const std::string& name);
// The elements of a uint8 array. InvalidArgument otherwise.
absl::StatusOr<std::vector<uint8_t>> NpyToUint8(const NpyArray& a, const std::string& name);

}  // namespace optd::tools
