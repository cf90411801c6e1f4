// The small group every harness validates against: a CPU engine with one thread and a group of
// three tensors chosen to reach the interesting paths (an fp32 tensor past min_8bit_size with an
// odd tail, so 8-bit states and a partial last block; a bf16 matrix; a 5-element fp16 vector).
//
// Thread safety: Get() is thread-safe (a function-local static); the group is not (see Group).
#pragma once

#include <memory>

#include "optd/core/engine.h"
#include "optd/v1/optd.pb.h"
#include "server/group.h"
#include "server/metrics.h"

namespace optd::fuzz {

class FixedGroup {
 public:
  static FixedGroup& Get();
  // The CreateGroupRequest the group is made from (also a seed input).
  static v1::CreateGroupRequest Request();

  core::Engine& engine() { return *engine_; }
  server::Group& group() { return *group_; }

 private:
  FixedGroup();
  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<server::Metrics> metrics_;
  std::unique_ptr<server::Group> group_;
};

}  // namespace optd::fuzz
