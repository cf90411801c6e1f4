// The rest of the API through the real server: weights returned (UPDATED/ALL/NONE), per-step lr,
// Subscribe, ExportState/ImportState, group management, health checking and reflection.
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "optd/core/quant_maps.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kA = 4096;
constexpr int64_t kB = 100;

void CreateGroup(v1::Optimizer::Stub& stub, const std::string& name, uint32_t seed = 1) {
  v1::CreateGroupRequest create;
  create.set_group(name);
  *create.add_tensors() = Tensor("a", v1::FLOAT32, {64, 64});
  *create.add_tensors() = Tensor("b", v1::FLOAT32, {kB});
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ASSERT_TRUE(stub.CreateGroup(&ctx, create, &info).ok());
  EXPECT_FALSE(info.weights_initialized());
  EXPECT_EQ(info.hyperparameters().lr(), 1e-3f);
  EXPECT_EQ(info.hyperparameters().min_8bit_size(), 4096);
  EXPECT_EQ(info.num_workers(), 1);
  ASSERT_TRUE(Upload(stub, name, "a", v1::FLOAT32, AsBytes(RandomFloats(kA, seed))).ok());
  auto up = Upload(stub, name, "b", v1::FLOAT32, AsBytes(RandomFloats(kB, seed + 1)));
  ASSERT_TRUE(up.ok());
  EXPECT_TRUE(up->weights_initialized());
}

Grad GradA(int k) { return {"a", v1::FLOAT32, AsBytes(RandomFloats(kA, 50 + k, 0.1f))}; }

TEST(FeaturesTest, WeightsReturnUpdatedAllOrNone) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g");
  StepOptions opts;
  StepResult r = RunStep(*srv.stub, "g", 1, {GradA(1)}, opts);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.weights.size(), 1u);
  EXPECT_EQ(r.weights.count("a"), 1u);
  opts.weights = v1::ALL;
  r = RunStep(*srv.stub, "g", 2, {GradA(2)}, opts);
  ASSERT_TRUE(r.status.ok()) << r.status;
  auto pulled = Pull(*srv.stub, "g");
  ASSERT_TRUE(pulled.ok());
  EXPECT_TRUE(r.weights == *pulled);
  opts.weights = v1::NONE;
  r = RunStep(*srv.stub, "g", 3, {GradA(3)}, opts);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.weights.empty());
  EXPECT_EQ(r.done.version(), 3);
}

TEST(FeaturesTest, StepLrEqualsUpdatedHyperparameter) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "x");
  CreateGroup(*srv.stub, "y");
  StepOptions opts;
  opts.lr = 0.05f;
  ASSERT_TRUE(RunStep(*srv.stub, "x", 1, {GradA(1)}, opts).status.ok());
  grpc::ClientContext ctx;
  v1::UpdateHyperparametersRequest req;
  req.set_group("y");
  req.mutable_hyperparameters()->set_lr(0.05f);
  v1::GroupInfo info;
  ASSERT_TRUE(srv.stub->UpdateHyperparameters(&ctx, req, &info).ok());
  EXPECT_EQ(info.hyperparameters().lr(), 0.05f);
  EXPECT_EQ(info.hyperparameters().beta1(), 0.9f);
  ASSERT_TRUE(RunStep(*srv.stub, "y", 1, {GradA(1)}).status.ok());
  auto x = Pull(*srv.stub, "x");
  auto y = Pull(*srv.stub, "y");
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_TRUE(*x == *y);
  // The per-step lr did not change x's own lr.
  grpc::ClientContext ctx2;
  v1::GetGroupRequest get;
  get.set_group("x");
  ASSERT_TRUE(srv.stub->GetGroup(&ctx2, get, &info).ok());
  EXPECT_EQ(info.hyperparameters().lr(), 1e-3f);
}

TEST(FeaturesTest, SubscribersReceiveEveryVersion) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g");
  std::vector<std::vector<int64_t>> versions(2);
  std::vector<std::map<std::string, Bytes>> last(2);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  // All contexts before any thread: a push_back would move the vector under a running reader.
  for (int s = 0; s < 2; ++s) contexts.push_back(std::make_unique<grpc::ClientContext>());
  for (int s = 0; s < 2; ++s) {
    threads.emplace_back([&, s] {
      v1::SubscribeRequest req;
      req.set_group("g");
      req.set_send_current(true);
      auto reader = srv.stub->Subscribe(contexts[s].get(), req);
      v1::WeightsMessage m;
      while (reader->Read(&m)) {
        auto& dst = last[s][m.chunk().tensor()];
        dst.resize(static_cast<size_t>(m.chunk().offset() * 4) + m.chunk().data().size());
        std::memcpy(dst.data() + m.chunk().offset() * 4, m.chunk().data().data(),
                    m.chunk().data().size());
        if (m.version_complete()) {
          versions[s].push_back(m.version());
          if (m.version() == 0) ready++;
          if (m.version() == 4) break;
        }
      }
      contexts[s]->TryCancel();
      reader->Finish();
    });
  }
  while (ready.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  for (int k = 1; k <= 4; ++k) {
    StepOptions opts;
    opts.weights = v1::NONE;
    ASSERT_TRUE(RunStep(*srv.stub, "g", k, {GradA(k)}, opts).status.ok());
  }
  for (auto& t : threads) t.join();
  auto pulled = Pull(*srv.stub, "g");
  ASSERT_TRUE(pulled.ok());
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(versions[s], (std::vector<int64_t>{0, 1, 2, 3, 4}));
    EXPECT_TRUE(last[s] == *pulled);
  }
}

TEST(FeaturesTest, ExportImportStateMovesAGroupBitForBit) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "src");
  for (int k = 1; k <= 2; ++k) ASSERT_TRUE(RunStep(*srv.stub, "src", k, {GradA(k)}).status.ok());
  auto state = Export(*srv.stub, "src");
  ASSERT_TRUE(state.ok()) << state.status();
  auto& a = (*state)["a"];
  int64_t step = 0;
  std::memcpy(&step, a["step"].data(), 8);
  EXPECT_EQ(step, 2);
  EXPECT_EQ(a["state1"].size(), static_cast<size_t>(kA));
  EXPECT_EQ(a["absmax1"].size(), static_cast<size_t>(kA / 256 * 4));
  EXPECT_EQ(0, std::memcmp(a["qmap1"].data(), core::kSignedQuantMap, 1024));
  EXPECT_EQ(0, std::memcmp(a["qmap2"].data(), core::kUnsignedQuantMap, 1024));
  EXPECT_EQ((*state)["b"]["state1"].size(), static_cast<size_t>(kB * 4));  // 32-bit path
  EXPECT_EQ((*state)["b"].count("qmap1"), 0u);

  // A second group gets src's weights and states, then both take the same step.
  CreateGroup(*srv.stub, "dst", 77);
  auto weights = Pull(*srv.stub, "src");
  ASSERT_TRUE(weights.ok());
  for (auto& [t, w] : *weights) ASSERT_TRUE(Upload(*srv.stub, "dst", t, v1::FLOAT32, w).ok());
  grpc::ClientContext ctx;
  v1::ImportStateResponse resp;
  auto writer = srv.stub->ImportState(&ctx, &resp);
  bool first = true;
  for (auto& [tensor, keys] : *state) {
    for (auto& [key, data] : keys) {
      v1::StateChunk c;
      if (first) c.set_group("dst");
      first = false;
      c.set_tensor(tensor);
      c.set_key(key);
      const bool u8 = (key == "state1" || key == "state2") && tensor == "a";
      c.set_type(key == "step" ? v1::STATE_ELEMENT_TYPE_INT64
                 : u8          ? v1::STATE_ELEMENT_TYPE_UINT8
                               : v1::STATE_ELEMENT_TYPE_FLOAT32);
      const int64_t n = static_cast<int64_t>(data.size()) / (key == "step" ? 8 : u8 ? 1 : 4);
      if (key != "step") c.add_shape(n);
      // Two chunks per array where possible, to exercise offsets.
      const int64_t half = n / 2;
      const int64_t esize = key == "step" ? 8 : u8 ? 1 : 4;
      if (half > 0) {
        c.set_offset(0);
        c.set_data(data.data(), static_cast<size_t>(half * esize));
        ASSERT_TRUE(writer->Write(c));
        c.clear_group();
      }
      c.set_offset(half);
      c.set_data(data.data() + half * esize, static_cast<size_t>((n - half) * esize));
      ASSERT_TRUE(writer->Write(c));
    }
  }
  writer->WritesDone();
  ASSERT_TRUE(writer->Finish().ok());
  EXPECT_EQ(resp.tensors(), 2);
  auto dst_state = Export(*srv.stub, "dst");
  ASSERT_TRUE(dst_state.ok());
  EXPECT_TRUE(*dst_state == *state);
  ASSERT_TRUE(RunStep(*srv.stub, "src", 3, {GradA(3)}).status.ok());
  ASSERT_TRUE(RunStep(*srv.stub, "dst", 1, {GradA(3)}).status.ok());
  auto ws = Pull(*srv.stub, "src");
  auto wd = Pull(*srv.stub, "dst");
  ASSERT_TRUE(ws.ok() && wd.ok());
  EXPECT_TRUE(*ws == *wd);
}

TEST(FeaturesTest, ListDeleteAndGet) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "one");
  CreateGroup(*srv.stub, "two");
  grpc::ClientContext ctx;
  v1::ListGroupsResponse list;
  ASSERT_TRUE(srv.stub->ListGroups(&ctx, {}, &list).ok());
  ASSERT_EQ(list.groups_size(), 2);
  EXPECT_EQ(list.groups(0).group(), "one");
  EXPECT_EQ(list.groups(0).weight_bytes(), (kA + kB) * 4);
  EXPECT_EQ(list.groups(0).state_bytes(), 2 * kA + 2 * 4 * (kA / 256) + 2 * 4 * kB);
  grpc::ClientContext ctx2;
  v1::DeleteGroupRequest del;
  del.set_group("one");
  v1::DeleteGroupResponse dr;
  ASSERT_TRUE(srv.stub->DeleteGroup(&ctx2, del, &dr).ok());
  grpc::ClientContext ctx3;
  EXPECT_EQ(srv.stub->DeleteGroup(&ctx3, del, &dr).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext ctx4;
  v1::GetGroupRequest get;
  get.set_group("one");
  v1::GroupInfo info;
  const grpc::Status s = srv.stub->GetGroup(&ctx4, get, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("group 'one' not found"));
}

TEST(FeaturesTest, PullAndExportNameAnUnknownTensor) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g");
  {
    grpc::ClientContext ctx;
    v1::PullWeightsRequest req;
    req.set_group("g");
    req.add_tensors("nope");
    auto reader = srv.stub->PullWeights(&ctx, req);
    v1::WeightsMessage msg;
    while (reader->Read(&msg)) {
    }
    const grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_THAT(s.error_message(), HasSubstr("tensors: 'nope' is not in group 'g'"));
  }
  {
    grpc::ClientContext ctx;
    v1::ExportStateRequest req;
    req.set_group("g");
    req.add_tensors("nope");
    auto reader = srv.stub->ExportState(&ctx, req);
    v1::StateChunk msg;
    while (reader->Read(&msg)) {
    }
    const grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_THAT(s.error_message(), HasSubstr("tensors: 'nope' is not in group 'g'"));
  }
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

void Await(grpc::CompletionQueue& cq) {
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);
}

TEST(FeaturesTest, HealthCheckingAndReflection) {
  server::ServerOptions options;
  options.reflection = true;  // off by default (security_test.cc)
  InProcessServer srv = StartInProcess(options);
  auto channel = grpc::CreateChannel(srv.server->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  {
    grpc::ClientContext ctx;
    grpc::ByteBuffer request;  // HealthCheckRequest{service: ""} is the empty message
    grpc::Slice empty;
    request = grpc::ByteBuffer(&empty, 1);
    auto call = generic.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
    call->StartCall();
    grpc::ByteBuffer response;
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    Await(cq);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(Flatten(response), std::string("\x08\x01", 2));  // status: SERVING
  }
  {
    grpc::ClientContext ctx;
    auto call = generic.PrepareCall(
        &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
    call->StartCall(reinterpret_cast<void*>(1));
    Await(cq);
    grpc::Slice list_services(std::string("\x3a\x00", 2));  // list_services: ""
    call->Write(grpc::ByteBuffer(&list_services, 1), reinterpret_cast<void*>(2));
    Await(cq);
    call->WritesDone(reinterpret_cast<void*>(3));
    Await(cq);
    grpc::ByteBuffer response;
    call->Read(&response, reinterpret_cast<void*>(4));
    Await(cq);
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(5));
    Await(cq);
    EXPECT_THAT(Flatten(response), HasSubstr("optd.v1.Optimizer"));
  }
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
}

}  // namespace
}  // namespace optd::testing
