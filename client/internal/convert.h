// Conversion between the client's plain structs (optd/client/types.h) and the wire's
// (optd.v1). The enums share their numbering with the wire, so those are casts.
#pragma once

#include "optd/client/types.h"
#include "optd/v1/optd.pb.h"

namespace optd::client::internal {

// Sets in `out` the fields set in `in`.
void ToProto(const Hyperparameters& in, v1::Hyperparameters* out);
void ToProto(const TensorSpec& in, v1::TensorInfo* out);

GroupInfo FromProto(const v1::GroupInfo& in);
SaveCheckpointResult FromProto(const v1::SaveCheckpointResponse& in);
RestoreCheckpointResult FromProto(const v1::RestoreCheckpointResponse& in);

}  // namespace optd::client::internal
