// Replays golden cases (tests/data/golden format) through an optd engine and measures how far
// it is from the reference, in the two modes of issue 2: teacher-forced and free-running.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"
#include "tools/golden_case.h"

namespace optd::tools {

struct Tolerances {
  double codes_identical = 0.999;  // fraction of 8-bit codes equal, per tensor and step
  int max_code_distance = 1;       // circular uint8 distance of any mismatch
  double absmax_rel = 1e-5;        // per block
  double param_fp32 = 2e-4;        // norm(p - ref) / norm(ref step), fp32 parameters
  double param_half = 5e-3;        // the same, fp16/bf16 parameters
  double fp32_state_rel = 1e-5;    // 32-bit path states (norm-relative) and gnorm_vec (per slot)
};
Tolerances DefaultTolerances();
// For the CUDA engine, which can use the reference's own intrinsics.
Tolerances TightTolerances();

enum class Mode { kTeacher, kFree };

struct CaseResult {
  std::string line;  // one line of metrics, "PASS" or "FAIL" included
  bool pass = false;
};

// Runs one case in one mode on `engine`. An error status means the case could not be run
// (missing file, engine error), which callers count as a failure.
absl::StatusOr<CaseResult> RunCase(core::Engine& engine, const GoldenCase& c, Mode mode,
                                   const Tolerances& tol);

}  // namespace optd::tools
