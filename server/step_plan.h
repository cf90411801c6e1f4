// What a Step stream's begin asked for, validated.
#pragma once

#include <cstdint>

#include "optd/core/engine.h"
#include "optd/v1/optd.pb.h"

namespace optd::server {

struct StepPlan {
  int64_t step = 0;
  int worker = 0;
  core::StepArgs args;
  v1::WeightsReturn weights = v1::UPDATED;
  int streams = 1;
  int stream_index = 0;
  int64_t chunk_bytes = 0;  // payload per weights message the server sends
};

}  // namespace optd::server
