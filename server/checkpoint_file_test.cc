#include "server/checkpoint_file.h"

#include <dirent.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "optd/core/engine.h"
#include "server/checkpoint_crc32c.h"
#include "server/checkpoint_format.h"

namespace optd::server {
namespace {

namespace fs = std::filesystem;
using core::DType;

class TempDir {
 public:
  TempDir() {
    const char* base = getenv("TEST_TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/optd_ckpt_test.XXXXXX";
    char* p = mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = tmpl;
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename());
    return names;
  }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteFile(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::unique_ptr<core::Engine> CpuEngine() {
  core::EngineOptions options;
  options.backend = core::Backend::kCpu;
  options.num_threads = 1;
  auto engine = core::CreateEngine(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

// Random bytes of `spec`'s dtype that are finite numbers of moderate size (bit patterns of
// narrow floats built from fp32 values).
std::vector<char> RandomTensor(const core::TensorSpec& spec, std::mt19937* rng, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  const int64_t n = spec.numel();
  std::vector<char> bytes(static_cast<size_t>(n) * core::DTypeSize(spec.dtype));
  for (int64_t i = 0; i < n; ++i) {
    float v = dist(*rng);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    if (spec.dtype == DType::kFloat32) {
      std::memcpy(bytes.data() + 4 * i, &v, 4);
    } else if (spec.dtype == DType::kBFloat16) {
      uint16_t h = static_cast<uint16_t>(bits >> 16);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    } else {  // fp16 from fp32 by truncation; |v| is small, so no overflow
      uint32_t sign = (bits >> 16) & 0x8000;
      int32_t exp = static_cast<int32_t>((bits >> 23) & 0xFF) - 127 + 15;
      uint16_t h = exp <= 0 ? static_cast<uint16_t>(sign)
                            : static_cast<uint16_t>(sign | (exp << 10) | ((bits >> 13) & 0x3FF));
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  return bytes;
}

std::vector<char> ReadWeights(const core::ParamGroup& group, int t) {
  const core::TensorSpec& spec = group.spec().tensors[t];
  std::vector<char> bytes(static_cast<size_t>(spec.numel()) * core::DTypeSize(spec.dtype));
  EXPECT_TRUE(group.ReadParam(t, 0, {bytes.data(), spec.dtype, spec.numel()}).ok());
  return bytes;
}

void ExpectSameState(const core::TensorState& a, const core::TensorState& b, const std::string& what) {
  EXPECT_EQ(a.step, b.step) << what;
  EXPECT_EQ(a.eight_bit, b.eight_bit) << what;
  EXPECT_EQ(a.state1, b.state1) << what;
  EXPECT_EQ(a.state2, b.state2) << what;
  // Compare floats as bits: a bit-for-bit round trip, NaNs included.
  auto bits = [](const std::vector<float>& v) {
    std::vector<uint32_t> out(v.size());
    if (!v.empty()) std::memcpy(out.data(), v.data(), v.size() * 4);
    return out;
  };
  EXPECT_EQ(bits(a.absmax1), bits(b.absmax1)) << what;
  EXPECT_EQ(bits(a.absmax2), bits(b.absmax2)) << what;
  EXPECT_EQ(bits(a.state1_f32), bits(b.state1_f32)) << what;
  EXPECT_EQ(bits(a.state2_f32), bits(b.state2_f32)) << what;
  EXPECT_EQ(bits(a.gnorm_vec), bits(b.gnorm_vec)) << what;
}

core::GroupSpec MixedSpec() {
  core::GroupSpec spec;
  spec.tensors = {{"w32", DType::kFloat32, {70, 100}},   // 8-bit, tail block
                  {"w16", DType::kFloat16, {5000}},      // 8-bit
                  {"wbf", DType::kBFloat16, {3, 2000}},  // 8-bit
                  {"small", DType::kFloat32, {300}},     // 32-bit states
                  {"scalar", DType::kFloat32, {}}};      // 32-bit states, numel 1
  spec.options.lr = 2e-3f;
  spec.options.beta1 = 0.85f;
  spec.options.beta2 = 0.995f;
  spec.options.eps = 1e-7f;
  spec.options.weight_decay = 0.05f;
  spec.options.min_8bit_size = 4096;
  return spec;
}

core::GroupSpec ClippingSpec() {
  core::GroupSpec spec;
  spec.tensors = {{"emb", DType::kBFloat16, {4096 + 17}}, {"bias", DType::kFloat32, {100}}};
  spec.options.percentile_clipping = 5;
  spec.options.min_8bit_size = 1000;
  return spec;
}

// Random weights, then `steps` steps with random gradients; tensor 1 skips the second step so the
// step counters differ.
void Train(core::ParamGroup* group, int steps, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int t = 0; t < group->num_tensors(); ++t) {
    const core::TensorSpec& spec = group->spec().tensors[t];
    std::vector<char> w = RandomTensor(spec, &rng, 1.0f);
    ASSERT_TRUE(group->WriteParam(t, 0, {w.data(), spec.dtype, spec.numel()}).ok());
  }
  for (int s = 0; s < steps; ++s) {
    std::vector<std::vector<char>> grads;
    std::vector<core::TensorGradient> list;
    grads.reserve(group->num_tensors());
    for (int t = 0; t < group->num_tensors(); ++t) {
      const core::TensorSpec& spec = group->spec().tensors[t];
      grads.push_back(RandomTensor(spec, &rng, 0.1f * (s + 1)));
      if (s == 1 && t == 1) continue;
      list.push_back({t, {grads.back().data(), spec.dtype, spec.numel()}});
    }
    ASSERT_TRUE(group->Step(list, {}).ok());
  }
}

GroupRecord RecordFor(const std::string& name, const core::ParamGroup& group) {
  GroupRecord r;
  r.name = name;
  r.spec = group.spec();
  r.num_workers = 3;
  r.mode = 2;
  r.sync_timeout_ms = 1234;
  r.max_staleness = 7;
  r.version = 42;
  r.worker_steps = {40, 41, -1};
  return r;
}

void ExpectSameSpec(const core::GroupSpec& a, const core::GroupSpec& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].name, b.tensors[i].name);
    EXPECT_EQ(a.tensors[i].dtype, b.tensors[i].dtype);
    EXPECT_EQ(a.tensors[i].shape, b.tensors[i].shape);
  }
  const core::AdamWOptions &x = a.options, &y = b.options;
  EXPECT_EQ(x.lr, y.lr);
  EXPECT_EQ(x.beta1, y.beta1);
  EXPECT_EQ(x.beta2, y.beta2);
  EXPECT_EQ(x.eps, y.eps);
  EXPECT_EQ(x.weight_decay, y.weight_decay);
  EXPECT_EQ(x.amsgrad, y.amsgrad);
  EXPECT_EQ(x.optim_bits, y.optim_bits);
  EXPECT_EQ(x.min_8bit_size, y.min_8bit_size);
  EXPECT_EQ(x.percentile_clipping, y.percentile_clipping);
  EXPECT_EQ(x.block_wise, y.block_wise);
}

class CheckpointFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = CpuEngine();
    ASSERT_NE(engine_, nullptr);
    auto a = engine_->CreateGroup(MixedSpec());
    ASSERT_TRUE(a.ok()) << a.status();
    mixed_ = std::move(*a);
    auto b = engine_->CreateGroup(ClippingSpec());
    ASSERT_TRUE(b.ok()) << b.status();
    clipped_ = std::move(*b);
    Train(mixed_.get(), 3, 1);
    Train(clipped_.get(), 4, 2);
    path_ = dir_.path() + "/all.ckpt";
  }

  // Saves both groups to path_; returns the committed size.
  int64_t Save() {
    auto writer = CheckpointWriter::Create(path_);
    EXPECT_TRUE(writer.ok()) << writer.status();
    if (!writer.ok()) return -1;
    EXPECT_TRUE((*writer)->AddGroup(RecordFor("mixed", *mixed_), *mixed_).ok());
    EXPECT_TRUE((*writer)->AddGroup(RecordFor("clipped", *clipped_), *clipped_).ok());
    auto size = (*writer)->Commit();
    EXPECT_TRUE(size.ok()) << size.status();
    return size.ok() ? *size : -1;
  }

  TempDir dir_;
  std::string path_;
  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<core::ParamGroup> mixed_, clipped_;
};

TEST_F(CheckpointFileTest, RoundTripIsBitForBit) {
  const int64_t size = Save();
  EXPECT_EQ(size, static_cast<int64_t>(fs::file_size(path_)));
  EXPECT_EQ(dir_.Entries(), std::vector<std::string>{"all.ckpt"});  // no temp file left

  auto reader = CheckpointReader::Open(path_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ((*reader)->groups().size(), 2u);
  const core::ParamGroup* originals[] = {mixed_.get(), clipped_.get()};
  const char* names[] = {"mixed", "clipped"};
  auto fresh_engine = CpuEngine();
  for (size_t g = 0; g < 2; ++g) {
    const GroupRecord& r = (*reader)->groups()[g];
    const GroupRecord expected = RecordFor(names[g], *originals[g]);
    EXPECT_EQ(r.name, expected.name);
    EXPECT_EQ(r.num_workers, 3);
    EXPECT_EQ(r.mode, 2);
    EXPECT_EQ(r.sync_timeout_ms, 1234);
    EXPECT_EQ(r.max_staleness, 7);
    EXPECT_EQ(r.version, 42);
    EXPECT_EQ(r.worker_steps, expected.worker_steps);
    ExpectSameSpec(r.spec, originals[g]->spec());

    auto restored = fresh_engine->CreateGroup(r.spec);
    ASSERT_TRUE(restored.ok()) << restored.status();
    absl::Status st = (*reader)->RestoreGroup(g, restored->get());
    ASSERT_TRUE(st.ok()) << st;
    for (int t = 0; t < originals[g]->num_tensors(); ++t) {
      const std::string what = std::string(names[g]) + "/" + r.spec.tensors[t].name;
      EXPECT_EQ(ReadWeights(**restored, t), ReadWeights(*originals[g], t)) << what;
      EXPECT_EQ((*restored)->GetStep(t), originals[g]->GetStep(t)) << what;
      auto a = originals[g]->ExportState(t);
      auto b = (*restored)->ExportState(t);
      ASSERT_TRUE(a.ok() && b.ok());
      ExpectSameState(*a, *b, what);
      if (g == 1) {
        EXPECT_EQ(b->gnorm_vec.size(), 100u) << what;
      }
    }
  }
  EXPECT_EQ(mixed_->GetStep(0), 3);
  EXPECT_EQ(mixed_->GetStep(1), 2);  // skipped one step: counters are per tensor
}

TEST_F(CheckpointFileTest, RestoredGroupContinuesIdentically) {
  Save();
  auto reader = CheckpointReader::Open(path_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto restored = engine_->CreateGroup((*reader)->groups()[1].spec);
  ASSERT_TRUE(restored.ok());
  ASSERT_TRUE((*reader)->RestoreGroup(1, restored->get()).ok());
  // Same gradients to both: the clipping history and states must make the weights agree.
  std::mt19937 rng(99);
  for (int s = 0; s < 3; ++s) {
    std::vector<std::vector<char>> grads;
    std::vector<core::TensorGradient> list;
    for (int t = 0; t < clipped_->num_tensors(); ++t) {
      const core::TensorSpec& spec = clipped_->spec().tensors[t];
      grads.push_back(RandomTensor(spec, &rng, 0.5f));
      list.push_back({t, {grads.back().data(), spec.dtype, spec.numel()}});
    }
    ASSERT_TRUE(clipped_->Step(list, {}).ok());
    ASSERT_TRUE((*restored)->Step(list, {}).ok());
  }
  for (int t = 0; t < clipped_->num_tensors(); ++t) {
    EXPECT_EQ(ReadWeights(**restored, t), ReadWeights(*clipped_, t)) << "tensor " << t;
  }
}

TEST_F(CheckpointFileTest, TruncatedFileIsDataLoss) {
  Save();
  const std::string bytes = ReadFile(path_);
  const size_t n = bytes.size();
  const std::string cut = dir_.path() + "/cut.ckpt";
  for (size_t len : {size_t{0}, size_t{5}, size_t{16}, size_t{17}, size_t{100}, n / 3, n / 2,
                     n - 28, n - 27, n - 4, n - 1}) {
    WriteFile(cut, std::string_view(bytes).substr(0, len));
    auto reader = CheckpointReader::Open(cut);
    ASSERT_FALSE(reader.ok()) << "cut at " << len;
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss) << reader.status();
    EXPECT_NE(reader.status().message().find(cut), std::string::npos) << reader.status();
  }
}

TEST_F(CheckpointFileTest, FlippedByteIsDataLoss) {
  Save();
  const std::string bytes = ReadFile(path_);
  const std::string bad = dir_.path() + "/bad.ckpt";
  // Positions: magic, group metadata, weights, states, footer fields, the checksum itself.
  for (size_t pos : {size_t{0}, size_t{20}, size_t{40}, size_t{500}, bytes.size() / 2,
                     bytes.size() - 100, bytes.size() - 20, bytes.size() - 10, bytes.size() - 1}) {
    std::string copy = bytes;
    copy[pos] ^= 0x10;
    WriteFile(bad, copy);
    auto reader = CheckpointReader::Open(bad);
    ASSERT_FALSE(reader.ok()) << "flip at " << pos;
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss) << reader.status();
    EXPECT_NE(reader.status().message().find(bad), std::string::npos) << reader.status();
  }
  // The unflipped copy still opens: the test above failed for the right reason.
  WriteFile(bad, bytes);
  EXPECT_TRUE(CheckpointReader::Open(bad).ok());
}

TEST_F(CheckpointFileTest, NewerFormatVersionIsRefused) {
  Save();
  std::string bytes = ReadFile(path_);
  bytes[8] = 2;  // format version
  WriteFile(path_, bytes);
  auto reader = CheckpointReader::Open(path_);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(reader.status().message().find("format version 2"), std::string::npos)
      << reader.status();
}

// A length field corrupted in a file whose checksum was recomputed (a buggy or hostile writer):
// refused from the file size, without allocating what the length claims.
TEST_F(CheckpointFileTest, HugeLengthWithValidChecksumIsRefusedBeforeAllocation) {
  Save();
  const std::string bytes = ReadFile(path_);
  auto reseal = [&](std::string copy) {
    const uint32_t crc = checkpoint_internal::Crc32c(copy.data(), copy.size() - 4);
    std::memcpy(copy.data() + copy.size() - 4, &crc, 4);
    return copy;
  };
  const std::string bad = dir_.path() + "/huge.ckpt";
  {  // group metadata length (right after the header and the group tag) = 100 GB
    std::string copy = bytes;
    const uint64_t huge = uint64_t{100} << 30;
    std::memcpy(copy.data() + 16 + 4, &huge, 8);
    WriteFile(bad, reseal(copy));
    auto reader = CheckpointReader::Open(bad);
    ASSERT_FALSE(reader.ok());
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(reader.status().message().find("metadata length"), std::string::npos)
        << reader.status();
  }
  {  // the number of groups in the footer
    std::string copy = bytes;
    const uint64_t huge = uint64_t{1} << 40;
    std::memcpy(copy.data() + copy.size() - 20, &huge, 8);
    WriteFile(bad, reseal(copy));
    auto reader = CheckpointReader::Open(bad);
    ASSERT_FALSE(reader.ok());
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(reader.status().message().find("groups"), std::string::npos) << reader.status();
  }
  {  // the first tensor's state1 count: find it after the first tensor's weights
    uint64_t meta_len = 0;
    std::memcpy(&meta_len, bytes.data() + 20, 8);
    const size_t tensor0 = 16 + 12 + meta_len;  // tag, weight_bytes, weights, step, eight_bit
    uint64_t weight_bytes = 0;
    std::memcpy(&weight_bytes, bytes.data() + tensor0 + 4, 8);
    EXPECT_EQ(weight_bytes, 7000u * 4);
    const size_t state1_count = tensor0 + 12 + weight_bytes + 9;
    std::string copy = bytes;
    const uint64_t huge = uint64_t{100} << 30;
    std::memcpy(copy.data() + state1_count, &huge, 8);
    WriteFile(bad, reseal(copy));
    auto reader = CheckpointReader::Open(bad);
    ASSERT_FALSE(reader.ok());
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(reader.status().message().find("state1 claims"), std::string::npos)
        << reader.status();
  }
}

// Random corruption that the checksum does not catch (resealed): the parser and restore must
// answer with a status, never crash or over-allocate (run under ASan in development).
TEST_F(CheckpointFileTest, ResealedRandomCorruptionNeverCrashes) {
  Save();
  const std::string bytes = ReadFile(path_);
  const std::string bad = dir_.path() + "/fuzz.ckpt";
  std::mt19937 rng(5);
  int refused = 0;
  for (int i = 0; i < 300; ++i) {
    std::string copy = bytes;
    // Mostly the metadata and record headers near the start, where lengths live.
    const size_t pos = (i % 2 == 0) ? rng() % 400 : rng() % (copy.size() - 4);
    copy[pos] = static_cast<char>(rng());
    const uint32_t crc = checkpoint_internal::Crc32c(copy.data(), copy.size() - 4);
    std::memcpy(copy.data() + copy.size() - 4, &crc, 4);
    WriteFile(bad, copy);
    auto reader = CheckpointReader::Open(bad);
    if (!reader.ok()) {
      ++refused;
      EXPECT_TRUE(reader.status().code() == absl::StatusCode::kDataLoss ||
                  reader.status().code() == absl::StatusCode::kFailedPrecondition)
          << reader.status();
      continue;
    }
    // Opened: the damage was in a value, not a structure. Restoring either works or fails
    // with a status.
    for (size_t g = 0; g < (*reader)->groups().size(); ++g) {
      auto group = engine_->CreateGroup((*reader)->groups()[g].spec);
      if (!group.ok()) continue;
      (*reader)->RestoreGroup(g, group->get()).IgnoreError();
    }
  }
  EXPECT_GT(refused, 50);
}

TEST_F(CheckpointFileTest, MissingFileIsNotFound) {
  auto reader = CheckpointReader::Open(dir_.path() + "/nope.ckpt");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(reader.status().message().find("nope.ckpt"), std::string::npos);
  auto writer = CheckpointWriter::Create(dir_.path() + "/no/such/dir/x.ckpt");
  ASSERT_FALSE(writer.ok());
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointFileTest, UncommittedWriterLeavesNoFileAndKeepsTheOldOne) {
  Save();
  const std::string before = ReadFile(path_);
  {
    auto writer = CheckpointWriter::Create(path_);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->AddGroup(RecordFor("mixed", *mixed_), *mixed_).ok());
    EXPECT_TRUE(fs::exists((*writer)->temp_path()));
    EXPECT_EQ(fs::path((*writer)->temp_path()).parent_path(), fs::path(dir_.path()));
    EXPECT_EQ(dir_.Entries().size(), 2u);
  }
  EXPECT_EQ(dir_.Entries(), std::vector<std::string>{"all.ckpt"});
  EXPECT_EQ(ReadFile(path_), before);
  {
    auto writer = CheckpointWriter::Create(dir_.path() + "/other.ckpt");
    ASSERT_TRUE(writer.ok());
  }
  EXPECT_EQ(dir_.Entries(), std::vector<std::string>{"all.ckpt"});
}

TEST_F(CheckpointFileTest, EmptyCheckpointAndOverwrite) {
  const std::string empty = dir_.path() + "/empty.ckpt";
  auto writer = CheckpointWriter::Create(empty);
  ASSERT_TRUE(writer.ok());
  auto size = (*writer)->Commit();
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 16 + 28);
  EXPECT_FALSE((*writer)->Commit().ok());  // once only
  auto reader = CheckpointReader::Open(empty);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_TRUE((*reader)->groups().empty());
  // Overwriting by rename: the open reader keeps reading its own file.
  Save();
  fs::rename(path_, empty);
  auto again = CheckpointReader::Open(empty);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->groups().size(), 2u);
  EXPECT_TRUE((*reader)->groups().empty());
}

TEST_F(CheckpointFileTest, RestoreChecksIndexAndTensors) {
  Save();
  auto reader = CheckpointReader::Open(path_);
  ASSERT_TRUE(reader.ok());
  absl::Status st = (*reader)->RestoreGroup(2, mixed_.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("index 2"), std::string::npos) << st;
  st = (*reader)->RestoreGroup(0, clipped_.get());  // wrong tensors
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("'mixed'"), std::string::npos) << st;
}

}  // namespace
}  // namespace optd::server
