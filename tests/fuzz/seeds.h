// Seed inputs for the harnesses of fuzz_targets.h, built from the fixed group: valid requests,
// a complete step, a real checkpoint file. The fuzzers start from them (make_fuzz_seeds writes
// them to a folder) and the replay test runs them through every harness.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace optd::fuzz {

std::vector<std::string> RequestValidationSeeds();
std::vector<std::string> ChunkAssemblySeeds();
// Writes a checkpoint of the fixed group under `dir` and returns its bytes (and a few variants).
absl::StatusOr<std::vector<std::string>> CheckpointLoadSeeds(const std::string& dir);

}  // namespace optd::fuzz
