// Replays every golden case of tests/data/golden through the real API (create, upload param_0,
// one Step per grad_k, read the weights back) on the CPU backend, free-running, and checks the
// drift against bitsandbytes' own final parameter: over the wire, and over a colocated
// shared-memory region (docs/colocated.md), whose weights must equal the wire's bit for bit.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/widen.h"
#include "tests/server/npy.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

struct GoldenCase {
  const char* name;
  v1::DType dtype;
  int steps;
  float lr, beta1, beta2, eps, wd;
  int pclip;
};

// From tests/data/golden/manifest.json.
const GoldenCase kCases[] = {
    {"fp32_tail_10000", v1::FLOAT32, 6, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 100},
    {"bf16_matrix_512x384", v1::BFLOAT16, 3, 2e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 100},
    {"fp16_small_3000_32bit_states", v1::FLOAT16, 6, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 100},
    {"fp32_pclip5_20000", v1::FLOAT32, 12, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 5},
    {"fp32_outliers_zeros_65536", v1::FLOAT32, 5, 5e-4f, 0.8f, 0.99f, 1e-6f, 0.0f, 100},
    {"fp16_4096_exact_min8bit", v1::FLOAT16, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 100},
};

core::DType CoreDType(v1::DType d) {
  return d == v1::FLOAT32 ? core::DType::kFloat32
         : d == v1::FLOAT16 ? core::DType::kFloat16
                            : core::DType::kBFloat16;
}

// The .npy array as raw elements of `dtype` (bf16 data is stored as exact float32 values).
Bytes Load(const std::string& path, v1::DType dtype, std::vector<int64_t>* shape = nullptr) {
  auto a = ReadNpy(path);
  EXPECT_TRUE(a.ok()) << a.status();
  if (!a.ok()) return {};
  if (shape != nullptr) *shape = a->shape;
  if (dtype == v1::BFLOAT16 && a->descr == "<f4") {
    Bytes out(static_cast<size_t>(a->numel()) * 2);
    std::vector<float> f(static_cast<size_t>(a->numel()));
    std::memcpy(f.data(), a->data.data(), f.size() * 4);
    server::NarrowFromFloat(f.data(), a->numel(), core::DType::kBFloat16, out.data());
    return out;
  }
  return a->data;
}

std::vector<float> Widen(const Bytes& b, v1::DType dtype) {
  const int64_t n = static_cast<int64_t>(b.size()) / (dtype == v1::FLOAT32 ? 4 : 2);
  std::vector<float> out(static_cast<size_t>(n));
  server::WidenToFloat(CoreDType(dtype), b.data(), n, out.data());
  return out;
}

// A shared-memory region leased over a raw Colocate stream (the lease ends with this object).
class RawShmRegion {
 public:
  static std::unique_ptr<RawShmRegion> Open(v1::Optimizer::Stub& stub, const std::string& group,
                                            int64_t bytes) {
    std::unique_ptr<RawShmRegion> r(new RawShmRegion());
    r->stream_ = stub.Colocate(&r->context_);
    v1::ColocateRequest open;
    open.mutable_open()->set_group(group);
    open.mutable_open()->set_kind(v1::SHM);
    open.mutable_open()->set_bytes(bytes);
    v1::ColocateResponse response;
    if (!r->stream_->Write(open) || !r->stream_->Read(&response) || !response.has_opened()) {
      ADD_FAILURE() << "Colocate: no ColocateOpened";
      return nullptr;
    }
    r->id_ = response.opened().region();
    const int fd = shm_open(response.opened().shm_name().c_str(), O_RDWR, 0);
    EXPECT_GE(fd, 0) << response.opened().shm_name();
    if (fd < 0) return nullptr;
    r->bytes_ = response.opened().bytes();
    void* map = mmap(nullptr, static_cast<size_t>(r->bytes_), PROT_READ | PROT_WRITE, MAP_SHARED,
                     fd, 0);
    close(fd);
    EXPECT_NE(map, MAP_FAILED);
    if (map == MAP_FAILED) return nullptr;
    r->data_ = static_cast<uint8_t*>(map);
    v1::ColocateRequest mapped;
    mapped.mutable_mapped();
    if (!r->stream_->Write(mapped) || !r->stream_->Read(&response) || !response.has_ready()) {
      ADD_FAILURE() << "Colocate: no ColocateReady";
      return nullptr;
    }
    return r;
  }
  ~RawShmRegion() {
    if (data_ != nullptr) munmap(data_, static_cast<size_t>(bytes_));
    stream_->WritesDone();
    EXPECT_TRUE(stream_->Finish().ok());
  }
  const std::string& id() const { return id_; }
  uint8_t* data() const { return data_; }

 private:
  RawShmRegion() = default;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ColocateRequest, v1::ColocateResponse>> stream_;
  std::string id_;
  uint8_t* data_ = nullptr;
  int64_t bytes_ = 0;
};

// One step over `region`: the gradient of tensor "p" at byte 0, in ranges of `chunk_elements`;
// the new weights are written at byte `weights_offset`. Returns the StepDone.
absl::StatusOr<v1::StepDone> RegionStep(v1::Optimizer::Stub& stub, const std::string& group,
                                        int64_t step, const RawShmRegion& region,
                                        v1::DType dtype, int64_t numel, int64_t weights_offset,
                                        int64_t chunk_elements) {
  grpc::ClientContext context;
  auto stream = stub.Step(&context);
  v1::StepRequest begin;
  begin.mutable_begin()->set_group(group);
  begin.mutable_begin()->set_step(step);
  begin.mutable_begin()->set_region(region.id());
  stream->Write(begin);
  const int64_t esize = dtype == v1::FLOAT32 ? 4 : 2;
  for (int64_t off = 0; off < numel; off += chunk_elements) {
    v1::StepRequest chunk;
    v1::RegionChunk* c = chunk.mutable_region_gradient();
    c->set_tensor("p");
    c->set_offset(off);
    c->set_count(std::min(chunk_elements, numel - off));
    c->set_dtype(dtype);
    c->set_buffer_offset(off * esize);
    c->set_weights_buffer_offset(weights_offset + off * esize);
    stream->Write(chunk);
  }
  v1::StepRequest commit;
  commit.mutable_commit();
  stream->Write(commit);
  stream->WritesDone();
  v1::StepResponse response;
  v1::StepDone done;
  bool weights_messages = false;
  while (stream->Read(&response)) {
    if (response.has_done()) done = response.done();
    if (response.has_weights()) weights_messages = true;
  }
  if (absl::Status s = FromGrpc(stream->Finish()); !s.ok()) return s;
  if (weights_messages) return absl::InternalError("a region step sent weight messages");
  return done;
}

class GoldenReplayTest : public ::testing::TestWithParam<GoldenCase> {
 protected:
  void Replay(bool shm);
};

TEST_P(GoldenReplayTest, FreeRunningWithinTolerance) { Replay(/*shm=*/false); }

TEST_P(GoldenReplayTest, FreeRunningWithinToleranceOverSharedMemory) { Replay(/*shm=*/true); }

void GoldenReplayTest::Replay(bool shm) {
  const GoldenCase& c = GetParam();
  const char* golden = std::getenv("OPTD_GOLDEN_DIR");  // when run away from the build tree
  const std::string dir = std::string(golden != nullptr ? golden : OPTD_GOLDEN_DIR) + "/" + c.name + "/";
  InProcessServer srv = StartInProcess();
  ASSERT_NE(srv.stub, nullptr);

  std::vector<int64_t> shape;
  const Bytes p0 = Load(dir + "param_0.npy", c.dtype, &shape);
  ASSERT_FALSE(p0.empty());
  v1::CreateGroupRequest create;
  create.set_group(c.name);
  *create.add_tensors() = Tensor("p", c.dtype, shape);
  v1::Hyperparameters* hp = create.mutable_hyperparameters();
  hp->set_lr(c.lr);
  hp->set_beta1(c.beta1);
  hp->set_beta2(c.beta2);
  hp->set_eps(c.eps);
  hp->set_weight_decay(c.wd);
  hp->set_percentile_clipping(c.pclip);
  grpc::ClientContext ctx;
  v1::GroupInfo info;
  ASSERT_TRUE(srv.stub->CreateGroup(&ctx, create, &info).ok());
  auto up = Upload(*srv.stub, c.name, "p", c.dtype, p0, /*chunk_elements=*/5000);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_TRUE(up->weights_initialized());

  Bytes returned;
  std::unique_ptr<RawShmRegion> region;
  const int64_t bytes = static_cast<int64_t>(p0.size());
  if (shm) {
    region = RawShmRegion::Open(*srv.stub, c.name, 2 * bytes);
    ASSERT_NE(region, nullptr);
  }
  for (int k = 1; k <= c.steps; ++k) {
    const Bytes g = Load(dir + "grad_" + std::to_string(k) + ".npy", c.dtype);
    if (shm) {
      std::memcpy(region->data(), g.data(), g.size());
      const int64_t numel = bytes / (c.dtype == v1::FLOAT32 ? 4 : 2);
      auto done = RegionStep(*srv.stub, c.name, k, *region, c.dtype, numel, bytes, 4096);
      ASSERT_TRUE(done.ok()) << "step " << k << ": " << done.status();
      EXPECT_EQ(done->step(), k);
      EXPECT_EQ(done->version(), k);
      returned.assign(region->data() + bytes, region->data() + 2 * bytes);
      continue;
    }
    StepOptions opts;
    opts.chunk_elements = 4096;  // several chunks per tensor, and a ragged tail
    StepResult r = RunStep(*srv.stub, c.name, k, {{"p", c.dtype, g}}, opts);
    ASSERT_TRUE(r.status.ok()) << "step " << k << ": " << r.status;
    EXPECT_EQ(r.done.step(), k);
    EXPECT_EQ(r.done.version(), k);
    EXPECT_FALSE(r.done.duplicate());
    returned = r.weights["p"];
  }
  int64_t version = 0;
  auto pulled = Pull(*srv.stub, c.name, &version);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(version, c.steps);
  EXPECT_EQ((*pulled)["p"], returned) << "weights returned (streamed, or in the region) differ "
                                          "from PullWeights";

  const std::vector<float> p = Widen((*pulled)["p"], c.dtype);
  const std::vector<float> ref =
      Widen(Load(dir + "param_" + std::to_string(c.steps) + ".npy", c.dtype), c.dtype);
  const std::vector<float> init = Widen(p0, c.dtype);
  ASSERT_EQ(p.size(), ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    num += (double(p[i]) - ref[i]) * (double(p[i]) - ref[i]);
    den += (double(ref[i]) - init[i]) * (double(ref[i]) - init[i]);
  }
  const double rel = std::sqrt(num) / std::sqrt(den);
  const double bound = c.dtype == v1::FLOAT32 ? 2e-4 : 5e-3;
  EXPECT_LE(rel, bound) << c.name;
  RecordProperty("relative_error", std::to_string(rel));
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenReplayTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace optd::testing
