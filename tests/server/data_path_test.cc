// The data path through the real server: a step over K concurrent streams, and the rule that no
// network I/O happens under a group's mutex (a stalled subscriber, reader or trainer never
// delays another client).
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kW = 70'000;  // fp32, 8-bit states, ragged last block
constexpr int64_t kB = 3'000;   // bf16, 32-bit states (under min_8bit_size)

void CreateGroup(v1::Optimizer::Stub& stub, const std::string& name, int num_workers = 1,
                 v1::SyncMode mode = v1::SYNC, int64_t sync_timeout_ms = 0) {
  v1::CreateGroupRequest create;
  create.set_group(name);
  *create.add_tensors() = Tensor("w", v1::FLOAT32, {kW});
  *create.add_tensors() = Tensor("b", v1::BFLOAT16, {kB});
  create.set_num_workers(num_workers);
  create.set_mode(mode);
  create.set_sync_timeout_ms(sync_timeout_ms);
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ASSERT_TRUE(stub.CreateGroup(&ctx, create, &info).ok());
  ASSERT_TRUE(Upload(stub, name, "w", v1::FLOAT32, AsBytes(RandomFloats(kW, 1))).ok());
  ASSERT_TRUE(Upload(stub, name, "b", v1::BFLOAT16, Bf16(RandomFloats(kB, 2))).ok());
}

std::vector<Grad> Grads(int seed) {
  return {{"w", v1::FLOAT32, AsBytes(RandomFloats(kW, 100 + seed, 0.1f))},
          {"b", v1::BFLOAT16, Bf16(RandomFloats(kB, 200 + seed, 0.1f))}};
}

struct GroupState {
  int64_t version = -1;
  std::map<std::string, Bytes> weights;
  std::map<std::string, std::map<std::string, Bytes>> states;
};

GroupState Read(v1::Optimizer::Stub& stub, const std::string& group) {
  GroupState s;
  auto w = Pull(stub, group, &s.version);
  EXPECT_TRUE(w.ok()) << w.status();
  if (w.ok()) s.weights = *w;
  auto st = Export(stub, group);
  EXPECT_TRUE(st.ok()) << st.status();
  if (st.ok()) s.states = *st;
  return s;
}

bool Same(const GroupState& a, const GroupState& b) {
  return a.version == b.version && a.weights == b.weights && a.states == b.states;
}

TEST(KStreamStepTest, SameResultAsOneStream) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "one");
  CreateGroup(*srv.stub, "many");
  for (int step = 1; step <= 3; ++step) {
    StepOptions one;
    one.chunk_elements = 2048;
    StepResult a = RunStep(*srv.stub, "one", step, Grads(step), one);
    ASSERT_TRUE(a.status.ok()) << a.status;
    StepOptions many = one;
    many.streams = 3;  // "w" is spread over all three streams, chunk by chunk
    StepResult b = RunStep(*srv.stub, "many", step, Grads(step), many);
    ASSERT_TRUE(b.status.ok()) << b.status;
    EXPECT_EQ(b.done.version(), a.done.version());
    EXPECT_EQ(b.done.step(), step);
    EXPECT_FALSE(b.done.duplicate());
    EXPECT_TRUE(a.weights == b.weights) << "step " << step;
    ASSERT_EQ(b.weights["w"].size(), static_cast<size_t>(kW * 4));
    ASSERT_EQ(b.weights["b"].size(), static_cast<size_t>(kB * 2));
  }
  const GroupState a = Read(*srv.stub, "one");
  const GroupState b = Read(*srv.stub, "many");
  EXPECT_TRUE(a.weights == b.weights);
  EXPECT_TRUE(a.states == b.states);
  EXPECT_EQ(a.version, 3);
  EXPECT_EQ(b.version, 3);
  // A retry of the last step over K streams is acknowledged as a duplicate by every stream.
  StepOptions many;
  many.streams = 3;
  many.chunk_elements = 2048;
  StepResult again = RunStep(*srv.stub, "many", 3, Grads(3), many);
  ASSERT_TRUE(again.status.ok()) << again.status;
  EXPECT_TRUE(again.done.duplicate());
  EXPECT_TRUE(Same(b, Read(*srv.stub, "many")));
}

TEST(KStreamStepTest, OneStreamFailingUndoesTheWholeStep) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g");
  ASSERT_TRUE(RunStep(*srv.stub, "g", 1, Grads(1)).status.ok());
  const GroupState before = Read(*srv.stub, "g");
  StepOptions opts;
  opts.streams = 4;
  opts.chunk_elements = 1024;
  opts.bad_stream = 2;
  opts.attempt = 11;
  StepResult r = RunStep(*srv.stub, "g", 2, Grads(2), opts);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  EXPECT_THAT(std::string(r.status.message()), HasSubstr("gradient.offset"));
  EXPECT_TRUE(Same(before, Read(*srv.stub, "g")));
  // The same step then goes through (a new attempt).
  opts.bad_stream = -1;
  opts.attempt = 12;
  r = RunStep(*srv.stub, "g", 2, Grads(2), opts);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.done.version(), 2);
}

// Some streams of a failed attempt never reached the server: its failure stays for their sake
// (Note [A failed step stays to fail its latecomers]), but a retry, with another attempt value,
// starts afresh and goes through instead of inheriting the failure.
TEST(KStreamStepTest, RetryIsNotALatecomerOfTheFailedAttempt) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g", 1, v1::SYNC, /*sync_timeout_ms=*/60'000);
  StepOptions opts;
  opts.streams = 3;
  opts.chunk_elements = 1024;
  opts.bad_stream = 2;
  opts.first_stream = 2;  // streams 0 and 1 of this attempt never arrive
  opts.attempt = 21;
  StepResult r = RunStep(*srv.stub, "g", 1, Grads(1), opts);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  // The retry: all three streams, another attempt value. With the failed attempt's value (or
  // none) streams 0 and 1 would be taken for its late siblings and fail at once.
  opts.bad_stream = -1;
  opts.first_stream = 0;
  opts.attempt = 22;
  r = RunStep(*srv.stub, "g", 1, Grads(1), opts);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.done.version(), 1);
}

TEST(KStreamStepTest, MissingStreamTimesOutAndNothingIsApplied) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g", 1, v1::SYNC, /*sync_timeout_ms=*/300);
  ASSERT_TRUE(RunStep(*srv.stub, "g", 1, Grads(1)).status.ok());
  const GroupState before = Read(*srv.stub, "g");
  StepOptions opts;
  opts.streams = 3;
  opts.chunk_elements = 4096;
  opts.silent_stream = 1;
  opts.deadline_ms = 5000;
  StepResult r = RunStep(*srv.stub, "g", 2, Grads(2), opts);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDeadlineExceeded) << r.status;
  EXPECT_THAT(std::string(r.status.message()), HasSubstr("did not commit in time"));
  EXPECT_TRUE(Same(before, Read(*srv.stub, "g")));
}

// A stream that carries nothing and asks for no weights (a trainer's empty bucket) must not
// decide what the other streams get back, whichever commits last.
TEST(KStreamStepTest, EachStreamGetsWhatItAskedFor) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g");
  for (int step = 1; step <= 12; ++step) {
    StepOptions opts;
    opts.streams = 3;                 // two chunks: stream 2 carries nothing
    opts.chunk_elements = 1 << 16;    // "w" in two chunks, "b" ... dealt round robin
    opts.weights_none_stream = 2;
    opts.late_commit_stream = step % 2 == 0 ? 2 : -1;  // the empty stream commits last
    std::vector<Grad> grads = {Grads(step)[0]};
    StepResult r = RunStep(*srv.stub, "g", step, grads, opts);
    ASSERT_TRUE(r.status.ok()) << r.status;
    ASSERT_EQ(r.weights["w"].size(), static_cast<size_t>(kW * 4)) << "step " << step;
    EXPECT_EQ(r.weights.count("b"), 0u);
  }
}

TEST(KStreamStepTest, BadStreamCountsAreRejected) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g");
  for (int streams : {-1, 65}) {
    grpc::ClientContext ctx;
    auto stream = srv.stub->Step(&ctx);
    v1::StepRequest begin;
    begin.mutable_begin()->set_group("g");
    begin.mutable_begin()->set_step(1);
    begin.mutable_begin()->set_streams(streams);
    ASSERT_TRUE(stream->Write(begin));
    stream->WritesDone();
    v1::StepResponse resp;
    while (stream->Read(&resp)) {
    }
    const grpc::Status s = stream->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("begin.streams"));
  }
  grpc::ClientContext ctx;
  auto stream = srv.stub->Step(&ctx);
  v1::StepRequest begin;
  begin.mutable_begin()->set_group("g");
  begin.mutable_begin()->set_step(1);
  begin.mutable_begin()->set_streams(2);
  begin.mutable_begin()->set_stream_index(2);
  ASSERT_TRUE(stream->Write(begin));
  stream->WritesDone();
  v1::StepResponse resp;
  while (stream->Read(&resp)) {
  }
  const grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("begin.stream_index 2"));
}

// A sharded trainer sends a shard no gradient in some steps: its next step number is then more
// than one ahead, which a single-worker group accepts.
TEST(StepNumberTest, SingleWorkerMaySkipStepNumbers) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g");
  ASSERT_TRUE(RunStep(*srv.stub, "g", 1, Grads(1)).status.ok());
  StepResult r = RunStep(*srv.stub, "g", 4, Grads(4));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.done.version(), 2);
  r = RunStep(*srv.stub, "g", 3, Grads(3));  // behind the last applied: a duplicate
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.done.duplicate());
  EXPECT_EQ(r.done.version(), 2);
}

// Steps of another client at full speed while `stall` holds a call open and never reads.
void ExpectStepsUnaffected(InProcessServer& srv, const std::string& group, int first_step,
                           int steps, int worker = 0) {
  for (int s = first_step; s < first_step + steps; ++s) {
    StepOptions opts;
    opts.worker = worker;
    opts.deadline_ms = 20'000;  // a step blocked by the stalled call fails here
    opts.weights = v1::ALL;
    StepResult r = RunStep(*srv.stub, group, s, Grads(s), opts);
    ASSERT_TRUE(r.status.ok()) << "step " << s << ": " << r.status;
  }
}

TEST(NoIoUnderLockTest, StalledSubscriberDoesNotDelaySteps) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g");
  grpc::ClientContext ctx;
  v1::SubscribeRequest req;
  req.set_group("g");
  req.set_send_current(true);
  auto reader = srv.stub->Subscribe(&ctx, req);  // never read
  ExpectStepsUnaffected(srv, "g", 1, 12);
  // The subscriber still gets the latest version when it reads again (intermediate ones may be
  // skipped).
  v1::WeightsMessage m;
  int64_t last_version = -1;
  while (reader->Read(&m)) {
    if (m.version_complete()) last_version = m.version();
    if (last_version == 12) break;
  }
  EXPECT_EQ(last_version, 12);
  ctx.TryCancel();
}

TEST(NoIoUnderLockTest, StalledPullReaderDoesNotBlockTheGroup) {
  InProcessServer srv = StartInProcess();
  v1::CreateGroupRequest create;
  create.set_group("big");
  *create.add_tensors() = Tensor("x", v1::FLOAT32, {8 << 20});  // 32 MiB, more than gRPC buffers
  grpc::ClientContext cctx;
  v1::GroupInfo info;
  ASSERT_TRUE(srv.stub->CreateGroup(&cctx, create, &info).ok());
  ASSERT_TRUE(Upload(*srv.stub, "big", "x", v1::FLOAT32, AsBytes(RandomFloats(8 << 20, 9)),
                     1 << 18)
                  .ok());
  grpc::ClientContext ctx;
  v1::PullWeightsRequest pull;
  pull.set_group("big");
  auto reader = srv.stub->PullWeights(&ctx, pull);  // never read
  v1::WeightsMessage first;
  ASSERT_TRUE(reader->Read(&first));  // the pull is under way, and then stalls
  std::vector<Grad> g = {{"x", v1::FLOAT32, AsBytes(RandomFloats(8 << 20, 10, 0.1f))}};
  for (int s = 1; s <= 3; ++s) {
    StepOptions opts;
    opts.deadline_ms = 20'000;
    opts.chunk_elements = 1 << 18;
    StepResult r = RunStep(*srv.stub, "big", s, g, opts);
    ASSERT_TRUE(r.status.ok()) << r.status;
  }
  grpc::ClientContext lctx;
  lctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListGroupsResponse list;
  EXPECT_TRUE(srv.stub->ListGroups(&lctx, v1::ListGroupsRequest(), &list).ok());
  ctx.TryCancel();
}

TEST(NoIoUnderLockTest, StalledTrainerMidStepDoesNotBlockOthers) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "g", 2, v1::ASYNC);
  // Worker 0 begins step 1, sends part of it and stalls without committing.
  grpc::ClientContext ctx;
  auto stalled = srv.stub->Step(&ctx);
  v1::StepRequest req;
  req.mutable_begin()->set_group("g");
  req.mutable_begin()->set_worker(0);
  req.mutable_begin()->set_step(1);
  ASSERT_TRUE(stalled->Write(req));
  const Bytes part = AsBytes(RandomFloats(4096, 11));
  req.Clear();
  req.mutable_gradient()->set_tensor("w");
  req.mutable_gradient()->set_dtype(v1::FLOAT32);
  req.mutable_gradient()->set_data(part.data(), part.size());
  ASSERT_TRUE(stalled->Write(req));
  // Worker 1 steps; pulls, exports, listings and uploads go through.
  ExpectStepsUnaffected(srv, "g", 1, 5, /*worker=*/1);
  grpc::ClientContext gctx;
  gctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetGroupRequest get;
  get.set_group("g");
  v1::GroupInfo info;
  ASSERT_TRUE(srv.stub->GetGroup(&gctx, get, &info).ok());
  EXPECT_EQ(info.version(), 5);
  EXPECT_TRUE(Pull(*srv.stub, "g").ok());
  EXPECT_TRUE(Export(*srv.stub, "g").ok());
  EXPECT_TRUE(Upload(*srv.stub, "g", "b", v1::BFLOAT16, Bf16(RandomFloats(kB, 2))).ok());
  ctx.TryCancel();
  EXPECT_EQ(stalled->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

}  // namespace
}  // namespace optd::testing
