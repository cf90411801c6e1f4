// End-to-end with the built `optd` binary as a separate process: checkpoints across kill -9,
// damaged checkpoint files, /metrics over plain HTTP, SIGTERM.
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kW = 6000;
constexpr int64_t kB = 700;

// Two groups: "main" (fp32 8-bit + bf16 32-bit states) and "clip" (percentile clipping, so the
// checkpoint carries gnorm_vec).
void CreateGroups(v1::Optimizer::Stub& stub) {
  CreateMainAndClipGroups(stub, kW, kB, v1::BFLOAT16);
}

void Steps(v1::Optimizer::Stub& stub, int from, int to) {
  for (int k = from; k <= to; ++k) {
    for (const char* name : {"main", "clip"}) {
      StepOptions opts;
      opts.lr = 1e-3f * static_cast<float>(k);  // a scheduler
      opts.chunk_elements = 2048;
      StepResult r =
          RunStep(stub, name, k,
                  {{"w", v1::FLOAT32, AsBytes(RandomFloats(kW, 100 + k, 0.1f))},
                   {"b", v1::BFLOAT16, Bf16(RandomFloats(kB, 200 + k, 0.1f))}},
                  opts);
      ASSERT_TRUE(r.status.ok()) << name << " step " << k << ": " << r.status;
    }
  }
}

absl::Status Save(v1::Optimizer::Stub& stub, const std::string& name) {
  grpc::ClientContext ctx;
  v1::SaveCheckpointRequest req;
  req.set_name(name);
  v1::SaveCheckpointResponse resp;
  return FromGrpc(stub.SaveCheckpoint(&ctx, req, &resp));
}

absl::Status Restore(v1::Optimizer::Stub& stub, const std::string& name) {
  grpc::ClientContext ctx;
  v1::RestoreCheckpointRequest req;
  req.set_name(name);
  v1::RestoreCheckpointResponse resp;
  return FromGrpc(stub.RestoreCheckpoint(&ctx, req, &resp));
}

TEST(ProcessTest, SaveKill9RestoreContinueIsBitForBitTheUninterruptedRun) {
  const std::string dir = MakeTempDir();
  // Uninterrupted reference run, in process.
  InProcessServer ref = StartInProcess();
  CreateGroups(*ref.stub);
  Steps(*ref.stub, 1, 6);

  auto a = ChildServer::Start({"--checkpoint_dir=" + dir});
  ASSERT_TRUE(a.ok()) << a.status();
  auto stub_a = MakeStub((*a)->address());
  CreateGroups(*stub_a);
  Steps(*stub_a, 1, 3);
  ASSERT_TRUE(Save(*stub_a, "ck").ok());
  Steps(*stub_a, 4, 4);  // progress after the checkpoint is lost with the process
  const int status = (*a)->Kill(SIGKILL);
  EXPECT_TRUE(WIFSIGNALED(status));

  auto b = ChildServer::Start({"--checkpoint_dir=" + dir});
  ASSERT_TRUE(b.ok()) << b.status();
  auto stub_b = MakeStub((*b)->address());
  ASSERT_TRUE(Restore(*stub_b, "ck").ok());
  {
    grpc::ClientContext ctx;
    v1::GetGroupRequest req;
    req.set_group("main");
    v1::GroupInfo info;
    ASSERT_TRUE(stub_b->GetGroup(&ctx, req, &info).ok());
    EXPECT_EQ(info.version(), 3);
    EXPECT_TRUE(info.weights_initialized());
  }
  Steps(*stub_b, 4, 6);
  for (const char* name : {"main", "clip"}) {
    auto wr = Pull(*ref.stub, name);
    auto wb = Pull(*stub_b, name);
    ASSERT_TRUE(wr.ok() && wb.ok());
    EXPECT_TRUE(*wr == *wb) << name << ": weights differ";
    auto sr = Export(*ref.stub, name);
    auto sb = Export(*stub_b, name);
    ASSERT_TRUE(sr.ok() && sb.ok());
    EXPECT_TRUE(*sr == *sb) << name << ": states differ";
    if (std::string(name) == "clip") {
      EXPECT_EQ((*sb)["w"].count("gnorm_vec"), 1u);
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(ProcessTest, TruncatedOrCorruptedCheckpointIsRefused) {
  const std::string dir = MakeTempDir();
  auto child = ChildServer::Start({"--checkpoint_dir=" + dir});
  ASSERT_TRUE(child.ok()) << child.status();
  auto stub = MakeStub((*child)->address());
  CreateGroups(*stub);
  Steps(*stub, 1, 2);
  ASSERT_TRUE(Save(*stub, "good").ok());
  auto before = Pull(*stub, "main");
  ASSERT_TRUE(before.ok());

  const std::string good = dir + "/good";
  const auto size = std::filesystem::file_size(good);
  std::filesystem::copy_file(good, dir + "/short");
  std::filesystem::resize_file(dir + "/short", size / 2);
  std::filesystem::copy_file(good, dir + "/flipped");
  {
    std::fstream f(dir + "/flipped", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(size / 2));
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.write(&c, 1);
  }
  for (const char* name : {"short", "flipped"}) {
    const absl::Status s = Restore(*stub, name);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << name << ": " << s;
    // The checkpoint's name, not the server's directory.
    EXPECT_THAT(std::string(s.message()), HasSubstr(std::string("checkpoint ") + name));
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr(dir)));
  }
  EXPECT_EQ(Restore(*stub, "missing").code(), absl::StatusCode::kNotFound);
  for (const char* name : {"../good", "sub/good", ".."}) {
    const absl::Status s = Save(*stub, name);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("no '/', no '..'"));
  }
  // The live groups are untouched and the server serves; the good file still restores.
  auto after = Pull(*stub, "main");
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(*after == *before);
  EXPECT_TRUE(Restore(*stub, "good").ok());
  Steps(*stub, 3, 3);
  std::filesystem::remove_all(dir);
}

TEST(ProcessTest, MetricsScrapeShowsStepsBytesAndMemoryMove) {
  auto child = ChildServer::Start({});
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_GT((*child)->metrics_port(), 0);
  auto stub = MakeStub((*child)->address());
  auto before = HttpGet((*child)->metrics_port(), "/metrics");
  ASSERT_TRUE(before.ok()) << before.status();
  // The CPU engine keeps everything in host memory; the CUDA engine on the device.
  const std::string loc = TestBackend() == "cuda" ? "location=\"device\"" : "location=\"host\"";
  EXPECT_LE(MetricValue(*before, "optd_engine_state_bytes", loc), 0);

  CreateGroups(*stub);
  Steps(*stub, 1, 2);
  auto after = HttpGet((*child)->metrics_port(), "/metrics");
  ASSERT_TRUE(after.ok()) << after.status();
  const std::string& m = *after;
  EXPECT_EQ(MetricValue(m, "optd_steps_total", "group=\"main\""), 2) << m;
  EXPECT_EQ(MetricValue(m, "optd_step_duration_seconds_count", "group=\"main\""), 2);
  const double grad_bytes = 2.0 * (kW * 4 + kB * 2);
  EXPECT_EQ(MetricValue(m, "optd_gradient_bytes_received_total", "group=\"main\""), grad_bytes);
  EXPECT_EQ(MetricValue(m, "optd_weight_bytes_sent_total", "group=\"main\""), 2.0 * (kW * 4 + kB * 2));
  EXPECT_EQ(MetricValue(m, "optd_weight_bytes", "group=\"main\"," + loc), kW * 4 + kB * 2);
  EXPECT_GT(MetricValue(m, "optd_state_bytes", "group=\"main\"," + loc), 0);
  EXPECT_GT(MetricValue(m, "optd_engine_state_bytes", loc), 0);
  EXPECT_GT(MetricValue(m, "optd_engine_weight_bytes", loc), 0);
  EXPECT_EQ(MetricValue(m, "optd_rpcs_total", "code=\"OK\",method=\"Step\""), 4);
  EXPECT_THAT(m, HasSubstr("hostname=\""));
  // The gpu label joins DCGM's series; a CPU server has none (no empty gpu="").
  if (TestBackend() == "cuda") {
    EXPECT_THAT(m, HasSubstr("gpu=\"0\""));
  } else {
    EXPECT_THAT(m, Not(HasSubstr("gpu=")));
  }
}

TEST(ProcessTest, SigtermFinishesTheInFlightStepAndExitsZero) {
  auto child = ChildServer::Start({});
  ASSERT_TRUE(child.ok()) << child.status();
  auto stub = MakeStub((*child)->address());
  CreateGroups(*stub);
  grpc::ClientContext ctx;
  auto stream = stub->Step(&ctx);
  v1::StepRequest req;
  req.mutable_begin()->set_group("main");
  req.mutable_begin()->set_step(1);
  req.mutable_begin()->set_weights(v1::NONE);
  ASSERT_TRUE(stream->Write(req));
  const Bytes g = AsBytes(RandomFloats(kW, 5, 0.1f));
  req.Clear();
  req.mutable_gradient()->set_tensor("w");
  req.mutable_gradient()->set_dtype(v1::FLOAT32);
  req.mutable_gradient()->set_data(g.data(), g.size());
  ASSERT_TRUE(stream->Write(req));
  // SIGTERM only once the server has taken the call and its gradient: a call that has not
  // reached the server when it stops accepting is refused with UNAVAILABLE (not this test's
  // subject).
  double received = -1;
  for (int i = 0; i < 500 && received < static_cast<double>(g.size()); ++i) {
    auto scrape = HttpGet((*child)->metrics_port(), "/metrics");
    if (scrape.ok()) {
      received = MetricValue(*scrape, "optd_gradient_bytes_received_total", "group=\"main\"");
    }
    if (received < static_cast<double>(g.size())) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ASSERT_GE(received, static_cast<double>(g.size()));
  int exit_status = -1;
  std::thread killer([&] { exit_status = (*child)->Kill(SIGTERM); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  req.Clear();
  req.mutable_commit();
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  v1::StepResponse resp;
  bool done = false;
  while (stream->Read(&resp)) done = done || resp.has_done();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(done);
  killer.join();
  EXPECT_TRUE(WIFEXITED(exit_status) && WEXITSTATUS(exit_status) == 0) << exit_status;
}

TEST(ProcessTest, CheckpointDirIsCreatedAtStartOrTheStartFails) {
  const std::string base = MakeTempDir();
  const std::string nested = base + "/a/b/ckpt";
  {
    auto child = ChildServer::Start({"--checkpoint_dir=" + nested});
    ASSERT_TRUE(child.ok()) << child.status();
    EXPECT_TRUE(std::filesystem::is_directory(nested));
    auto stub = MakeStub((*child)->address());
    CreateGroups(*stub);
    EXPECT_TRUE(Save(*stub, "first").ok());
    EXPECT_TRUE(std::filesystem::exists(nested + "/first"));
  }
  // A regular file where the directory should be: optd refuses to start.
  const std::string file = base + "/plain_file";
  { std::ofstream(file) << "x"; }
  auto bad = ChildServer::Start({"--checkpoint_dir=" + file + "/ckpt"});
  EXPECT_FALSE(bad.ok());
  std::filesystem::remove_all(base);
}

}  // namespace
}  // namespace optd::testing
