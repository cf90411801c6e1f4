// One client over N optd servers: each tensor of a group lives on the server chosen by
// rendezvous hashing of "group/tensor"; each server holds a sub-group of the same name with
// its share of the tensors. Steps run on all shards in parallel. A failure names the shard:
// the status keeps the shard's code and reads "shard <address>: <server message>".
//
// Thread safety: thread-safe (each call fans out to per-shard threads it joins).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "optd/client/client.h"
#include "optd/client/types.h"

namespace optd::client {

class ShardedClient {
 public:
  static absl::StatusOr<std::unique_ptr<ShardedClient>> Create(
      const std::vector<std::string>& targets, const ClientOptions& options = {});

  const std::vector<std::string>& targets() const { return targets_; }
  size_t num_shards() const { return targets_.size(); }
  Client& shard(size_t i) { return *clients_[i]; }
  // The shard index holding `tensor` of `group`.
  size_t ShardOf(const std::string& group, const std::string& tensor) const;

  // Creates the sub-groups on the shards that hold at least one tensor.
  absl::Status CreateGroup(const std::string& group, const std::vector<TensorSpec>& tensors,
                           const GroupOptions& options = {});
  absl::Status UploadWeights(const std::string& group, absl::Span<const ConstBuffer> weights);
  // Runs the step on every shard that receives a gradient, in parallel. Returns one result per
  // shard (shards with no gradient keep a default StepResult with step = 0). Each shard's step
  // uses options.streams streams; step parts (options.part_count) are refused here.
  absl::StatusOr<std::vector<StepResult>> Step(const std::string& group, int64_t step,
                                               absl::Span<const ConstBuffer> gradients,
                                               absl::Span<const MutableBuffer> weights_out,
                                               const StepOptions& options = {});
  absl::Status PullWeights(const std::string& group, absl::Span<const MutableBuffer> out);
  absl::Status DeleteGroup(const std::string& group, const std::vector<TensorSpec>& tensors);

 private:
  ShardedClient(std::vector<std::string> targets, std::vector<std::unique_ptr<Client>> clients);
  std::vector<size_t> ShardsOf(const std::string& group,
                               const std::vector<std::string>& tensors) const;
  // Runs fn(shard) on the listed shards in parallel; the first failure (in shard order),
  // prefixed with its shard address.
  absl::Status RunOnShards(const std::vector<size_t>& shards,
                           const std::function<absl::Status(size_t)>& fn);

  const std::vector<std::string> targets_;
  std::vector<std::unique_ptr<Client>> clients_;
};

}  // namespace optd::client
