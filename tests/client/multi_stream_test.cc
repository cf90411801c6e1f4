// The C++ client with K streams (ClientOptions::streams) against a real optd server process:
// K connections, uploads and pulls over K calls, steps over K streams.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "optd/client/client.h"
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

std::vector<uint16_t> RandomBFloat16(size_t n, uint32_t seed) {
  std::vector<uint16_t> out(n);
  const std::vector<float> f = Random(n, seed);
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &f[i], 4);
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
  return out;
}

// Established TCP connections from any local port to 127.0.0.1:`port`, as the kernel lists
// them in /proc/net/tcp and /proc/net/tcp6 (gRPC's sockets are dual-stack: 127.0.0.1 shows as
// ::ffff:127.0.0.1 there): the client side of each connection to the server.
int ConnectionsTo(int port) {
  int n = 0;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (f.size() < 4) continue;
      // f[2] = remote "ADDRESS:PORT" in hex, f[3] = state ("01" = ESTABLISHED).
      const std::string& remote = f[2];
      const size_t colon = remote.find(':');
      int remote_port = 0;
      if (colon == std::string::npos ||
          !absl::SimpleHexAtoi(remote.substr(colon + 1), &remote_port)) {
        continue;
      }
      const bool loopback = absl::EndsWith(remote.substr(0, colon), "0100007F");
      if (loopback && remote_port == port && f[3] == "01") ++n;
    }
  }
  return n;
}

int PortOf(const std::string& target) {
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(target.substr(target.rfind(':') + 1), &port)) << target;
  return port;
}

// A model of odd sizes: fp32 and bf16 tensors, one spread over several streams.
struct Model {
  std::vector<TensorSpec> specs = {{"big", DType::kFloat32, {10007}},  // ~10 chunks of 4 KiB
                                   {"odd", DType::kFloat32, {37, 29}},
                                   {"half", DType::kBFloat16, {3001}},
                                   {"tiny", DType::kFloat32, {5}},
                                   {"wide", DType::kBFloat16, {2, 4099}}};
  std::vector<std::vector<float>> f32;     // by tensor index; empty for bf16 tensors
  std::vector<std::vector<uint16_t>> b16;  // by tensor index; empty for fp32 tensors

  explicit Model(uint32_t seed) {
    for (size_t i = 0; i < specs.size(); ++i) {
      const size_t n = static_cast<size_t>(specs[i].numel());
      if (specs[i].dtype == DType::kFloat32) {
        f32.push_back(Random(n, seed + i));
        b16.emplace_back();
      } else {
        f32.emplace_back();
        b16.push_back(RandomBFloat16(n, seed + i));
      }
    }
  }
  const void* data(size_t i) const {
    return specs[i].dtype == DType::kFloat32 ? static_cast<const void*>(f32[i].data())
                                             : static_cast<const void*>(b16[i].data());
  }
  void* data(size_t i) {
    return specs[i].dtype == DType::kFloat32 ? static_cast<void*>(f32[i].data())
                                             : static_cast<void*>(b16[i].data());
  }
  std::vector<ConstBuffer> Const() const {
    std::vector<ConstBuffer> out;
    for (size_t i = 0; i < specs.size(); ++i) {
      out.push_back({specs[i].name, specs[i].dtype, data(i), specs[i].numel()});
    }
    return out;
  }
  std::vector<MutableBuffer> Mutable() {
    std::vector<MutableBuffer> out;
    for (size_t i = 0; i < specs.size(); ++i) {
      out.push_back({specs[i].name, specs[i].dtype, data(i), specs[i].numel()});
    }
    return out;
  }
  bool operator==(const Model& o) const { return f32 == o.f32 && b16 == o.b16; }
};

class MultiStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string binary = testing::ServerBinary();
    if (binary.empty()) GTEST_SKIP() << "OPTD_SERVER_BIN is not set (ctest sets it)";
    auto s = ServerProcess::Start(binary, testing::MakeTempDir("optd-multi-stream-test"));
    ASSERT_TRUE(s.ok()) << s.status();
    server_.reset(*s);
  }
  std::unique_ptr<Client> Connect(int streams) {
    ClientOptions options;
    options.streams = streams;
    options.chunk_bytes = 4096;  // 1024 fp32 / 2048 bf16 elements a chunk: many chunks
    auto c = Client::Create(server_->target(), options);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  std::unique_ptr<ServerProcess> server_;
};

TEST_F(MultiStreamTest, KChannelsAreKConnections) {
  auto c = Connect(4);
  ASSERT_NE(c, nullptr);
  Model m(1);
  ASSERT_TRUE(c->CreateGroup("g", m.specs).ok());
  auto up = c->UploadWeights("g", m.Const());  // 20 chunks over 4 streams
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(ConnectionsTo(PortOf(server_->target())), 4);
  auto one = Connect(1);
  ASSERT_NE(one, nullptr);
  ASSERT_TRUE(one->GetGroup("g").ok());
  EXPECT_EQ(ConnectionsTo(PortOf(server_->target())), 5);
}

TEST_F(MultiStreamTest, UploadAndPullOverKCallsEqualOneCall) {
  auto k1 = Connect(1);
  auto k3 = Connect(3);
  ASSERT_TRUE(k1 && k3);
  Model m(7);
  ASSERT_TRUE(k1->CreateGroup("a", m.specs).ok());
  ASSERT_TRUE(k1->CreateGroup("b", m.specs).ok());
  int64_t total = 0;
  for (const TensorSpec& s : m.specs) total += s.numel();
  auto up1 = k1->UploadWeights("a", m.Const());
  auto up3 = k3->UploadWeights("b", m.Const());
  ASSERT_TRUE(up1.ok()) << up1.status();
  ASSERT_TRUE(up3.ok()) << up3.status();
  EXPECT_EQ(*up1, total);
  EXPECT_EQ(*up3, total);
  auto info = k3->GetGroup("b");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->weights_initialized);

  // Each client pulls the other's group: all four pulls give the uploaded bytes.
  for (Client* c : {k1.get(), k3.get()}) {
    for (const char* g : {"a", "b"}) {
      Model pulled(99);
      auto v = c->PullWeights(g, pulled.Mutable());
      ASSERT_TRUE(v.ok()) << v.status();
      EXPECT_EQ(*v, 0);
      EXPECT_TRUE(pulled == m) << g;
    }
  }
  // A pull names only the tensors asked for.
  std::vector<float> odd(37 * 29, 0.0f);
  auto v = k3->PullWeights("b", {{"odd", DType::kFloat32, odd.data(), 37 * 29}});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(odd, m.f32[1]);
}

TEST_F(MultiStreamTest, StepWithAMissingWeightsBufferFailsBeforeSending) {
  auto c = Connect(2);
  ASSERT_NE(c, nullptr);
  Model m(3);
  ASSERT_TRUE(c->CreateGroup("g", m.specs).ok());
  ASSERT_TRUE(c->UploadWeights("g", m.Const()).ok());
  std::vector<MutableBuffer> out = m.Mutable();
  out.pop_back();  // no buffer for "wide"
  auto r = c->Step("g", 1, m.Const(), out);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("'wide'"), std::string::npos) << r.status();
  auto info = c->GetGroup("g");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->version, 0);  // nothing was applied
}

// The tests below spread a step over K streams (StepBegin.streams/stream_index): they need a
// server with K-stream steps (server/pending_step.h, Note [A step over K streams]).

// Steps over K = 1 and K = 2, 3, 4 streams give bit-identical weights, step after step.
TEST_F(MultiStreamTest, KStreamStepsEqualOneStream) {
  std::vector<std::unique_ptr<Client>> clients;
  for (int k : {1, 2, 3, 4}) clients.push_back(Connect(k));
  Model start(11);
  std::vector<Model> models(clients.size(), start);
  for (size_t i = 0; i < clients.size(); ++i) {
    ASSERT_NE(clients[i], nullptr);
    const std::string g = absl::StrCat("k", i);
    ASSERT_TRUE(clients[i]->CreateGroup(g, start.specs).ok());
    ASSERT_TRUE(clients[i]->UploadWeights(g, start.Const()).ok());
  }
  int64_t total = 0;
  for (const TensorSpec& s : start.specs) total += s.numel();
  for (int step = 1; step <= 4; ++step) {
    const Model grads(1000 * step);
    for (size_t i = 0; i < clients.size(); ++i) {
      StepOptions options;
      if (step == 4) options.weights = WeightsReturn::kAll;
      auto r = clients[i]->Step(absl::StrCat("k", i), step, grads.Const(), models[i].Mutable(),
                                options);
      ASSERT_TRUE(r.ok()) << "K=" << i + 1 << " step " << step << ": " << r.status();
      EXPECT_EQ(r->step, step);
      EXPECT_EQ(r->version, step);
      EXPECT_FALSE(r->duplicate);
      EXPECT_EQ(r->nonfinite_gradient_elements, 0);
      EXPECT_EQ(r->weight_elements_received, total) << "K=" << i + 1;
    }
    for (size_t i = 1; i < clients.size(); ++i) {
      EXPECT_TRUE(models[i] == models[0]) << "K=" << i + 1 << " differs after step " << step;
    }
  }
  EXPECT_FALSE(models[0] == start);
  // What the server holds is what the steps returned.
  for (size_t i = 0; i < clients.size(); ++i) {
    Model pulled(5);
    auto v = clients[i]->PullWeights(absl::StrCat("k", i), pulled.Mutable());
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(*v, 4);
    EXPECT_TRUE(pulled == models[0]) << "K=" << i + 1;
  }
  // A retry of the last step over K streams is a duplicate on every stream.
  const Model grads(4000);
  StepOptions none;
  none.weights = WeightsReturn::kNone;
  auto dup = clients[3]->Step("k3", 4, grads.Const(), {}, none);
  ASSERT_TRUE(dup.ok()) << dup.status();
  EXPECT_TRUE(dup->duplicate);
}

// A step sent as two concurrent calls of the caller's own (parts, as optd.torch sends gradient
// buckets while backward runs) equals the same step sent in one call.
TEST_F(MultiStreamTest, StepPartsFromConcurrentCallsEqualOneCall) {
  auto c = Connect(2);
  ASSERT_NE(c, nullptr);
  Model whole(31);
  Model parts = whole;
  ASSERT_TRUE(c->CreateGroup("whole", whole.specs).ok());
  ASSERT_TRUE(c->CreateGroup("parts", whole.specs).ok());
  ASSERT_TRUE(c->UploadWeights("whole", whole.Const()).ok());
  ASSERT_TRUE(c->UploadWeights("parts", parts.Const()).ok());
  for (int step = 1; step <= 2; ++step) {
    const Model grads(700 * step);
    auto r = c->Step("whole", step, grads.Const(), whole.Mutable());
    ASSERT_TRUE(r.ok()) << r.status();
    // Part 0: the first two tensors; part 1: the rest.
    const std::vector<ConstBuffer> g = grads.Const();
    const std::vector<MutableBuffer> w = parts.Mutable();
    absl::StatusOr<StepResult> results[2];
    std::thread part1([&] {
      StepOptions o;
      o.part_count = 2;
      o.part_index = 1;
      results[1] = c->Step("parts", step, absl::MakeConstSpan(g).subspan(2),
                           absl::MakeConstSpan(w).subspan(2), o);
    });
    StepOptions o;
    o.part_count = 2;
    o.part_index = 0;
    results[0] = c->Step("parts", step, absl::MakeConstSpan(g).subspan(0, 2),
                         absl::MakeConstSpan(w).subspan(0, 2), o);
    part1.join();
    for (const auto& p : results) {
      ASSERT_TRUE(p.ok()) << p.status();
      EXPECT_EQ(p->version, step);
    }
    int64_t received = results[0]->weight_elements_received + results[1]->weight_elements_received;
    EXPECT_EQ(received, r->weight_elements_received);
    EXPECT_TRUE(parts == whole) << "after step " << step;
  }
}

// One stream of a K-stream step fails (its run names a tensor the group does not have): the
// whole step is undone, the error names the cause, and the step can then be sent again.
TEST_F(MultiStreamTest, OneFailingStreamUndoesTheWholeStep) {
  auto c = Connect(3);
  ASSERT_NE(c, nullptr);
  Model m(21);
  ASSERT_TRUE(c->CreateGroup("g", m.specs).ok());
  ASSERT_TRUE(c->UploadWeights("g", m.Const()).ok());
  const Model grads(500);
  std::vector<ConstBuffer> bad = grads.Const();
  std::vector<float> stray(3000, 1.0f);
  bad.push_back({"zzz", DType::kFloat32, stray.data(), 3000});  // dealt to the last stream
  StepOptions none;
  none.weights = WeightsReturn::kNone;
  auto r = c->Step("g", 1, bad, {}, none);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("zzz"), std::string::npos) << r.status();
  Model pulled(5);
  auto v = c->PullWeights("g", pulled.Mutable());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, 0);
  EXPECT_TRUE(pulled == m);  // no stream's chunks were applied

  Model after = m;
  auto ok = c->Step("g", 1, grads.Const(), after.Mutable());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->version, 1);
  EXPECT_FALSE(after == m);
}

}  // namespace
}  // namespace optd::client
