// Golden reference cases (tests/data/golden format, see its README): the manifest's
// hyperparameters and the .npy arrays of each step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "optd/core/dtype.h"
#include "optd/core/options.h"

namespace optd::tools {

struct GoldenCase {
  std::string name;
  std::string dir;
  core::DType dtype = core::DType::kFloat32;
  std::vector<int64_t> shape;
  int steps = 0;
  core::AdamWOptions options;
};

// `path` is a case folder (its parent holds manifest.json) or a folder holding manifest.json,
// which expands to all its cases. InvalidArgument/NotFound naming the file and field.
absl::StatusOr<std::vector<GoldenCase>> LoadCases(const std::string& path);

// Everything of one case: the reference's parameters, gradients and states per step (index k
// = after step k; index 0 = the initial parameter and the initial zero state).
struct CaseData {
  bool eight_bit = true;
  bool clipping = false;
  std::vector<std::vector<float>> param;        // [0..T], widened
  std::vector<std::vector<uint16_t>> param16;   // [0..T], fp16/bf16 bits (16-bit cases)
  std::vector<std::vector<float>> grad;         // [1..T] at index k, widened
  std::vector<std::vector<uint16_t>> grad16;
  std::vector<std::vector<uint8_t>> state1, state2;          // 8-bit
  std::vector<std::vector<float>> absmax1, absmax2;
  std::vector<std::vector<float>> state1_f32, state2_f32;    // 32-bit path
  std::vector<std::vector<float>> gnorm_vec;
};

// Loads every array of case `c`. NotFound/InvalidArgument naming the file.
absl::StatusOr<CaseData> LoadCaseData(const GoldenCase& c);

}  // namespace optd::tools
