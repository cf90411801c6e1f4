// Automatic recovery through the optd binary (issue 9, "Recovery" and failures 4 and 8):
// periodic checkpoints and their retention, --restore=latest after kill -9 bringing every group
// back bit for bit, orphaned temporary files removed at start, crafted metadata refused,
// checkpoint names instead of server paths.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/checkpoint_file.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kW = 5000;
constexpr int64_t kB = 300;

// Two groups: "main" (fp32, 8-bit states) and "clip" (percentile clipping and a tensor on the
// 32-bit path), so a checkpoint carries every kind of state.
void CreateGroups(v1::Optimizer::Stub& stub) {
  CreateMainAndClipGroups(stub, kW, kB, v1::FLOAT32);
}

absl::Status Step(v1::Optimizer::Stub& stub, const std::string& group, int64_t k) {
  StepOptions opts;
  opts.lr = 1e-3f * static_cast<float>(k);
  return RunStep(stub, group, k,
                 {{"w", v1::FLOAT32, AsBytes(RandomFloats(kW, 100 + k, 0.1f))},
                  {"b", v1::FLOAT32, AsBytes(RandomFloats(kB, 200 + k, 0.1f))}},
                 opts)
      .status;
}

void Steps(v1::Optimizer::Stub& stub, int64_t from, int64_t to) {
  for (int64_t k = from; k <= to; ++k) {
    for (const char* name : {"main", "clip"}) {
      const absl::Status s = Step(stub, name, k);
      ASSERT_TRUE(s.ok()) << name << " step " << k << ": " << s;
    }
  }
}

absl::StatusOr<v1::GroupInfo> Get(v1::Optimizer::Stub& stub, const std::string& group) {
  grpc::ClientContext ctx;
  v1::GetGroupRequest req;
  req.set_group(group);
  v1::GroupInfo info;
  absl::Status s = FromGrpc(stub.GetGroup(&ctx, req, &info));
  if (!s.ok()) return s;
  return info;
}

absl::StatusOr<v1::SaveCheckpointResponse> Save(v1::Optimizer::Stub& stub,
                                                const std::string& name) {
  grpc::ClientContext ctx;
  v1::SaveCheckpointRequest req;
  req.set_name(name);
  v1::SaveCheckpointResponse resp;
  absl::Status s = FromGrpc(stub.SaveCheckpoint(&ctx, req, &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::Status Restore(v1::Optimizer::Stub& stub, const std::string& name) {
  grpc::ClientContext ctx;
  v1::RestoreCheckpointRequest req;
  req.set_name(name);
  v1::RestoreCheckpointResponse resp;
  return FromGrpc(stub.RestoreCheckpoint(&ctx, req, &resp));
}

// Names of the periodic checkpoints in `dir`, sorted; and of every file.
std::vector<std::string> Files(const std::string& dir, const std::string& prefix = "") {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}
// Complete periodic checkpoints: a writer's temporary file ("auto-...Z.tmp-<pid>-<suffix>") may
// hold every byte already and still never be renamed into place.
std::vector<std::string> AutoFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (std::string& f : Files(dir, "auto-")) {
    if (f.find(".tmp-") == std::string::npos) out.push_back(std::move(f));
  }
  return out;
}

// Removes a test's directory; call it once the servers writing there are gone.
void RemoveDir(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// The version of every group in a checkpoint file ("" group: the smallest), or -1.
int64_t MinVersion(const std::string& path) {
  auto reader = server::CheckpointReader::Open(path);
  if (!reader.ok() || (*reader)->groups().empty()) return -1;
  int64_t v = INT64_MAX;
  for (const auto& g : (*reader)->groups()) v = std::min(v, g.version);
  return v;
}

// Polls `done` every 50 ms for up to 60 s (the scheduler looks once a second; the machine may be
// loaded). Not a timing assertion: it only bounds how long a broken server makes the test hang.
bool WaitFor(const std::function<bool()>& done) {
  for (int i = 0; i < 1200; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return done();
}

// A periodic checkpoint holding every group at `version` exists.
bool HasCheckpointAt(const std::string& dir, int64_t version) {
  for (const std::string& f : AutoFiles(dir)) {
    if (MinVersion(dir + "/" + f) == version) return true;
  }
  return false;
}

TEST(RecoveryTest, PeriodicCheckpointsByStepsKeepTheNewestN) {
  const std::string dir = MakeTempDir();
  auto child = ChildServer::Start(
      {"--checkpoint_dir=" + dir, "--checkpoint_every_steps=2", "--checkpoint_keep=2"});
  ASSERT_TRUE(child.ok()) << child.status();
  auto stub = MakeStub((*child)->address());
  CreateGroups(*stub);
  for (int64_t v : {2, 4, 6}) {
    Steps(*stub, v - 1, v);
    EXPECT_TRUE(WaitFor([&] { return HasCheckpointAt(dir, v); })) << "no checkpoint at " << v;
  }
  // Retention kept the two newest (it runs right after the write); names sort in write order.
  EXPECT_TRUE(WaitFor([&] { return AutoFiles(dir).size() == 2; }));
  const std::vector<std::string> files = AutoFiles(dir);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(MinVersion(dir + "/" + files[0]), 4);
  EXPECT_EQ(MinVersion(dir + "/" + files[1]), 6);
  EXPECT_THAT(files[1], ::testing::MatchesRegex("auto-[0-9]{10}-[0-9]{8}T[0-9]{6}Z"));
  (*child).reset();  // the server stops writing there first
  RemoveDir(dir);
}

TEST(RecoveryTest, TimeTriggerWritesOnlyWhenSomethingChanged) {
  const std::string dir = MakeTempDir();
  auto child = ChildServer::Start({"--checkpoint_dir=" + dir, "--checkpoint_every_seconds=1"});
  ASSERT_TRUE(child.ok()) << child.status();
  auto stub = MakeStub((*child)->address());
  CreateGroups(*stub);
  Steps(*stub, 1, 1);
  ASSERT_TRUE(WaitFor([&] { return HasCheckpointAt(dir, 1); }));
  const size_t written = AutoFiles(dir).size();
  // Idle for three periods: nothing new.
  std::this_thread::sleep_for(std::chrono::milliseconds(3500));
  EXPECT_EQ(AutoFiles(dir).size(), written);
  Steps(*stub, 2, 2);
  EXPECT_TRUE(WaitFor([&] { return HasCheckpointAt(dir, 2); }));
  (*child).reset();  // the server stops writing there first
  RemoveDir(dir);
}

TEST(RecoveryTest, Kill9ThenRestoreLatestBringsEveryGroupBackBitForBit) {
  const std::string dir = MakeTempDir();
  auto a = ChildServer::Start({"--checkpoint_dir=" + dir, "--checkpoint_every_steps=1"});
  ASSERT_TRUE(a.ok()) << a.status();
  auto stub_a = MakeStub((*a)->address());
  CreateGroups(*stub_a);
  Steps(*stub_a, 1, 4);
  ASSERT_TRUE(WaitFor([&] { return HasCheckpointAt(dir, 4); }));
  std::map<std::string, std::map<std::string, Bytes>> weights;
  std::map<std::string, std::map<std::string, std::map<std::string, Bytes>>> states;
  for (const char* name : {"main", "clip"}) {
    auto w = Pull(*stub_a, name);
    auto s = Export(*stub_a, name);
    ASSERT_TRUE(w.ok() && s.ok());
    weights[name] = *w;
    states[name] = *s;
  }
  EXPECT_TRUE(WIFSIGNALED((*a)->Kill(SIGKILL)));

  auto b = ChildServer::Start(
      {"--checkpoint_dir=" + dir, "--restore=latest", "--checkpoint_every_steps=1"});
  ASSERT_TRUE(b.ok()) << b.status();
  auto stub_b = MakeStub((*b)->address());
  for (const char* name : {"main", "clip"}) {
    auto info = Get(*stub_b, name);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->version(), 4);
    EXPECT_TRUE(info->weights_initialized());
    auto w = Pull(*stub_b, name);
    auto s = Export(*stub_b, name);
    ASSERT_TRUE(w.ok() && s.ok());
    EXPECT_TRUE(*w == weights[name]) << name << ": weights differ";
    EXPECT_TRUE(*s == states[name]) << name << ": states differ";
  }
  // The workers' step counters came back too: a retried step 4 is a duplicate, 5 applies.
  StepResult retry =
      RunStep(*stub_b, "main", 4, {{"w", v1::FLOAT32, AsBytes(RandomFloats(kW, 104, 0.1f))}});
  ASSERT_TRUE(retry.status.ok()) << retry.status;
  EXPECT_TRUE(retry.done.duplicate());
  Steps(*stub_b, 5, 5);
  (*b).reset();  // the server stops writing there first
  RemoveDir(dir);
}

TEST(RecoveryTest, RepeatedKill9DuringStepsAndWritesAlwaysRestoresACompleteCheckpoint) {
  const std::string dir = MakeTempDir();
  std::mt19937 rng(7);
  int64_t restored_version = 0;
  int64_t next_step = 1;
  for (int round = 0; round < 8; ++round) {
    auto child = ChildServer::Start({"--checkpoint_dir=" + dir, "--restore=latest",
                                     "--checkpoint_every_steps=1", "--checkpoint_keep=2"});
    ASSERT_TRUE(child.ok()) << "round " << round << ": " << child.status();
    // Started: no temporary file is left from the previous round's kill.
    for (const std::string& f : Files(dir)) EXPECT_THAT(f, Not(HasSubstr(".tmp-"))) << round;
    auto stub = MakeStub((*child)->address());
    if (round == 0) {
      CreateGroups(*stub);
    } else {
      // Never behind what an earlier round restored.
      auto main = Get(*stub, "main");
      auto clip = Get(*stub, "clip");
      ASSERT_TRUE(main.ok() && clip.ok()) << "round " << round;
      EXPECT_GE(main->version(), restored_version);
      restored_version = main->version();
      next_step = restored_version + 1;
    }
    std::atomic<bool> stop{false};
    std::thread trainer([&] {
      for (int64_t k = next_step; !stop.load(); ++k) {
        for (const char* name : {"main", "clip"}) {
          if (!Step(*stub, name, k).ok()) return;  // the server was killed
        }
      }
    });
    // Round 0 makes sure there is a first checkpoint; later rounds kill at a random moment.
    if (round == 0) {
      ASSERT_TRUE(WaitFor([&] { return !AutoFiles(dir).empty(); }));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 1500));
    EXPECT_TRUE(WIFSIGNALED((*child)->Kill(SIGKILL)));
    stop = true;
    trainer.join();
  }
  EXPECT_GT(restored_version, 0);
  RemoveDir(dir);
}

TEST(RecoveryTest, ShutdownWritesAFinalCheckpointThatRestoreLatestFinds) {
  const std::string dir = MakeTempDir();
  auto a = ChildServer::Start({"--checkpoint_dir=" + dir, "--checkpoint_every_steps=1000"});
  ASSERT_TRUE(a.ok()) << a.status();
  auto stub_a = MakeStub((*a)->address());
  CreateGroups(*stub_a);
  Steps(*stub_a, 1, 3);
  const int status = (*a)->Kill(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  ASSERT_EQ(AutoFiles(dir).size(), 1u);
  EXPECT_EQ(MinVersion(dir + "/" + AutoFiles(dir)[0]), 3);

  auto b = ChildServer::Start(
      {"--checkpoint_dir=" + dir, "--restore=latest", "--checkpoint_every_steps=1"});
  ASSERT_TRUE(b.ok()) << b.status();
  auto stub_b = MakeStub((*b)->address());
  auto info = Get(*stub_b, "main");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->version(), 3);
  // Numbering goes on after the files already there.
  Steps(*stub_b, 4, 4);
  ASSERT_TRUE(WaitFor([&] { return HasCheckpointAt(dir, 4); }));
  const std::vector<std::string> files = AutoFiles(dir);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].substr(0, 15), "auto-0000000001");
  EXPECT_EQ(files[1].substr(0, 15), "auto-0000000002");
  (*b).reset();  // the server stops writing there first
  RemoveDir(dir);
}

TEST(RecoveryTest, RestoreLatestSkipsFilesCutShortAndANamedOneMustExist) {
  const std::string dir = MakeTempDir();
  {
    auto a = ChildServer::Start({"--checkpoint_dir=" + dir});
    ASSERT_TRUE(a.ok()) << a.status();
    auto stub = MakeStub((*a)->address());
    CreateGroups(*stub);
    Steps(*stub, 1, 2);
    ASSERT_TRUE(Save(*stub, "older").ok());
    Steps(*stub, 3, 3);
    ASSERT_TRUE(Save(*stub, "newer").ok());
  }
  fs::resize_file(dir + "/newer", fs::file_size(dir + "/newer") / 2);  // a write cut short
  std::ofstream(dir + "/notes.txt") << "not a checkpoint\n";           // and a stranger
  fs::last_write_time(dir + "/notes.txt", fs::file_time_type::clock::now() + std::chrono::hours(1));
  auto b = ChildServer::Start({"--checkpoint_dir=" + dir, "--restore=latest"});
  ASSERT_TRUE(b.ok()) << b.status();
  auto stub = MakeStub((*b)->address());
  auto info = Get(*stub, "main");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->version(), 2);

  EXPECT_FALSE(ChildServer::Start({"--checkpoint_dir=" + dir, "--restore=missing"}).ok());
  server::ServerOptions options;
  options.backend = TestBackend();
  options.checkpoint_dir = dir;
  options.restore = "missing";
  auto in_process = server::Server::BuildAndStart(options);
  ASSERT_FALSE(in_process.ok());
  EXPECT_EQ(in_process.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(in_process.status().message()), HasSubstr("missing"));
  EXPECT_THAT(std::string(in_process.status().message()), Not(HasSubstr(dir)));
  // An empty directory is a fresh start, not an error.
  const std::string empty = MakeTempDir();
  EXPECT_TRUE(ChildServer::Start({"--checkpoint_dir=" + empty, "--restore=latest"}).ok());
  (*b).reset();  // the server stops writing there first
  RemoveDir(dir);
  RemoveDir(empty);
}

TEST(RecoveryTest, OrphanedTemporaryFilesAreRemovedAtStart) {
  const std::string dir = MakeTempDir();
  // A process id that certainly does not run any more.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  const std::vector<std::string> orphans = {
      absl::StrCat("ck.tmp-", dead, "-AbC123"),
      absl::StrCat("auto-0000000003-x.tmp-", dead, "-zzzzzz")};
  // A save in progress in another live process (this test) is left alone, as are other files.
  const std::vector<std::string> kept = {absl::StrCat("ck.tmp-", getpid(), "-Live00"), "notes.tmp",
                                         "ck"};
  for (const auto& f : orphans) std::ofstream(dir + "/" + f) << std::string(4096, 'x');
  for (const auto& f : kept) std::ofstream(dir + "/" + f) << "keep";
  auto child = ChildServer::Start({"--checkpoint_dir=" + dir});
  ASSERT_TRUE(child.ok()) << child.status();
  std::vector<std::string> expected = kept;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(Files(dir), expected);
  (*child).reset();  // the server stops writing there first
  RemoveDir(dir);
}

// A checkpoint with a valid checksum whose metadata no server would write.
void WriteCrafted(const std::string& path, const std::function<void(server::GroupRecord*)>& edit) {
  core::EngineOptions eo;
  eo.backend = core::Backend::kCpu;
  eo.num_threads = 1;
  auto engine = core::CreateEngine(eo);
  ASSERT_TRUE(engine.ok());
  server::GroupRecord record;
  record.name = "crafted";
  record.spec.tensors.push_back({"w", core::DType::kFloat32, {300}});
  record.worker_steps = {0};
  auto group = (*engine)->CreateGroup(record.spec);
  ASSERT_TRUE(group.ok());
  edit(&record);
  auto writer = server::CheckpointWriter::Create(path);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->AddGroup(record, **group).ok());
  ASSERT_TRUE((*writer)->Commit().ok());
}

TEST(RecoveryTest, CraftedMetadataIsRefusedNamingTheFileAndField) {
  const std::string dir = MakeTempDir();
  struct Case {
    std::string file;
    std::function<void(server::GroupRecord*)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"workers", [](server::GroupRecord* r) { r->num_workers = -5; }, "num_workers"},
      {"many-workers", [](server::GroupRecord* r) { r->num_workers = 1 << 28; }, "--max_workers"},
      {"version", [](server::GroupRecord* r) { r->version = -1; }, "version"},
      {"mode", [](server::GroupRecord* r) { r->mode = 7; }, "mode"},
      {"timeout", [](server::GroupRecord* r) { r->sync_timeout_ms = 0; }, "sync_timeout_ms"},
      {"staleness", [](server::GroupRecord* r) { r->max_staleness = -1; }, "max_staleness"},
      {"steps",
       [](server::GroupRecord* r) {
         r->worker_steps = {0, 0, 0};
       },
       "worker_steps"},
      {"step-value", [](server::GroupRecord* r) { r->worker_steps = {-4}; }, "worker_steps[0]"},
      {"name", [](server::GroupRecord* r) { r->name = "x\noptd: stopped"; }, "outside the name"},
  };
  for (const Case& c : cases) WriteCrafted(dir + "/" + c.file, c.edit);
  server::ServerOptions options;
  options.checkpoint_dir = dir;
  InProcessServer srv = StartInProcess(options);
  for (const Case& c : cases) {
    const absl::Status s = Restore(*srv.stub, c.file);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << c.file << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("checkpoint '" + c.file + "'")) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.field)) << s;
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr(dir))) << s;
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr("\n"))) << s;
  }
  grpc::ClientContext ctx;
  v1::ListGroupsResponse list;
  ASSERT_TRUE(srv.stub->ListGroups(&ctx, {}, &list).ok());
  EXPECT_EQ(list.groups_size(), 0);  // nothing half-restored

  // At start: the server refuses to come up on such a file.
  server::ServerOptions at_start;
  at_start.backend = TestBackend();
  at_start.checkpoint_dir = dir;
  at_start.restore = "workers";
  auto refused = server::Server::BuildAndStart(at_start);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("checkpoint 'workers'"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("num_workers"));
  EXPECT_FALSE(ChildServer::Start({"--checkpoint_dir=" + dir, "--restore=version"}).ok());
  RemoveDir(dir);
}

TEST(RecoveryTest, ResponsesAndErrorsNameCheckpointsNotServerPaths) {
  const std::string dir = MakeTempDir();
  server::ServerOptions options;
  options.checkpoint_dir = dir;
  InProcessServer srv = StartInProcess(options);
  CreateGroups(*srv.stub);
  auto saved = Save(*srv.stub, "ck");
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(saved->path(), "ck");
  for (const char* name : {"x.tmp-12-abcdef", "sp ace", "new\nline"}) {
    const auto bad = Save(*srv.stub, name);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
  RemoveDir(dir);  // the directory vanishes under the server
  const auto lost = Save(*srv.stub, "ck2");
  EXPECT_FALSE(lost.ok());
  EXPECT_THAT(std::string(lost.status().message()), HasSubstr("ck2"));
  EXPECT_THAT(std::string(lost.status().message()), Not(HasSubstr(dir)));
  const absl::Status r = Restore(*srv.stub, "ck");
  EXPECT_EQ(r.code(), absl::StatusCode::kNotFound) << r;
  EXPECT_THAT(std::string(r.message()), Not(HasSubstr(dir)));
}

}  // namespace
}  // namespace optd::testing
