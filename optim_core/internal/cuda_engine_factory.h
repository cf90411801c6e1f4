// The hook between the engine factory (engine.cc) and the CUDA engine (cuda/), which is
// compiled only when the build has CUDA (OPTD_WITH_CUDA).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "optd/core/engine.h"

namespace optd::core::internal {

// Defined in cuda/. Unavailable when no usable device is present (the message says why).
absl::StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(const EngineOptions& options);

}  // namespace optd::core::internal
