// The colocated data path (docs/colocated.md) through the C++ client against a real optd server
// process on 127.0.0.1: steps over a shared-memory region give bit-identical weights to the same
// steps over gRPC (fp32 and bf16, several steps, one and several streams, a 2-worker sync group),
// and a killed client's region is released.
#include <dirent.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "optd/client/client.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/metrics_http_get.h"
#include "tests/client/server_process.h"

extern char** environ;

namespace optd::client {
namespace {

using testing::ServerProcess;

std::vector<uint8_t> RandomBytes(const TensorSpec& spec, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  const int64_t n = spec.numel();
  std::vector<uint8_t> out(static_cast<size_t>(n * DTypeSize(spec.dtype)));
  for (int64_t i = 0; i < n; ++i) {
    const float f = dist(rng);
    if (spec.dtype == DType::kFloat32) {
      std::memcpy(out.data() + i * 4, &f, 4);
    } else {
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      const auto b = static_cast<uint16_t>(bits >> 16);
      std::memcpy(out.data() + i * 2, &b, 2);
    }
  }
  return out;
}

const std::vector<TensorSpec> kSpecs = {{"big", DType::kFloat32, {10007}},
                                        {"odd", DType::kFloat32, {37, 29}},
                                        {"half", DType::kBFloat16, {3001}},
                                        {"tiny", DType::kFloat32, {5}},
                                        {"wide", DType::kBFloat16, {2, 4099}}};

// Region layout: all gradients, then all weights, each tensor at a 64-byte aligned offset.
struct Layout {
  std::vector<int64_t> grad_offset, weight_offset;
  int64_t bytes = 0;
  Layout() {
    auto place = [&](int64_t n) {
      const int64_t at = bytes;
      bytes += (n + 63) / 64 * 64;
      return at;
    };
    for (const TensorSpec& s : kSpecs) grad_offset.push_back(place(s.numel() * DTypeSize(s.dtype)));
    for (const TensorSpec& s : kSpecs) {
      weight_offset.push_back(place(s.numel() * DTypeSize(s.dtype)));
    }
  }
};

class ColocatedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string binary = testing::ServerBinary();
    if (binary.empty()) GTEST_SKIP() << "OPTD_SERVER_BIN is not set (ctest sets it)";
    workdir_ = testing::MakeTempDir("optd-colocated-test");
    auto s = ServerProcess::Start(binary, workdir_,
                                  {"--metrics_port_file=" + workdir_ + "/metrics_port"});
    ASSERT_TRUE(s.ok()) << s.status();
    server_.reset(*s);
    std::ifstream in(workdir_ + "/metrics_port");
    in >> metrics_port_;
    ASSERT_GT(metrics_port_, 0);
  }

  std::unique_ptr<Client> Connect(int streams = 1) {
    ClientOptions options;
    options.streams = streams;
    options.chunk_bytes = 4096;
    auto c = Client::Create(server_->target(), options);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  void CreateAndUpload(Client& c, const std::string& group, int workers) {
    GroupOptions options;
    options.num_workers = workers;
    options.hyperparameters.lr = 1e-2f;
    options.hyperparameters.min_8bit_size = 1024;  // 8-bit states for the larger tensors
    ASSERT_TRUE(c.CreateGroup(group, kSpecs, options).ok());
    std::vector<std::vector<uint8_t>> init;
    std::vector<ConstBuffer> buffers;
    for (size_t i = 0; i < kSpecs.size(); ++i) init.push_back(RandomBytes(kSpecs[i], 100 + i));
    for (size_t i = 0; i < kSpecs.size(); ++i) {
      buffers.push_back({kSpecs[i].name, kSpecs[i].dtype, init[i].data(), kSpecs[i].numel()});
    }
    auto up = c.UploadWeights(group, buffers);
    ASSERT_TRUE(up.ok()) << up.status();
  }

  // The gradient of tensor i at step k of worker w.
  static std::vector<uint8_t> Gradient(size_t i, int64_t k, int w) {
    return RandomBytes(kSpecs[i], static_cast<uint32_t>(1000 * k + 10 * i + 7 * w));
  }

  // `steps` steps of worker w over gRPC; returns the weights streamed back at the last step.
  static std::vector<std::vector<uint8_t>> WireSteps(Client& c, const std::string& group,
                                                     int steps, int w, int streams) {
    std::vector<std::vector<uint8_t>> weights;
    for (const TensorSpec& s : kSpecs) {
      weights.emplace_back(static_cast<size_t>(s.numel() * DTypeSize(s.dtype)));
    }
    for (int64_t k = 1; k <= steps; ++k) {
      std::vector<std::vector<uint8_t>> grads;
      std::vector<ConstBuffer> in;
      std::vector<MutableBuffer> out;
      for (size_t i = 0; i < kSpecs.size(); ++i) grads.push_back(Gradient(i, k, w));
      for (size_t i = 0; i < kSpecs.size(); ++i) {
        in.push_back({kSpecs[i].name, kSpecs[i].dtype, grads[i].data(), kSpecs[i].numel()});
        out.push_back({kSpecs[i].name, kSpecs[i].dtype, weights[i].data(), kSpecs[i].numel()});
      }
      StepOptions options;
      options.worker = w;
      options.streams = streams;
      auto r = c.Step(group, k, in, out, options);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) break;
      EXPECT_EQ(r->step, k);
    }
    return weights;
  }

  // The same steps over a region; returns the weights read from the region after the last.
  static std::vector<std::vector<uint8_t>> RegionSteps(Client& c, const std::string& group,
                                                       int steps, int w, int streams) {
    const Layout layout;
    auto region = c.OpenSharedMemoryRegion(group, layout.bytes);
    EXPECT_TRUE(region.ok()) << region.status();
    if (!region.ok()) return {};
    auto* base = static_cast<uint8_t*>((*region)->data());
    EXPECT_GE((*region)->bytes(), layout.bytes);
    for (int64_t k = 1; k <= steps; ++k) {
      std::vector<RegionRange> ranges;
      for (size_t i = 0; i < kSpecs.size(); ++i) {
        const std::vector<uint8_t> g = Gradient(i, k, w);
        std::memcpy(base + layout.grad_offset[i], g.data(), g.size());
        RegionRange r;
        r.tensor = kSpecs[i].name;
        r.count = kSpecs[i].numel();
        r.dtype = kSpecs[i].dtype;
        r.buffer_offset = layout.grad_offset[i];
        r.weights_buffer_offset = layout.weight_offset[i];
        ranges.push_back(r);
      }
      StepOptions options;
      options.worker = w;
      options.streams = streams;
      auto r = c.StepInRegion(group, k, **region, ranges, options);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) break;
      EXPECT_EQ(r->step, k);
    }
    std::vector<std::vector<uint8_t>> weights;
    for (size_t i = 0; i < kSpecs.size(); ++i) {
      const uint8_t* at = base + layout.weight_offset[i];
      weights.emplace_back(at, at + kSpecs[i].numel() * DTypeSize(kSpecs[i].dtype));
    }
    return weights;
  }

  // optd_colocated_regions from /metrics, or -1.
  int OpenRegions() {
    auto body = server::HttpGetLoopback(metrics_port_, "/metrics");
    if (!body.ok()) return -1;
    for (absl::string_view line : absl::StrSplit(*body, '\n')) {
      if (!absl::StartsWith(line, "optd_colocated_regions{")) continue;
      double v = -1;
      if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) return static_cast<int>(v);
    }
    return -1;
  }

  std::string workdir_;
  int metrics_port_ = 0;
  std::unique_ptr<ServerProcess> server_;
};

// Names of optd's objects in /dev/shm.
std::vector<std::string> OptdShmObjects() {
  std::vector<std::string> out;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return out;
  while (dirent* e = readdir(dir)) {
    if (absl::StartsWith(e->d_name, "optd-")) out.push_back(e->d_name);
  }
  closedir(dir);
  return out;
}

TEST_F(ColocatedTest, SameWeightsAsTheWireOneStream) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  CreateAndUpload(*c, "wire", 1);
  CreateAndUpload(*c, "shm", 1);
  const auto wire = WireSteps(*c, "wire", 4, 0, 1);
  const auto shm = RegionSteps(*c, "shm", 4, 0, 1);
  ASSERT_EQ(shm.size(), wire.size());
  for (size_t i = 0; i < wire.size(); ++i) EXPECT_EQ(shm[i], wire[i]) << kSpecs[i].name;
  std::vector<std::vector<uint8_t>> pulled;
  std::vector<MutableBuffer> out;
  for (const TensorSpec& s : kSpecs) pulled.emplace_back(s.numel() * DTypeSize(s.dtype));
  for (size_t i = 0; i < kSpecs.size(); ++i) {
    out.push_back({kSpecs[i].name, kSpecs[i].dtype, pulled[i].data(), kSpecs[i].numel()});
  }
  auto v = c->PullWeights("shm", out);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, 4);
  EXPECT_EQ(pulled, shm) << "the region holds what PullWeights reads";
}

TEST_F(ColocatedTest, SameWeightsAsTheWireThreeStreams) {
  auto c = Connect(3);
  ASSERT_NE(c, nullptr);
  CreateAndUpload(*c, "wire", 1);
  CreateAndUpload(*c, "shm", 1);
  const auto wire = WireSteps(*c, "wire", 3, 0, 3);
  const auto shm = RegionSteps(*c, "shm", 3, 0, 3);
  ASSERT_EQ(shm.size(), wire.size());
  for (size_t i = 0; i < wire.size(); ++i) EXPECT_EQ(shm[i], wire[i]) << kSpecs[i].name;
}

TEST_F(ColocatedTest, SameWeightsAsTheWireTwoWorkerSyncGroup) {
  auto c = Connect(2);
  ASSERT_NE(c, nullptr);
  CreateAndUpload(*c, "wire", 2);
  CreateAndUpload(*c, "shm", 2);
  std::vector<std::vector<uint8_t>> wire[2], shm[2];
  {
    std::thread w1([&] { wire[1] = WireSteps(*c, "wire", 3, 1, 1); });
    wire[0] = WireSteps(*c, "wire", 3, 0, 2);
    w1.join();
  }
  {
    // Each worker has a region of its own; one steps over K = 2 streams.
    std::thread w1([&] { shm[1] = RegionSteps(*c, "shm", 3, 1, 1); });
    shm[0] = RegionSteps(*c, "shm", 3, 0, 2);
    w1.join();
  }
  for (int w = 0; w < 2; ++w) {
    ASSERT_EQ(shm[w].size(), wire[w].size());
    for (size_t i = 0; i < wire[w].size(); ++i) {
      EXPECT_EQ(shm[w][i], wire[w][i]) << "worker " << w << " " << kSpecs[i].name;
    }
  }
  EXPECT_EQ(shm[0], shm[1]);
}

TEST_F(ColocatedTest, NoNameLeftInDevShmAndRegionReleasedOnClose) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  CreateAndUpload(*c, "g", 1);
  {
    auto region = c->OpenSharedMemoryRegion("g", 1 << 20);
    ASSERT_TRUE(region.ok()) << region.status();
    EXPECT_EQ((*region)->id().size(), 32u);
    EXPECT_EQ(OpenRegions(), 1);
  }
  // Closing the lease releases the server's side; the server answers the close first.
  for (int i = 0; i < 200 && OpenRegions() != 0; ++i) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(OpenRegions(), 0);
  EXPECT_TRUE(OptdShmObjects().empty());
}

TEST_F(ColocatedTest, KilledClientReleasesRegion) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  CreateAndUpload(*c, "g", 1);
  const std::string ready = workdir_ + "/holder_ready";
  const std::string holder = OPTD_COLOCATE_HOLDER;
  std::vector<std::string> args = {holder, server_->target(), "g", "1048576", ready};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, holder.c_str(), nullptr, nullptr, argv.data(), environ), 0);
  for (int i = 0; i < 600 && access(ready.c_str(), F_OK) != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(access(ready.c_str(), F_OK), 0) << "the holder did not open its region";
  EXPECT_EQ(OpenRegions(), 1);
  EXPECT_TRUE(OptdShmObjects().empty()) << "the name is removed once the client mapped it";
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  for (int i = 0; i < 600 && OpenRegions() != 0; ++i) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(OpenRegions(), 0);
  EXPECT_TRUE(OptdShmObjects().empty());
  // The server keeps serving, over both paths.
  const auto shm = RegionSteps(*c, "g", 1, 0, 1);
  EXPECT_EQ(shm.size(), kSpecs.size());
}

TEST_F(ColocatedTest, RegionOfAnotherGroupIsRefused) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  CreateAndUpload(*c, "a", 1);
  CreateAndUpload(*c, "b", 1);
  auto region = c->OpenSharedMemoryRegion("a", 1 << 20);
  ASSERT_TRUE(region.ok()) << region.status();
  RegionRange r{"tiny", 0, 5, DType::kFloat32, 0, 0, std::nullopt, 0};
  auto step = c->StepInRegion("b", 1, **region, {&r, 1});
  EXPECT_EQ(step.status().code(), absl::StatusCode::kInvalidArgument) << step.status();
  EXPECT_TRUE(absl::StrContains(step.status().message(), "belongs to group 'a'"))
      << step.status();
}

// A CUDA IPC region needs a CUDA server: this CPU one refuses it naming the buffer, opens
// nothing and keeps serving (tests/python/test_cuda_ipc.py runs the CUDA server's side).
TEST_F(ColocatedTest, CudaIpcRegionOnACpuServerIsRefused) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  CreateAndUpload(*c, "a", 1);
  CudaIpcBuffer b;
  b.handle = std::string(64, '\0');
  b.bytes = 4096;
  auto region = c->OpenCudaIpcRegion("a", {&b, 1});
  EXPECT_EQ(region.status().code(), absl::StatusCode::kFailedPrecondition) << region.status();
  EXPECT_TRUE(absl::StrContains(region.status().message(), "open.buffers[0]")) << region.status();
  EXPECT_TRUE(absl::StrContains(region.status().message(), "--backend=cuda")) << region.status();
  EXPECT_EQ(c->OpenCudaIpcRegion("a", {}).status().code(), absl::StatusCode::kInvalidArgument);
  auto info = c->GetGroup("a");
  ASSERT_TRUE(info.ok()) << info.status();
}

// A step over a region whose ranges break a rule fails with INVALID_ARGUMENT naming the field.
TEST_F(ColocatedTest, BadRangesAreRefusedNamingTheField) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  CreateAndUpload(*c, "g", 1);
  constexpr int64_t kBytes = 1 << 16;
  auto region = c->OpenSharedMemoryRegion("g", kBytes);
  ASSERT_TRUE(region.ok()) << region.status();
  struct Case {
    const char* what;
    RegionRange range;
    WeightsReturn weights;
    const char* message;
  };
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  const Case cases[] = {
      {"out of bounds", {"big", 0, 10007, DType::kFloat32, 0, kBytes - 4, std::nullopt, 0},
       WeightsReturn::kUpdated, "region_gradient.buffer_offset"},
      {"overflow", {"big", 0, 10007, DType::kFloat32, 0, kMax - 3, std::nullopt, 0},
       WeightsReturn::kUpdated, "is outside buffer 0"},
      {"negative offset", {"tiny", 0, 5, DType::kFloat32, 0, -4, std::nullopt, 0},
       WeightsReturn::kUpdated, "region_gradient.buffer_offset -4 must be >= 0"},
      {"bad buffer", {"tiny", 0, 5, DType::kFloat32, 1, 0, std::nullopt, 0},
       WeightsReturn::kUpdated, "region_gradient.buffer 1 is outside [0, 1)"},
      {"misaligned", {"tiny", 0, 5, DType::kFloat32, 0, 2, std::nullopt, 0},
       WeightsReturn::kUpdated, "multiple of 4"},
      {"weights out of bounds", {"tiny", 0, 5, DType::kFloat32, 0, 0, kBytes - 8, 0},
       WeightsReturn::kUpdated, "region_gradient.weights_buffer_offset"},
      {"weights overflow", {"tiny", 0, 5, DType::kFloat32, 0, 0, kMax - 3, 0},
       WeightsReturn::kUpdated, "region_gradient.weights_buffer_offset"},
      {"weights bad buffer", {"tiny", 0, 5, DType::kFloat32, 0, 0, 64, -1},
       WeightsReturn::kUpdated, "region_gradient.weights_buffer -1"},
      {"count past the tensor", {"tiny", 0, 6, DType::kFloat32, 0, 0, std::nullopt, 0},
       WeightsReturn::kUpdated, "is outside tensor 'tiny'"},
      {"misaligned tensor offset", {"big", 100, 256, DType::kFloat32, 0, 0, std::nullopt, 0},
       WeightsReturn::kUpdated, "region_gradient.offset 100"},
      {"weights ALL", {"tiny", 0, 5, DType::kFloat32, 0, 0, std::nullopt, 0}, WeightsReturn::kAll,
       "begin.weights ALL cannot be used with begin.region"},
  };
  int64_t step = 1;
  for (const Case& k : cases) {
    StepOptions options;
    options.weights = k.weights;
    auto r = c->StepInRegion("g", step, **region, {&k.range, 1}, options);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << k.what << ": " << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), k.message)) << k.what << ": " << r.status();
  }
  // Two ranges whose weights would land on the same bytes.
  const RegionRange overlapping[] = {
      {"tiny", 0, 5, DType::kFloat32, 0, 0, 1024, 0},
      {"odd", 0, 37 * 29, DType::kFloat32, 0, 64, 1024 + 16, 0}};
  auto r = c->StepInRegion("g", step, **region, overlapping);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "overlaps the weights destination"))
      << r.status();
  // Nothing was applied: the next good step is still step 1.
  const RegionRange good{"tiny", 0, 5, DType::kFloat32, 0, 0, 1024, 0};
  auto ok = c->StepInRegion("g", 1, **region, {&good, 1});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->version, 1);
}

// Raw Step streams for what the client API cannot express: a region id that no lease holds.
TEST_F(ColocatedTest, UnknownRegionIdIsNotFound) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  CreateAndUpload(*c, "g", 1);
  auto stub = v1::Optimizer::NewStub(
      grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials()));
  for (const std::string& id : {std::string(32, 'a'), std::string("not-hex")}) {
    grpc::ClientContext context;
    auto stream = stub->Step(&context);
    v1::StepRequest begin;
    begin.mutable_begin()->set_group("g");
    begin.mutable_begin()->set_step(1);
    begin.mutable_begin()->set_region(id);
    stream->Write(begin);
    v1::StepRequest commit;
    commit.mutable_commit();
    stream->Write(commit);
    stream->WritesDone();
    v1::StepResponse response;
    while (stream->Read(&response)) {
    }
    const grpc::Status st = stream->Finish();
    const auto want = id.size() == 32 ? grpc::StatusCode::NOT_FOUND
                                      : grpc::StatusCode::INVALID_ARGUMENT;
    EXPECT_EQ(st.error_code(), want) << st.error_message();
    EXPECT_TRUE(absl::StrContains(st.error_message(), "begin.region")) << st.error_message();
  }
}

TEST_F(ColocatedTest, UnknownGroupAndLimits) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  auto none = c->OpenSharedMemoryRegion("nosuch", 4096);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound) << none.status();
  CreateAndUpload(*c, "g", 1);
  auto huge = c->OpenSharedMemoryRegion("g", int64_t{1} << 50);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument) << huge.status();
  EXPECT_TRUE(absl::StrContains(huge.status().message(), "--max_region_bytes")) << huge.status();
  std::vector<std::unique_ptr<ColocatedRegion>> held;
  absl::Status last;
  for (int i = 0; i < 9; ++i) {
    auto r = c->OpenSharedMemoryRegion("g", 4096);
    if (!r.ok()) {
      last = r.status();
      break;
    }
    held.push_back(*std::move(r));
  }
  EXPECT_EQ(held.size(), 8u);  // --max_regions_per_client's default
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted) << last;
  EXPECT_TRUE(absl::StrContains(last.message(), "--max_regions_per_client")) << last;
}

}  // namespace
}  // namespace optd::client
