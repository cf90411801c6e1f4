// optd_client and ShardedClient against real optd server processes on loopback.
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "optd/client/client.h"
#include "optd/client/sharded_client.h"
#include "tests/client/server_process.h"

namespace optd::client {
namespace {

using testing::ServerProcess;

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

class ClientServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    binary_ = testing::ServerBinary();
    if (binary_.empty()) GTEST_SKIP() << "OPTD_SERVER_BIN is not set (ctest sets it)";
    dir_ = testing::MakeTempDir("optd-client-test");
  }
  ServerProcess* Start() {
    auto s = ServerProcess::Start(binary_, absl::StrCat(dir_, "/s", servers_.size()));
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return nullptr;
    servers_.emplace_back(*s);
    return *s;
  }
  std::unique_ptr<Client> Connect(ServerProcess* s, ClientOptions options = {}) {
    auto c = Client::Create(s->target(), options);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }

  std::string binary_, dir_;
  std::vector<std::unique_ptr<ServerProcess>> servers_;
};

TEST_F(ClientServerTest, CreateUploadStepPull) {
  ServerProcess* s = Start();
  ASSERT_NE(s, nullptr);
  auto c = Connect(s);
  const std::vector<TensorSpec> specs = {{"a", DType::kFloat32, {50, 100}},
                                         {"b", DType::kFloat32, {300}}};
  GroupOptions opts;
  opts.hyperparameters.lr = 2e-3f;
  auto info = c->CreateGroup("g", specs, opts);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->tensors.size(), 2u);
  EXPECT_FLOAT_EQ(info->hyperparameters.lr, 2e-3f);

  std::vector<float> a = Random(5000, 1), b = Random(300, 2);
  const std::vector<float> a0 = a;
  auto up = c->UploadWeights("g", {{"a", DType::kFloat32, a.data(), 5000},
                                   {"b", DType::kFloat32, b.data(), 300}});
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, 5300);

  for (int k = 1; k <= 3; ++k) {
    std::vector<float> ga = Random(5000, 10 + k), gb = Random(300, 20 + k);
    auto r = c->Step("g", k, {{"a", DType::kFloat32, ga.data(), 5000},
                              {"b", DType::kFloat32, gb.data(), 300}},
                     {{"a", DType::kFloat32, a.data(), 5000},
                      {"b", DType::kFloat32, b.data(), 300}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->step, k);
    EXPECT_EQ(r->version, k);
    EXPECT_FALSE(r->duplicate);
    EXPECT_EQ(r->weight_elements_received, 5300);
  }
  EXPECT_NE(a, a0);  // weights were written into the caller's buffer
  std::vector<float> pulled(5000);
  auto v = c->PullWeights("g", {{"a", DType::kFloat32, pulled.data(), 5000}});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, 3);
  EXPECT_EQ(pulled, a);

  // A retry of step 3 is acknowledged, not applied.
  std::vector<float> g = Random(300, 99);
  auto dup = c->Step("g", 3, {{"b", DType::kFloat32, g.data(), 300}}, {});
  ASSERT_TRUE(dup.ok()) << dup.status();
  EXPECT_TRUE(dup->duplicate);
}

TEST_F(ClientServerTest, ErrorsKeepTheServersMessage) {
  ServerProcess* s = Start();
  ASSERT_NE(s, nullptr);
  auto c = Connect(s);
  auto missing = c->GetGroup("no-such-group");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no-such-group"), std::string::npos)
      << missing.status();
  EXPECT_NE(missing.status().message().find(s->target()), std::string::npos);

  GroupOptions bad;
  bad.hyperparameters.lr = -1.0f;
  auto created = c->CreateGroup("bad", {{"a", DType::kFloat32, {10}}}, bad);
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(created.status().message().find("lr"), std::string::npos) << created.status();

  ASSERT_TRUE(c->CreateGroup("g", {{"a", DType::kFloat32, {10}}}).ok());
  std::vector<float> w(10, 1.0f);
  ASSERT_TRUE(c->UploadWeights("g", {{"a", DType::kFloat32, w.data(), 10}}).ok());
  auto r = c->Step("g", 1, {{"zzz", DType::kFloat32, w.data(), 10}}, {});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("zzz"), std::string::npos) << r.status();

  auto unreachable = Client::Create("127.0.0.1:1");
  ASSERT_TRUE(unreachable.ok());
  EXPECT_EQ((*unreachable)->GetGroup("g").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientServerTest, SmallChunksGiveTheSameWeights) {
  ServerProcess* s = Start();
  ASSERT_NE(s, nullptr);
  ClientOptions small;
  small.chunk_bytes = 4096;  // 1024 fp32 elements a message: 10 chunks for this tensor
  auto c1 = Connect(s);
  auto c2 = Connect(s, small);
  const size_t n = 10000;
  std::vector<float> w1 = Random(n, 5), w2 = w1;
  for (auto* c : {c1.get(), c2.get()}) {
    const std::string g = c == c1.get() ? "big" : "small";
    ASSERT_TRUE(c->CreateGroup(g, {{"t", DType::kFloat32, {int64_t(n)}}}).ok());
    std::vector<float>& w = c == c1.get() ? w1 : w2;
    ASSERT_TRUE(c->UploadWeights(g, {{"t", DType::kFloat32, w.data(), int64_t(n)}}).ok());
    for (int k = 1; k <= 2; ++k) {
      std::vector<float> grad = Random(n, 50 + k);
      auto r = c->Step(g, k, {{"t", DType::kFloat32, grad.data(), int64_t(n)}},
                       {{"t", DType::kFloat32, w.data(), int64_t(n)}});
      ASSERT_TRUE(r.ok()) << r.status();
    }
  }
  EXPECT_EQ(w1, w2);
}

TEST_F(ClientServerTest, SubscriberSeesNewVersion) {
  ServerProcess* s = Start();
  ASSERT_NE(s, nullptr);
  auto c = Connect(s);
  ASSERT_TRUE(c->CreateGroup("p", {{"t", DType::kFloat32, {512}}}).ok());
  std::vector<float> w(512, 0.5f), seen(512, 0.0f);
  ASSERT_TRUE(c->UploadWeights("p", {{"t", DType::kFloat32, w.data(), 512}}).ok());
  auto sub = c->Subscribe("p", /*send_current=*/true);
  auto v0 = sub->Next({{"t", DType::kFloat32, seen.data(), 512}});
  ASSERT_TRUE(v0.ok()) << v0.status();
  EXPECT_EQ(*v0, 0);
  EXPECT_EQ(seen, w);
  std::vector<float> g(512, 1.0f);
  ASSERT_TRUE(c->Step("p", 1, {{"t", DType::kFloat32, g.data(), 512}},
                      {{"t", DType::kFloat32, w.data(), 512}}).ok());
  auto v1 = sub->Next({{"t", DType::kFloat32, seen.data(), 512}});
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(*v1, 1);
  EXPECT_EQ(seen, w);
  sub->Cancel();
}

TEST_F(ClientServerTest, CancelEndsABlockedSubscription) {
  ServerProcess* s = Start();
  ASSERT_NE(s, nullptr);
  auto c = Connect(s);
  ASSERT_TRUE(c->CreateGroup("p", {{"t", DType::kFloat32, {512}}}).ok());
  auto sub = c->Subscribe("p", /*send_current=*/false);  // nothing comes until a step
  std::vector<float> seen(512, 0.0f);
  absl::StatusOr<int64_t> next = -1;
  std::thread reader([&] { next = sub->Next({{"t", DType::kFloat32, seen.data(), 512}}); });
  // Whenever the cancel lands (before or during Next), Next ends with CANCELLED.
  sub->Cancel();
  reader.join();
  EXPECT_EQ(next.status().code(), absl::StatusCode::kCancelled) << next.status();
  EXPECT_EQ(sub->Next({{"t", DType::kFloat32, seen.data(), 512}}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(ClientServerTest, DeadlineEndsAStepThatWaitsForAnotherWorker) {
  ServerProcess* s = Start();
  ASSERT_NE(s, nullptr);
  ClientOptions short_deadline;
  short_deadline.timeout_ms = 300;
  auto c = Connect(s, short_deadline);
  GroupOptions two;
  two.num_workers = 2;  // step 1 waits for worker 1, who never comes
  ASSERT_TRUE(c->CreateGroup("sync", {{"t", DType::kFloat32, {512}}}, two).ok());
  std::vector<float> w(512, 1.0f), g(512, 1.0f);
  ASSERT_TRUE(c->UploadWeights("sync", {{"t", DType::kFloat32, w.data(), 512}}).ok());
  auto r = c->Step("sync", 1, {{"t", DType::kFloat32, g.data(), 512}},
                   {{"t", DType::kFloat32, w.data(), 512}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  // The step ended on this side only: the message says that it may have been applied.
  EXPECT_NE(r.status().message().find("may have been applied"), std::string::npos)
      << r.status();
  auto group = c->GetGroup("sync");
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ(group->worker_steps, (std::vector<int64_t>{0, 0}));
}

TEST_F(ClientServerTest, StepExpectingAnotherLastStepIsRefused) {
  ServerProcess* s = Start();
  ASSERT_NE(s, nullptr);
  auto c = Connect(s);
  ASSERT_TRUE(c->CreateGroup("solo", {{"t", DType::kFloat32, {512}}}).ok());
  std::vector<float> w(512, 1.0f), g(512, 1.0f);
  ASSERT_TRUE(c->UploadWeights("solo", {{"t", DType::kFloat32, w.data(), 512}}).ok());
  StepOptions expect;
  expect.expect_last_step = 5;  // a trainer that believes the server is at step 5
  auto r = c->Step("solo", 6, {{"t", DType::kFloat32, g.data(), 512}},
                   {{"t", DType::kFloat32, w.data(), 512}}, expect);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  auto group = c->GetGroup("solo");
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ(group->version, 0);  // nothing applied
  EXPECT_EQ(group->worker_steps, std::vector<int64_t>{0});
  expect.expect_last_step = 0;
  r = c->Step("solo", 1, {{"t", DType::kFloat32, g.data(), 512}},
              {{"t", DType::kFloat32, w.data(), 512}}, expect);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 1);
}

TEST_F(ClientServerTest, ListGroupsFollowsTheServersPages) {
  ServerProcess* s = Start();
  ASSERT_NE(s, nullptr);
  auto c = Connect(s);
  // One more than the server's default page of 1000.
  constexpr int kGroups = 1001;
  for (int i = 0; i < kGroups; ++i) {
    ASSERT_TRUE(c->CreateGroup(absl::StrCat("g", 10000 + i), {{"t", DType::kFloat32, {4}}}).ok());
  }
  auto groups = c->ListGroups();
  ASSERT_TRUE(groups.ok()) << groups.status();
  ASSERT_EQ(groups->size(), static_cast<size_t>(kGroups));
  EXPECT_EQ(groups->front().group, "g10000");
  EXPECT_EQ(groups->back().group, "g11000");
}

TEST_F(ClientServerTest, GroupAdminCheckpointAndStateRoundTrip) {
  ServerProcess* s = Start();
  ASSERT_NE(s, nullptr);
  auto c = Connect(s);
  const int64_t n = 5000;
  ASSERT_TRUE(c->CreateGroup("a", {{"t", DType::kFloat32, {n}}}).ok());
  ASSERT_TRUE(c->CreateGroup("b", {{"t", DType::kFloat32, {n}}}).ok());
  auto groups = c->ListGroups();
  ASSERT_TRUE(groups.ok()) << groups.status();
  EXPECT_EQ(groups->size(), 2u);

  Hyperparameters h;
  h.lr = 5e-4f;
  h.weight_decay = 0.0f;
  auto updated = c->UpdateHyperparameters("a", h);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_FLOAT_EQ(updated->hyperparameters.lr, 5e-4f);
  EXPECT_FLOAT_EQ(updated->hyperparameters.weight_decay, 0.0f);
  EXPECT_FLOAT_EQ(updated->hyperparameters.beta1, 0.9f);  // unchanged

  std::vector<float> w = Random(n, 3);
  ASSERT_TRUE(c->UploadWeights("a", {{"t", DType::kFloat32, w.data(), n}}).ok());
  for (int k = 1; k <= 2; ++k) {
    std::vector<float> g = Random(n, 30 + k);
    ASSERT_TRUE(c->Step("a", k, {{"t", DType::kFloat32, g.data(), n}},
                        {{"t", DType::kFloat32, w.data(), n}}).ok());
  }
  auto saved = c->SaveCheckpoint("ck", {"a"});
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_GT(saved->bytes, n * 6);  // weights + 2 state bytes per element at least

  // State export -> import into b (same weights): the next step matches bit for bit.
  auto state = c->ExportState("a");
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(state->size(), 1u);
  EXPECT_EQ((*state)[0].second.step, 2);
  bool has_state1 = false;
  for (const auto& [key, arr] : (*state)[0].second.arrays) {
    if (key == "state1") {
      has_state1 = true;
      EXPECT_EQ(arr.bytes.size(), static_cast<size_t>(n));
    }
  }
  EXPECT_TRUE(has_state1);
  std::vector<float> wb = w;
  ASSERT_TRUE(c->UploadWeights("b", {{"t", DType::kFloat32, wb.data(), n}}).ok());
  ASSERT_TRUE(c->UpdateHyperparameters("b", h).ok());
  absl::Status imported = c->ImportState("b", *state);
  ASSERT_TRUE(imported.ok()) << imported;
  std::vector<float> g = Random(n, 77);
  ASSERT_TRUE(c->Step("a", 3, {{"t", DType::kFloat32, g.data(), n}},
                      {{"t", DType::kFloat32, w.data(), n}}).ok());
  ASSERT_TRUE(c->Step("b", 1, {{"t", DType::kFloat32, g.data(), n}},
                      {{"t", DType::kFloat32, wb.data(), n}}).ok());
  EXPECT_EQ(w, wb);

  // Restore brings group a back to version 2.
  auto restored = c->RestoreCheckpoint("ck");
  ASSERT_TRUE(restored.ok()) << restored.status();
  ASSERT_EQ(restored->groups.size(), 1u);
  EXPECT_EQ(restored->groups[0].version, 2);
  EXPECT_EQ(c->RestoreCheckpoint("missing").status().ok(), false);

  ASSERT_TRUE(c->DeleteGroup("b").ok());
  EXPECT_EQ(c->GetGroup("b").status().code(), absl::StatusCode::kNotFound);
}

class ShardedTest : public ClientServerTest {
 protected:
  std::vector<TensorSpec> Specs() {
    std::vector<TensorSpec> specs;
    for (int i = 0; i < 8; ++i) {
      specs.push_back({absl::StrCat("layer", i), DType::kFloat32, {int64_t(1000 + 700 * i)}});
    }
    return specs;
  }
  // Trains `steps` steps through `client`; returns all weights.
  std::vector<std::vector<float>> Train(ShardedClient* client, int steps,
                                        const std::string& group = "model") {
    const auto specs = Specs();
    EXPECT_TRUE(client->CreateGroup(group, specs).ok());
    std::vector<std::vector<float>> w;
    std::vector<ConstBuffer> up;
    for (size_t i = 0; i < specs.size(); ++i) w.push_back(Random(specs[i].numel(), i));
    for (size_t i = 0; i < specs.size(); ++i) {
      up.push_back({specs[i].name, DType::kFloat32, w[i].data(), specs[i].numel()});
    }
    absl::Status s = client->UploadWeights(group, up);
    EXPECT_TRUE(s.ok()) << s;
    for (int k = 1; k <= steps; ++k) {
      std::vector<std::vector<float>> g;
      std::vector<ConstBuffer> gb;
      std::vector<MutableBuffer> ob;
      for (size_t i = 0; i < specs.size(); ++i) g.push_back(Random(specs[i].numel(), 100 * k + i));
      for (size_t i = 0; i < specs.size(); ++i) {
        gb.push_back({specs[i].name, DType::kFloat32, g[i].data(), specs[i].numel()});
        ob.push_back({specs[i].name, DType::kFloat32, w[i].data(), specs[i].numel()});
      }
      auto r = client->Step(group, k, gb, ob);
      EXPECT_TRUE(r.ok()) << r.status();
    }
    return w;
  }
};

TEST_F(ShardedTest, ThreeShardsEqualOneServer) {
  ServerProcess* one = Start();
  ServerProcess* a = Start();
  ServerProcess* b = Start();
  ServerProcess* c = Start();
  ASSERT_TRUE(one && a && b && c);
  auto single = ShardedClient::Create({one->target()});
  auto triple = ShardedClient::Create({a->target(), b->target(), c->target()});
  ASSERT_TRUE(single.ok() && triple.ok());
  const auto w1 = Train(single->get(), 3);
  const auto w3 = Train(triple->get(), 3);
  EXPECT_EQ(w1, w3);
  // The tensors really are spread, and each shard holds exactly its own.
  int used = 0;
  for (size_t i = 0; i < 3; ++i) {
    auto info = (*triple)->shard(i).GetGroup("model");
    if (!info.ok()) continue;
    ++used;
    for (const auto& t : info->tensors) EXPECT_EQ((*triple)->ShardOf("model", t.name), i);
  }
  EXPECT_GE(used, 2);

  // The same over 3 streams per shard (another group name: another placement, same result).
  ClientOptions three_streams;
  three_streams.streams = 3;
  three_streams.chunk_bytes = 4096;  // layers of 1000-5900 fp32 elements: 1-6 chunks each
  auto wide = ShardedClient::Create({a->target(), b->target(), c->target()}, three_streams);
  ASSERT_TRUE(wide.ok());
  EXPECT_EQ(Train(wide->get(), 3, "model-k3"), w1);
  // Step parts cannot be spread over shards.
  StepOptions parts;
  parts.part_count = 2;
  EXPECT_EQ((*wide)->Step("model-k3", 4, {}, {}, parts).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ShardedTest, KilledShardIsReportedByAddress) {
  ServerProcess* a = Start();
  ServerProcess* b = Start();
  ServerProcess* c = Start();
  ASSERT_TRUE(a && b && c);
  std::vector<ServerProcess*> procs = {a, b, c};
  auto sharded = ShardedClient::Create({a->target(), b->target(), c->target()});
  ASSERT_TRUE(sharded.ok());
  Train(sharded->get(), 1);
  const size_t victim = (*sharded)->ShardOf("model", "layer0");
  procs[victim]->Kill();
  const auto specs = Specs();
  std::vector<std::vector<float>> g;
  std::vector<ConstBuffer> gb;
  for (const auto& s : specs) g.push_back(Random(s.numel(), 7));
  for (size_t i = 0; i < specs.size(); ++i) {
    gb.push_back({specs[i].name, DType::kFloat32, g[i].data(), specs[i].numel()});
  }
  StepOptions no_weights;
  no_weights.weights = WeightsReturn::kNone;
  auto r = (*sharded)->Step("model", 2, gb, {}, no_weights);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find(absl::StrCat("shard ", procs[victim]->target())),
            std::string::npos)
      << r.status();
}

}  // namespace
}  // namespace optd::client
