#include "optd/client/sharded_client.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "optd/client/sharding.h"

namespace optd::client {

ShardedClient::ShardedClient(std::vector<std::string> targets,
                             std::vector<std::unique_ptr<Client>> clients)
    : targets_(std::move(targets)), clients_(std::move(clients)) {}

absl::StatusOr<std::unique_ptr<ShardedClient>> ShardedClient::Create(
    const std::vector<std::string>& targets, const ClientOptions& options) {
  if (targets.empty()) return absl::InvalidArgumentError("targets: no server address given");
  std::vector<std::unique_ptr<Client>> clients;
  for (size_t i = 0; i < targets.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (targets[i] == targets[j]) {
        return absl::InvalidArgumentError(
            absl::StrCat("targets[", i, "]: duplicate server address ", targets[i]));
      }
    }
    auto c = Client::Create(targets[i], options);
    if (!c.ok()) return c.status();
    clients.push_back(std::move(*c));
  }
  return std::unique_ptr<ShardedClient>(new ShardedClient(targets, std::move(clients)));
}

size_t ShardedClient::ShardOf(const std::string& group, const std::string& tensor) const {
  return PlaceKey(absl::StrCat(group, "/", tensor), targets_);
}

std::vector<size_t> ShardedClient::ShardsOf(const std::string& group,
                                            const std::vector<std::string>& tensors) const {
  std::vector<size_t> shards;
  for (const std::string& t : tensors) shards.push_back(ShardOf(group, t));
  std::sort(shards.begin(), shards.end());
  shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
  return shards;
}

absl::Status ShardedClient::RunOnShards(const std::vector<size_t>& shards,
                                        const std::function<absl::Status(size_t)>& fn) {
  std::vector<absl::Status> results(shards.size());
  std::vector<std::thread> threads;
  threads.reserve(shards.size());
  for (size_t k = 0; k < shards.size(); ++k) {
    threads.emplace_back([&, k] { results[k] = fn(shards[k]); });
  }
  for (std::thread& t : threads) t.join();
  for (size_t k = 0; k < shards.size(); ++k) {
    if (!results[k].ok()) {
      return absl::Status(results[k].code(), absl::StrCat("shard ", targets_[shards[k]], ": ",
                                                          results[k].message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ShardedClient::CreateGroup(const std::string& group,
                                        const std::vector<TensorSpec>& tensors,
                                        const GroupOptions& options) {
  std::vector<std::vector<TensorSpec>> per(targets_.size());
  for (const TensorSpec& t : tensors) per[ShardOf(group, t.name)].push_back(t);
  std::vector<size_t> shards;
  for (size_t i = 0; i < per.size(); ++i) {
    if (!per[i].empty()) shards.push_back(i);
  }
  return RunOnShards(shards, [&](size_t i) {
    return clients_[i]->CreateGroup(group, per[i], options).status();
  });
}

absl::Status ShardedClient::UploadWeights(const std::string& group,
                                          absl::Span<const ConstBuffer> weights) {
  std::vector<std::vector<ConstBuffer>> per(targets_.size());
  for (const ConstBuffer& w : weights) per[ShardOf(group, w.tensor)].push_back(w);
  std::vector<size_t> shards;
  for (size_t i = 0; i < per.size(); ++i) {
    if (!per[i].empty()) shards.push_back(i);
  }
  return RunOnShards(shards, [&](size_t i) {
    return clients_[i]->UploadWeights(group, per[i]).status();
  });
}

absl::StatusOr<std::vector<StepResult>> ShardedClient::Step(
    const std::string& group, int64_t step, absl::Span<const ConstBuffer> gradients,
    absl::Span<const MutableBuffer> weights_out, const StepOptions& options) {
  if (options.part_count > 0) {
    // A part's tensors reach only some shards, and a shard waits for every part of its step.
    return absl::InvalidArgumentError(
        "part_count: step parts are per server; send them with shard(i).Step()");
  }
  std::vector<std::vector<ConstBuffer>> grads(targets_.size());
  std::vector<std::vector<MutableBuffer>> outs(targets_.size());
  for (const ConstBuffer& g : gradients) grads[ShardOf(group, g.tensor)].push_back(g);
  for (const MutableBuffer& o : weights_out) outs[ShardOf(group, o.tensor)].push_back(o);
  std::vector<size_t> shards;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].empty()) shards.push_back(i);
  }
  std::vector<StepResult> results(targets_.size());
  absl::Status s = RunOnShards(shards, [&](size_t i) {
    auto r = clients_[i]->Step(group, step, grads[i], outs[i], options);
    if (!r.ok()) return r.status();
    results[i] = *r;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return results;
}

absl::Status ShardedClient::PullWeights(const std::string& group,
                                        absl::Span<const MutableBuffer> out) {
  std::vector<std::vector<MutableBuffer>> per(targets_.size());
  for (const MutableBuffer& o : out) per[ShardOf(group, o.tensor)].push_back(o);
  std::vector<size_t> shards;
  for (size_t i = 0; i < per.size(); ++i) {
    if (!per[i].empty()) shards.push_back(i);
  }
  return RunOnShards(shards, [&](size_t i) {
    return clients_[i]->PullWeights(group, per[i]).status();
  });
}

absl::Status ShardedClient::DeleteGroup(const std::string& group,
                                        const std::vector<TensorSpec>& tensors) {
  std::vector<std::string> names;
  for (const TensorSpec& t : tensors) names.push_back(t.name);
  return RunOnShards(ShardsOf(group, names),
                     [&](size_t i) { return clients_[i]->DeleteGroup(group); });
}

}  // namespace optd::client
