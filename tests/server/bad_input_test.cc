// Bad input through the real API: each case gets a precise status naming the field, the server
// keeps serving, and the group is unchanged (weights, states, version).
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/widen.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kW = 1000;  // fp32, 8-bit states (min_8bit_size 256), ragged last block
constexpr int64_t kB = 300;   // bf16, 32-bit states

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(server::ServerOptions options) {
    srv_ = StartInProcess(options);
    ASSERT_NE(srv_.stub, nullptr);
    v1::CreateGroupRequest create;
    create.set_group("g");
    *create.add_tensors() = Tensor("w", v1::FLOAT32, {kW});
    *create.add_tensors() = Tensor("b", v1::BFLOAT16, {3, 100});
    create.mutable_hyperparameters()->set_min_8bit_size(256);
    grpc::ClientContext ctx;
    v1::GroupInfo info;
    ASSERT_TRUE(srv_.stub->CreateGroup(&ctx, create, &info).ok());
    ASSERT_TRUE(Upload(*srv_.stub, "g", "w", v1::FLOAT32, AsBytes(RandomFloats(kW, 1))).ok());
    ASSERT_TRUE(Upload(*srv_.stub, "g", "b", v1::BFLOAT16, Bf16(RandomFloats(kB, 2))).ok());
    StepResult r = RunStep(*srv_.stub, "g", 1, Grads(10));
    ASSERT_TRUE(r.status.ok()) << r.status;
    Snapshot(&before_);
  }

  static std::vector<Grad> Grads(uint32_t seed) {
    return {{"w", v1::FLOAT32, AsBytes(RandomFloats(kW, seed, 0.1f))},
            {"b", v1::BFLOAT16, Bf16(RandomFloats(kB, seed + 1, 0.1f))}};
  }

  struct State {
    std::map<std::string, Bytes> weights;
    std::map<std::string, std::map<std::string, Bytes>> states;
    int64_t version = -1;
    std::string hyperparameters;
  };
  void Snapshot(State* s) {
    auto w = Pull(*srv_.stub, "g", &s->version);
    ASSERT_TRUE(w.ok()) << w.status();
    s->weights = *w;
    auto st = Export(*srv_.stub, "g");
    ASSERT_TRUE(st.ok()) << st.status();
    s->states = *st;
    grpc::ClientContext ctx;
    v1::GetGroupRequest req;
    req.set_group("g");
    v1::GroupInfo info;
    ASSERT_TRUE(srv_.stub->GetGroup(&ctx, req, &info).ok());
    s->hyperparameters = info.hyperparameters().SerializeAsString();
  }
  // The group is exactly as before the bad request, and the server still serves: a valid step
  // applies afterwards.
  void ExpectUnchangedAndServing() {
    State now;
    Snapshot(&now);
    EXPECT_EQ(now.version, before_.version);
    EXPECT_TRUE(now.weights == before_.weights) << "weights changed";
    EXPECT_TRUE(now.states == before_.states) << "optimizer states changed";
    EXPECT_EQ(now.hyperparameters, before_.hyperparameters);
    StepResult r = RunStep(*srv_.stub, "g", 2, Grads(20));
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.done.version(), before_.version + 1);
  }
  void ExpectStatus(const absl::Status& s, absl::StatusCode code, const std::string& text) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(text));
  }
  StepResult StepWith(int64_t step, std::vector<Grad> grads, StepOptions opts = {}) {
    return RunStep(*srv_.stub, "g", step, grads, opts);
  }

  InProcessServer srv_;
  State before_;
};

TEST_F(BadInputTest, DuplicateGroupIsAlreadyExists) {
  v1::CreateGroupRequest create;
  create.set_group("g");
  *create.add_tensors() = Tensor("x", v1::FLOAT32, {4});
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ExpectStatus(FromGrpc(srv_.stub->CreateGroup(&ctx, create, &info)),
               absl::StatusCode::kAlreadyExists, "group 'g' already exists");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, CreateGroupHyperparametersOutOfRange) {
  struct Case {
    void (*set)(v1::Hyperparameters*);
    const char* field;
  } cases[] = {
      {[](v1::Hyperparameters* h) { h->set_lr(-1); }, "lr"},
      {[](v1::Hyperparameters* h) { h->set_beta2(1.0f); }, "beta2"},
      {[](v1::Hyperparameters* h) { h->set_amsgrad(true); }, "amsgrad"},
      {[](v1::Hyperparameters* h) { h->set_optim_bits(8); }, "optim_bits"},
      {[](v1::Hyperparameters* h) { h->set_percentile_clipping(0); }, "percentile_clipping"},
      {[](v1::Hyperparameters* h) { h->set_block_wise(false); }, "block_wise"},
  };
  for (const Case& c : cases) {
    v1::CreateGroupRequest create;
    create.set_group("h");
    *create.add_tensors() = Tensor("x", v1::FLOAT32, {4});
    c.set(create.mutable_hyperparameters());
    grpc::ClientContext ctx;
    v1::GroupInfo info;
    ExpectStatus(FromGrpc(srv_.stub->CreateGroup(&ctx, create, &info)),
                 absl::StatusCode::kInvalidArgument, c.field);
  }
  v1::CreateGroupRequest create;
  create.set_group("h");
  *create.add_tensors() = Tensor("x", v1::DTYPE_UNSPECIFIED, {4});
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ExpectStatus(FromGrpc(srv_.stub->CreateGroup(&ctx, create, &info)),
               absl::StatusCode::kInvalidArgument, "tensors[0].dtype");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, UpdateHyperparametersOutOfRange) {
  v1::UpdateHyperparametersRequest req;
  req.set_group("g");
  req.mutable_hyperparameters()->set_beta1(1.5f);
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ExpectStatus(FromGrpc(srv_.stub->UpdateHyperparameters(&ctx, req, &info)),
               absl::StatusCode::kInvalidArgument, "beta1");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, UnknownGroupOrTensor) {
  StepResult r = RunStep(*srv_.stub, "nope", 2, Grads(3));
  ExpectStatus(r.status, absl::StatusCode::kNotFound, "begin.group");
  r = StepWith(2, {{"nope", v1::FLOAT32, AsBytes(RandomFloats(256, 3))}});
  ExpectStatus(r.status, absl::StatusCode::kNotFound, "gradient.tensor 'nope'");
  ExpectStatus(Upload(*srv_.stub, "g", "nope", v1::FLOAT32, AsBytes(RandomFloats(4, 3))).status(),
               absl::StatusCode::kNotFound, "chunk.tensor 'nope'");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, WrongDtype) {
  // fp32 gradient for a bf16 tensor is wider than the parameter.
  StepResult r = StepWith(2, {{"b", v1::FLOAT32, AsBytes(RandomFloats(kB, 3))}});
  ExpectStatus(r.status, absl::StatusCode::kInvalidArgument, "gradient.dtype float32");
  ExpectStatus(Upload(*srv_.stub, "g", "w", v1::BFLOAT16, Bf16(RandomFloats(kW, 3))).status(),
               absl::StatusCode::kInvalidArgument, "chunk.dtype bfloat16");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, WrongTotalSizeIsMissingOrOutOfRange) {
  // 1024 elements for a tensor of 1000: the last chunk runs past the end.
  StepOptions opts;
  opts.chunk_elements = 512;
  StepResult r = StepWith(2, {{"w", v1::FLOAT32, AsBytes(RandomFloats(1024, 3))}}, opts);
  ExpectStatus(r.status, absl::StatusCode::kInvalidArgument, "gradient.offset 512 + 512");
  // 768 elements: the first chunk was applied already and must be undone.
  r = StepWith(2, {{"w", v1::FLOAT32, AsBytes(RandomFloats(768, 3))}}, opts);
  ExpectStatus(r.status, absl::StatusCode::kInvalidArgument, "768 of 1000 elements arrived");
  ExpectStatus(Upload(*srv_.stub, "g", "w", v1::FLOAT32, AsBytes(RandomFloats(1001, 3))).status(),
               absl::StatusCode::kInvalidArgument, "chunk.offset 0 + 1001");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, OverlappingAndMisalignedChunks) {
  // Hand-built stream: [0, 512), then [256, 768): overlap after one range was applied.
  grpc::ClientContext ctx;
  auto stream = srv_.stub->Step(&ctx);
  v1::StepRequest req;
  req.mutable_begin()->set_group("g");
  req.mutable_begin()->set_step(2);
  req.mutable_begin()->set_weights(v1::NONE);
  ASSERT_TRUE(stream->Write(req));
  const Bytes g = AsBytes(RandomFloats(512, 3));
  for (int64_t off : {0, 256}) {
    req.Clear();
    req.mutable_gradient()->set_tensor("w");
    req.mutable_gradient()->set_offset(off);
    req.mutable_gradient()->set_dtype(v1::FLOAT32);
    req.mutable_gradient()->set_data(g.data(), g.size());
    stream->Write(req);
  }
  stream->WritesDone();
  v1::StepResponse resp;
  while (stream->Read(&resp)) {
  }
  ExpectStatus(FromGrpc(stream->Finish()), absl::StatusCode::kInvalidArgument,
               "overlap a chunk already sent");

  grpc::ClientContext ctx2;
  stream = srv_.stub->Step(&ctx2);
  req.Clear();
  req.mutable_begin()->set_group("g");
  req.mutable_begin()->set_step(2);
  ASSERT_TRUE(stream->Write(req));
  req.Clear();
  req.mutable_gradient()->set_tensor("w");
  req.mutable_gradient()->set_offset(100);
  req.mutable_gradient()->set_dtype(v1::FLOAT32);
  req.mutable_gradient()->set_data(g.data(), 256 * 4);
  stream->Write(req);
  stream->WritesDone();
  while (stream->Read(&resp)) {
  }
  ExpectStatus(FromGrpc(stream->Finish()), absl::StatusCode::kInvalidArgument,
               "gradient.offset 100 of tensor 'w' is not a multiple of 256");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, StepFromThePastIsAcknowledgedDuplicate) {
  StepResult r = StepWith(1, Grads(99));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.done.duplicate());
  EXPECT_EQ(r.done.version(), 1);
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, StepNumberMustBePositive) {
  StepResult r = StepWith(0, Grads(3));
  ExpectStatus(r.status, absl::StatusCode::kInvalidArgument, "begin.step must be >= 1");
  r = StepWith(-4, Grads(3));
  ExpectStatus(r.status, absl::StatusCode::kInvalidArgument, "begin.step must be >= 1");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, WeightsReturnOutOfRange) {
  StepOptions opts;
  opts.weights = static_cast<v1::WeightsReturn>(99);
  StepResult r = StepWith(2, Grads(3), opts);
  ExpectStatus(r.status, absl::StatusCode::kInvalidArgument, "begin.weights 99");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, WorkerOutsideRange) {
  StepOptions opts;
  opts.worker = 1;
  StepResult r = StepWith(2, Grads(3), opts);
  ExpectStatus(r.status, absl::StatusCode::kInvalidArgument, "begin.worker 1 is outside [0, 1)");
  opts.worker = -1;
  r = StepWith(2, Grads(3), opts);
  ExpectStatus(r.status, absl::StatusCode::kInvalidArgument, "begin.worker -1");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, StepBeforeWeightsUploadedIsFailedPrecondition) {
  v1::CreateGroupRequest create;
  create.set_group("empty");
  *create.add_tensors() = Tensor("w", v1::FLOAT32, {kW});
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ASSERT_TRUE(srv_.stub->CreateGroup(&ctx, create, &info).ok());
  StepResult r = RunStep(*srv_.stub, "empty", 1, {{"w", v1::FLOAT32, AsBytes(RandomFloats(kW, 6))}});
  ExpectStatus(r.status, absl::StatusCode::kFailedPrecondition, "never uploaded");
  // Half an upload is not enough either.
  ASSERT_TRUE(Upload(*srv_.stub, "empty", "w", v1::FLOAT32, AsBytes(RandomFloats(512, 7))).ok());
  r = RunStep(*srv_.stub, "empty", 1, {{"w", v1::FLOAT32, AsBytes(RandomFloats(kW, 6))}});
  ExpectStatus(r.status, absl::StatusCode::kFailedPrecondition, "never uploaded");
  ASSERT_TRUE(Upload(*srv_.stub, "empty", "w", v1::FLOAT32, AsBytes(RandomFloats(kW, 7))).ok());
  r = RunStep(*srv_.stub, "empty", 1, {{"w", v1::FLOAT32, AsBytes(RandomFloats(kW, 6))}});
  EXPECT_TRUE(r.status.ok()) << r.status;
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, StepLrMustBePositive) {
  StepOptions opts;
  opts.lr = 0.0f;
  StepResult r = StepWith(2, Grads(3), opts);
  ExpectStatus(r.status, absl::StatusCode::kInvalidArgument, "begin.lr");
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, StreamCancelledHalfWayLeavesGroupUnchanged) {
  grpc::ClientContext ctx;
  auto stream = srv_.stub->Step(&ctx);
  v1::StepRequest req;
  req.mutable_begin()->set_group("g");
  req.mutable_begin()->set_step(2);
  ASSERT_TRUE(stream->Write(req));
  const Bytes g = AsBytes(RandomFloats(512, 3));
  req.Clear();
  req.mutable_gradient()->set_tensor("w");
  req.mutable_gradient()->set_offset(0);
  req.mutable_gradient()->set_dtype(v1::FLOAT32);
  req.mutable_gradient()->set_data(g.data(), g.size());
  ASSERT_TRUE(stream->Write(req));
  // The whole gradient of "w" was sent; give the server time to take it in, then cancel before
  // the commit: nothing may be applied.
  absl::SleepFor(absl::Milliseconds(200));
  ctx.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ExpectUnchangedAndServing();
  // The group takes the same step afterwards.
  StepResult r = StepWith(2, Grads(3));
  EXPECT_TRUE(r.status.ok()) << r.status;
}

TEST_F(BadInputTest, CheckpointNamesThatLeaveTheDirectory) {
  for (const char* name : {"../x", "a/b", "..", ""}) {
    grpc::ClientContext ctx;
    v1::SaveCheckpointRequest req;
    req.set_name(name);
    v1::SaveCheckpointResponse resp;
    const absl::Status s = FromGrpc(srv_.stub->SaveCheckpoint(&ctx, req, &resp));
    // No --checkpoint_dir: FailedPrecondition first; the name check is covered in the
    // checkpoint tests where a directory is set.
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  }
  ExpectUnchangedAndServing();
}

TEST_F(BadInputTest, ImportStateWithWrongShape) {
  grpc::ClientContext ctx;
  v1::ImportStateResponse resp;
  auto writer = srv_.stub->ImportState(&ctx, &resp);
  v1::StateChunk c;
  c.set_group("g");
  c.set_tensor("w");
  c.set_key("absmax1");
  c.set_type(v1::STATE_ELEMENT_TYPE_FLOAT32);
  c.add_shape(3);  // a tensor of 1000 elements has 4 blocks
  c.set_data(std::string(12, '\0'));
  writer->Write(c);
  writer->WritesDone();
  ExpectStatus(FromGrpc(writer->Finish()), absl::StatusCode::kInvalidArgument,
               "shape holds 3 elements, expected 4 (tensor 'w', key 'absmax1')");
  ExpectUnchangedAndServing();
}

class MessageLimitTest : public BadInputTest {
 protected:
  void SetUp() override {
    server::ServerOptions options;
    options.max_message_bytes = 1 << 20;
    options.chunk_bytes = 256 << 10;
    Start(options);
  }
};

TEST_F(MessageLimitTest, MessageOverTheLimitIsResourceExhausted) {
  // Recreate a big tensor's worth of gradient in one 2 MiB message.
  v1::CreateGroupRequest create;
  create.set_group("big");
  *create.add_tensors() = Tensor("x", v1::FLOAT32, {1 << 19});
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ASSERT_TRUE(srv_.stub->CreateGroup(&ctx, create, &info).ok());
  ASSERT_TRUE(Upload(*srv_.stub, "big", "x", v1::FLOAT32, AsBytes(RandomFloats(1 << 19, 5)),
                     1 << 16)
                  .ok());
  StepOptions opts;
  opts.chunk_elements = 1 << 19;  // 2 MiB > 1 MiB limit
  StepResult r = RunStep(*srv_.stub, "big", 1, {{"x", v1::FLOAT32, AsBytes(RandomFloats(1 << 19, 4))}},
                         opts);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kResourceExhausted) << r.status;
  ExpectUnchangedAndServing();
}

}  // namespace
}  // namespace optd::testing
