// Multi-worker groups through the real API: sync averaging (bit for bit against one worker
// pushing the average), a missing worker failing the step for everyone, async staleness, retries.
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/widen.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kW = 5000;  // 8-bit states, ragged last block
constexpr int64_t kV = 300;   // 32-bit states

void CreateGroup(v1::Optimizer::Stub& stub, const std::string& name, int workers, v1::SyncMode mode,
                 int64_t timeout_ms = 0, int64_t max_staleness = 0) {
  v1::CreateGroupRequest create;
  create.set_group(name);
  *create.add_tensors() = Tensor("w", v1::FLOAT32, {50, 100});
  *create.add_tensors() = Tensor("v", v1::FLOAT32, {kV});
  create.set_num_workers(workers);
  create.set_mode(mode);
  create.set_sync_timeout_ms(timeout_ms);
  create.set_max_staleness(max_staleness);
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ASSERT_TRUE(stub.CreateGroup(&ctx, create, &info).ok());
  ASSERT_TRUE(Upload(stub, name, "w", v1::FLOAT32, AsBytes(RandomFloats(kW, 7))).ok());
  ASSERT_TRUE(Upload(stub, name, "v", v1::FLOAT32, AsBytes(RandomFloats(kV, 8))).ok());
}

// Worker w's gradient of tensor `t` at step k: worker 1 sends bf16 (widened by the server).
Grad WorkerGrad(int w, int k, const std::string& t, int64_t n) {
  const std::vector<float> g = RandomFloats(n, static_cast<uint32_t>(1000 * k + 10 * w + n), 0.05f);
  if (w == 1) return {t, v1::BFLOAT16, Bf16(g)};
  return {t, v1::FLOAT32, AsBytes(g)};
}

std::vector<float> Widened(const Grad& g) {
  const int64_t n = static_cast<int64_t>(g.data.size()) / (g.dtype == v1::FLOAT32 ? 4 : 2);
  std::vector<float> out(static_cast<size_t>(n));
  server::WidenToFloat(g.dtype == v1::FLOAT32 ? core::DType::kFloat32 : core::DType::kBFloat16,
                       g.data.data(), n, out.data());
  return out;
}

// Note [Sync averaging order] of server/sync_round.h: ((g0 + g1) + g2) / 3 in fp32.
Grad Average(const std::vector<Grad>& grads) {
  std::vector<float> sum = Widened(grads[0]);
  for (size_t w = 1; w < grads.size(); ++w) {
    const std::vector<float> g = Widened(grads[w]);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] = sum[i] + g[i];
  }
  const float n = static_cast<float>(grads.size());
  for (float& x : sum) x = x / n;
  return {grads[0].tensor, v1::FLOAT32, AsBytes(sum)};
}

TEST(MultiWorkerTest, ThreeSyncWorkersEqualOneWorkerPushingTheirAverage) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "sync", 3, v1::SYNC);
  CreateGroup(*srv.stub, "single", 1, v1::SYNC);
  for (int k = 1; k <= 3; ++k) {
    std::vector<std::vector<Grad>> per_worker(3);
    std::vector<Grad> w_grads, v_grads;
    for (int w = 0; w < 3; ++w) {
      per_worker[w] = {WorkerGrad(w, k, "w", kW), WorkerGrad(w, k, "v", kV)};
      w_grads.push_back(per_worker[w][0]);
      v_grads.push_back(per_worker[w][1]);
    }
    std::vector<StepResult> results(3);
    std::vector<std::thread> threads;
    for (int w = 0; w < 3; ++w) {
      threads.emplace_back([&, w] {
        StepOptions opts;
        opts.worker = w;
        opts.chunk_elements = 1024;
        results[w] = RunStep(*srv.stub, "sync", k, per_worker[w], opts);
      });
    }
    for (auto& t : threads) t.join();
    StepOptions opts;
    opts.chunk_elements = 1024;
    StepResult single = RunStep(*srv.stub, "single", k, {Average(w_grads), Average(v_grads)}, opts);
    ASSERT_TRUE(single.status.ok()) << single.status;
    for (int w = 0; w < 3; ++w) {
      ASSERT_TRUE(results[w].status.ok()) << "worker " << w << ": " << results[w].status;
      EXPECT_EQ(results[w].done.version(), k);
      EXPECT_FALSE(results[w].done.duplicate());
      EXPECT_TRUE(results[w].weights == single.weights) << "worker " << w << " step " << k;
    }
  }
  auto a = Pull(*srv.stub, "sync");
  auto b = Pull(*srv.stub, "single");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(*a == *b) << "weights differ";
  auto sa = Export(*srv.stub, "sync");
  auto sb = Export(*srv.stub, "single");
  ASSERT_TRUE(sa.ok() && sb.ok());
  EXPECT_TRUE(*sa == *sb) << "optimizer states differ";

  // A retried push of an applied step is acknowledged, not applied again.
  StepOptions opts;
  opts.worker = 2;
  StepResult retry = RunStep(*srv.stub, "sync", 3, {WorkerGrad(2, 3, "w", kW)}, opts);
  ASSERT_TRUE(retry.status.ok()) << retry.status;
  EXPECT_TRUE(retry.done.duplicate());
  EXPECT_EQ(retry.done.version(), 3);
  auto after = Pull(*srv.stub, "sync");
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(*after == *a);
}

TEST(MultiWorkerTest, MissingWorkerFailsTheStepForEveryoneAndAppliesNothing) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "sync", 3, v1::SYNC, /*timeout_ms=*/300);
  auto before = Pull(*srv.stub, "sync");
  ASSERT_TRUE(before.ok());
  std::vector<StepResult> results(2);
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      StepOptions opts;
      opts.worker = w;
      results[w] = RunStep(*srv.stub, "sync", 1,
                           {WorkerGrad(w, 1, "w", kW), WorkerGrad(w, 1, "v", kV)}, opts);
    });
  }
  for (auto& t : threads) t.join();
  for (int w = 0; w < 2; ++w) {
    EXPECT_EQ(results[w].status.code(), absl::StatusCode::kDeadlineExceeded) << results[w].status;
    EXPECT_THAT(std::string(results[w].status.message()),
                HasSubstr("worker(s) 2 did not push within sync_timeout_ms=300"));
  }
  int64_t version = -1;
  auto after = Pull(*srv.stub, "sync", &version);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(version, 0);
  EXPECT_TRUE(*after == *before);

  // The step can be retried by all three.
  std::vector<StepResult> retry(3);
  threads.clear();
  for (int w = 0; w < 3; ++w) {
    threads.emplace_back([&, w] {
      StepOptions opts;
      opts.worker = w;
      retry[w] = RunStep(*srv.stub, "sync", 1,
                         {WorkerGrad(w, 1, "w", kW), WorkerGrad(w, 1, "v", kV)}, opts);
    });
  }
  for (auto& t : threads) t.join();
  for (int w = 0; w < 3; ++w) {
    EXPECT_TRUE(retry[w].status.ok()) << retry[w].status;
    EXPECT_EQ(retry[w].done.version(), 1);
  }
}

TEST(MultiWorkerTest, ShutdownEndsAWaitingSyncStepWithoutApplyingIt) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "sync", 2, v1::SYNC, /*timeout_ms=*/600000);
  StepResult result;
  std::thread worker([&] {
    result = RunStep(*srv.stub, "sync", 1, {WorkerGrad(0, 1, "w", kW), WorkerGrad(0, 1, "v", kV)});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto start = std::chrono::steady_clock::now();
  srv.server->Shutdown(absl::Seconds(20));
  worker.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(result.status.code(), absl::StatusCode::kUnavailable) << result.status;
  EXPECT_THAT(std::string(result.status.message()), HasSubstr("shutting down"));
}

TEST(MultiWorkerTest, AsyncAppliesEachPushAndRejectsStaleGradients) {
  InProcessServer srv = StartInProcess();
  CreateGroup(*srv.stub, "async", 2, v1::ASYNC, 0, /*max_staleness=*/1);
  StepOptions w0;
  w0.worker = 0;
  StepResult r = RunStep(*srv.stub, "async", 1, {WorkerGrad(0, 1, "w", kW)}, w0);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.done.version(), 1);
  w0.base_version = 1;
  r = RunStep(*srv.stub, "async", 2, {WorkerGrad(0, 2, "w", kW)}, w0);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.done.version(), 2);

  StepOptions w1;
  w1.worker = 1;
  w1.base_version = 0;  // 0 < version 2 - max_staleness 1
  r = RunStep(*srv.stub, "async", 1, {WorkerGrad(1, 1, "w", kW)}, w1);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition) << r.status;
  EXPECT_THAT(std::string(r.status.message()), HasSubstr("begin.base_version 0 is too stale"));
  w1.base_version = 1;
  r = RunStep(*srv.stub, "async", 1, {WorkerGrad(1, 1, "w", kW)}, w1);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.done.version(), 3);

  // Worker 0 retries its step 2: acknowledged, not applied.
  r = RunStep(*srv.stub, "async", 2, {WorkerGrad(0, 2, "w", kW)}, w0);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.done.duplicate());
  EXPECT_EQ(r.done.version(), 3);
}

TEST(MultiWorkerTest, DifferentGroupsStepInParallel) {
  InProcessServer srv = StartInProcess();
  for (int g = 0; g < 4; ++g) CreateGroup(*srv.stub, absl::StrCat("g", g), 1, v1::SYNC);
  std::vector<absl::Status> status(4);
  std::vector<std::thread> threads;
  for (int g = 0; g < 4; ++g) {
    threads.emplace_back([&, g] {
      for (int k = 1; k <= 3 && status[g].ok(); ++k) {
        status[g] = RunStep(*srv.stub, absl::StrCat("g", g), k, {WorkerGrad(0, k, "w", kW)}).status;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int g = 0; g < 4; ++g) EXPECT_TRUE(status[g].ok()) << status[g];
  // Same gradients, same start: the groups agree.
  auto a = Pull(*srv.stub, "g0");
  auto b = Pull(*srv.stub, "g3");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(*a == *b);
}

}  // namespace
}  // namespace optd::testing
