// Reads NumPy .npy files (version 1/2, little-endian, C order) of the golden reference data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace optd::testing {

struct NpyArray {
  std::string descr;            // e.g. "<f4", "<f2", "|u1"
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;    // raw little-endian elements
  int64_t numel() const;
};

absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

}  // namespace optd::testing
