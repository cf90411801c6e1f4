#include "client/internal/convert.h"

namespace optd::client::internal {

void ToProto(const Hyperparameters& in, v1::Hyperparameters* out) {
  if (in.lr) out->set_lr(*in.lr);
  if (in.beta1) out->set_beta1(*in.beta1);
  if (in.beta2) out->set_beta2(*in.beta2);
  if (in.eps) out->set_eps(*in.eps);
  if (in.weight_decay) out->set_weight_decay(*in.weight_decay);
  if (in.amsgrad) out->set_amsgrad(*in.amsgrad);
  if (in.optim_bits) out->set_optim_bits(*in.optim_bits);
  if (in.min_8bit_size) out->set_min_8bit_size(*in.min_8bit_size);
  if (in.percentile_clipping) out->set_percentile_clipping(*in.percentile_clipping);
  if (in.block_wise) out->set_block_wise(*in.block_wise);
}

void ToProto(const TensorSpec& in, v1::TensorInfo* out) {
  out->set_name(in.name);
  out->set_dtype(static_cast<v1::DType>(in.dtype));
  for (int64_t d : in.shape) out->add_shape(d);
}

GroupInfo FromProto(const v1::GroupInfo& in) {
  GroupInfo out;
  out.group = in.group();
  for (const v1::TensorInfo& t : in.tensors()) {
    out.tensors.push_back({t.name(), static_cast<DType>(t.dtype()),
                           std::vector<int64_t>(t.shape().begin(), t.shape().end())});
  }
  const v1::Hyperparameters& h = in.hyperparameters();
  out.hyperparameters = {h.lr(),         h.beta1(),         h.beta2(),
                         h.eps(),        h.weight_decay(),  h.amsgrad(),
                         h.optim_bits(), h.min_8bit_size(), h.percentile_clipping(),
                         h.block_wise()};
  out.num_workers = in.num_workers();
  out.mode = in.mode() == v1::ASYNC ? SyncMode::kAsync : SyncMode::kSync;  // unspecified = sync
  out.sync_timeout_ms = in.sync_timeout_ms();
  out.max_staleness = in.max_staleness();
  out.version = in.version();
  out.weight_bytes = in.weight_bytes();
  out.state_bytes = in.state_bytes();
  out.weights_initialized = in.weights_initialized();
  out.worker_steps.assign(in.worker_steps().begin(), in.worker_steps().end());
  return out;
}

SaveCheckpointResult FromProto(const v1::SaveCheckpointResponse& in) {
  return {in.path(), in.bytes(), std::vector<std::string>(in.groups().begin(), in.groups().end())};
}

RestoreCheckpointResult FromProto(const v1::RestoreCheckpointResponse& in) {
  RestoreCheckpointResult out;
  for (const v1::GroupInfo& g : in.groups()) out.groups.push_back(FromProto(g));
  return out;
}

}  // namespace optd::client::internal
