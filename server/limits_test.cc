// Unit tests of the admission rules, the stream gate and the checkpoint directory helpers. The
// same rules through the real server: tests/server/limits_test.cc and recovery_test.cc.
#include "server/limits.h"

#include <unistd.h>

#include <string>

#include "absl/time/civil_time.h"
#include "gtest/gtest.h"
#include "server/checkpoint_dir.h"
#include "server/limits_memory.h"
#include "server/limits_streams.h"

namespace optd::server {
namespace {

bool Contains(const absl::Status& s, const std::string& needle) {
  return std::string(s.message()).find(needle) != std::string::npos;
}

TEST(LimitsTest, NamesFollowTheSafeAlphabet) {
  const Limits l;
  for (const char* good : {"a", "job-17/layer_0.weight", "A.B-c_d/e", "x/"}) {
    EXPECT_TRUE(CheckName(good, "group", l).ok()) << good;
  }
  struct Bad {
    std::string name;
    const char* why;
  };
  for (const Bad& b : std::vector<Bad>{{"", "must not be empty"},
                                       {std::string("a\0b", 3), "byte 1"},
                                       {"a\nb", "alphabet"},
                                       {"a b", "alphabet"},
                                       {"a\\b", "alphabet"},
                                       {"/a", "start with '/'"},
                                       {"a/../b", "'..'"},
                                       {"..", "'..'"},
                                       {std::string(257, 'a'), "--max_name_bytes"}}) {
    const absl::Status s = CheckName(b.name, "tensors[2].name", l);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.name;
    EXPECT_TRUE(Contains(s, b.why)) << s;
    EXPECT_TRUE(Contains(s, "tensors[2].name")) << s;
  }
}

TEST(LimitsTest, PrintableNameEscapesAndBounds) {
  EXPECT_EQ(PrintableName(std::string("a\nb\0c\\", 6)), "a\\x0ab\\x00c\\\\");
  EXPECT_EQ(PrintableName(std::string(10, 'x'), 4), "xxxx...(10 bytes)");
  EXPECT_EQ(LogSafe("group 'a\\x0a' \x01"), "group 'a\\x0a' \\x01");  // backslashes kept
}

TEST(LimitsTest, GroupBytesAreCountedWithoutOverflow) {
  core::GroupSpec spec;
  spec.tensors.push_back({"w", core::DType::kFloat32, {5000}});
  spec.tensors.push_back({"b", core::DType::kBFloat16, {100}});
  auto bytes = CountGroupBytes(spec);
  ASSERT_TRUE(bytes.has_value());
  EXPECT_EQ(bytes->weights, 5000 * 4 + 100 * 2);
  EXPECT_EQ(bytes->states, 2 * 5000 + 2 * 4 * 20 + 2 * 4 * 100);
  spec.tensors.push_back({"huge", core::DType::kFloat32, {int64_t{1} << 62}});
  EXPECT_FALSE(CountGroupBytes(spec).has_value());
  const absl::Status s = CheckGroupSpec("g", spec, Limits());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s, "overflow")) << s;
}

TEST(LimitsTest, GroupSpecLimitsNameTheirFlags) {
  Limits l;
  l.max_tensors_per_group = 2;
  l.max_group_bytes = 1000;
  core::GroupSpec spec;
  for (const char* n : {"a", "b", "c"}) spec.tensors.push_back({n, core::DType::kFloat32, {10}});
  EXPECT_TRUE(Contains(CheckGroupSpec("g", spec, l), "--max_tensors_per_group"));
  spec.tensors.resize(1);
  EXPECT_TRUE(CheckGroupSpec("g", spec, l).ok());
  spec.tensors[0].shape = {1000};
  EXPECT_TRUE(Contains(CheckGroupSpec("g", spec, l), "--max_group_bytes"));
  spec.tensors[0].shape = {10};
  spec.options.lr = 1e30f;
  EXPECT_TRUE(Contains(CheckGroupSpec("g", spec, l), "--max_lr"));
  EXPECT_TRUE(CheckLearningRate(1e3f, "begin.lr", l).ok());
  EXPECT_TRUE(Contains(CheckLearningRate(1.5e3f, "begin.lr", l), "begin.lr"));
  EXPECT_FALSE(CheckLearningRate(std::nanf(""), "begin.lr", l).ok());
  EXPECT_TRUE(Contains(CheckNumWorkers(1 << 28, l), "--max_workers"));
  EXPECT_FALSE(CheckNumWorkers(0, l).ok());
}

TEST(LimitsTest, TensorListsMustNotRepeatANameOrExceedTheGroupSize) {
  Limits l;
  l.max_tensors_per_group = 3;
  google::protobuf::RepeatedPtrField<std::string> names;
  for (const char* n : {"a", "b"}) *names.Add() = n;
  EXPECT_TRUE(CheckTensorList(names, l).ok());
  *names.Add() = "a";
  EXPECT_TRUE(Contains(CheckTensorList(names, l), "'a' is listed twice"));
  *names.Mutable(2) = "c";
  *names.Add() = "d";
  EXPECT_TRUE(Contains(CheckTensorList(names, l), "--max_tensors_per_group"));
}

TEST(LimitsTest, ValidateLimitsRefusesNonsense) {
  EXPECT_TRUE(ValidateLimits(Limits()).ok());
  Limits l;
  l.max_streams = 0;
  EXPECT_TRUE(Contains(ValidateLimits(l), "--max_streams"));
  l = Limits();
  l.max_lr = -1;
  EXPECT_TRUE(Contains(ValidateLimits(l), "--max_lr"));
}

TEST(StreamGateTest, BoundsTotalAndPerAddress) {
  EXPECT_EQ(PeerAddress("ipv4:10.0.0.7:5123"), "ipv4:10.0.0.7");
  EXPECT_EQ(PeerAddress("ipv6:[::1]:5123"), "ipv6:[::1]");
  EXPECT_EQ(PeerAddress("unix:/tmp/s"), "unix:/tmp/s");
  StreamGate gate(3, 2);
  auto a1 = gate.Enter("ipv4:10.0.0.1:1");
  auto a2 = gate.Enter("ipv4:10.0.0.1:2");
  ASSERT_TRUE(a1.ok() && a2.ok());
  auto a3 = gate.Enter("ipv4:10.0.0.1:3");
  EXPECT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(a3.status(), "--max_streams_per_peer"));
  auto b1 = gate.Enter("ipv4:10.0.0.2:1");
  ASSERT_TRUE(b1.ok());
  auto b2 = gate.Enter("ipv4:10.0.0.2:2");
  EXPECT_TRUE(Contains(b2.status(), "--max_streams"));
  EXPECT_EQ(gate.active(), 3);
  a1->reset();
  EXPECT_EQ(gate.active(), 2);
  EXPECT_TRUE(gate.Enter("ipv4:10.0.0.1:4").ok());  // destroyed at once
  EXPECT_EQ(gate.active(), 2);
}

TEST(MemoryTest, HostMemoryIsReadAndAGroupCostsItsWorkingCopies) {
  const HostMemory m = ReadHostMemory();
  EXPECT_GT(m.available, 0);
  EXPECT_GT(m.resident, 0);
  core::EngineStats stats;
  const MemoryNeed cpu = GroupMemoryNeed({100, 30}, core::Backend::kCpu, stats);
  EXPECT_EQ(cpu.host, 100 + 30 + kWorkingCopies * 100);
  EXPECT_EQ(cpu.device, 0);
  stats.device_budget_bytes = 50;
  stats.state_bytes_device = 40;  // 10 bytes of budget left: 20 of 30 state bytes are paged
  const MemoryNeed cuda = GroupMemoryNeed({100, 30}, core::Backend::kCuda, stats);
  EXPECT_EQ(cuda.device, 100 + 10);
  EXPECT_EQ(cuda.host, kWorkingCopies * 100 + 20);
}

TEST(CheckpointDirTest, TempAndPeriodicNames) {
  int64_t pid = 0;
  EXPECT_TRUE(IsCheckpointTempName("ck.tmp-123-aB3xYz", &pid));
  EXPECT_EQ(pid, 123);
  EXPECT_FALSE(IsCheckpointTempName("ck.tmp-123-short"));
  EXPECT_FALSE(IsCheckpointTempName("ck.tmp"));
  EXPECT_FALSE(IsCheckpointTempName("ck.tmp-x1-abcdef"));
  const absl::Time t =
      absl::FromCivil(absl::CivilSecond(2026, 12, 1, 10, 15, 0), absl::UTCTimeZone());
  const std::string name = PeriodicCheckpointName("auto-", 42, t);
  EXPECT_EQ(name, "auto-0000000042-20261201T101500Z");
  EXPECT_EQ(PeriodicCheckpointSequence("auto-", name), 42);
  EXPECT_EQ(PeriodicCheckpointSequence("auto-", "manual"), -1);
  EXPECT_EQ(PeriodicCheckpointSequence("auto-", name + ".tmp-1-abcdef"), -1);
  EXPECT_TRUE(CheckName(name, "name", Limits()).ok());
}

}  // namespace
}  // namespace optd::server
