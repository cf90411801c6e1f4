// Replays the fuzzers' seeds and every committed input under regressions/<harness>/ (inputs
// that once crashed a harness, kept so the bug stays fixed) through the harness bodies. Runs in
// every build, gcc included; under OPTD_SANITIZE it checks them as strictly as the fuzzers do.
//
// regressions-open/<harness>/ holds findings whose fix has not landed yet (each file named after
// what it does; tests/fuzz/RESULTS.md says more). Replaying one today may allocate gigabytes or
// abort, so DISABLED_OpenFindings runs them only when asked for
// (--gtest_also_run_disabled_tests); once fixed, a file moves to regressions/.
#include <dirent.h>

#include <algorithm>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/seeds.h"

namespace optd::fuzz {
namespace {

using Harness = int (*)(const uint8_t*, size_t);

// The files of regressions/<name>/, sorted; none when the folder does not exist.
std::vector<std::string> Regressions(const std::string& name, const char* folder = "regressions") {
  const std::string dir = std::string(OPTD_FUZZ_DIR) + "/" + folder + "/" + name;
  std::vector<std::string> files;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') files.push_back(dir + "/" + e->d_name);
    }
    closedir(d);
  }
  std::sort(files.begin(), files.end());
  return files;
}

void Replay(Harness harness, const std::vector<std::string>& inputs) {
  for (const std::string& input : inputs) {
    EXPECT_EQ(harness(reinterpret_cast<const uint8_t*>(input.data()), input.size()), 0);
  }
}

void ReplayFiles(Harness harness, const std::string& name, const char* folder = "regressions") {
  for (const std::string& path : Regressions(name, folder)) {
    SCOPED_TRACE(path);
    std::ifstream in(path, std::ios::binary);
    ASSERT_TRUE(in) << path;
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Replay(harness, {bytes});
  }
}

// Every prefix and a few corruptions of each seed, so the error paths run too.
std::vector<std::string> Variants(const std::vector<std::string>& seeds) {
  std::vector<std::string> out;
  for (const std::string& s : seeds) {
    out.push_back(s);
    for (size_t cut = 0; cut < s.size(); cut += 1 + s.size() / 97) out.push_back(s.substr(0, cut));
    for (size_t at = 1; at < s.size(); at += 1 + s.size() / 31) {
      std::string flipped = s;
      flipped[at] = static_cast<char>(flipped[at] ^ 0x5a);
      out.push_back(flipped);
    }
  }
  return out;
}

TEST(FuzzReplayTest, RequestValidation) {
  Replay(RequestValidationOneInput, Variants(RequestValidationSeeds()));
  ReplayFiles(RequestValidationOneInput, "request_validation");
}

TEST(FuzzReplayTest, ChunkAssembly) {
  Replay(ChunkAssemblyOneInput, Variants(ChunkAssemblySeeds()));
  ReplayFiles(ChunkAssemblyOneInput, "chunk_assembly");
}

TEST(FuzzReplayTest, CheckpointLoad) {
  auto seeds = CheckpointLoadSeeds(testing::TempDir());
  ASSERT_TRUE(seeds.ok()) << seeds.status();
  ASSERT_FALSE(seeds->empty());
  EXPECT_GT((*seeds)[0].size(), 4100u * 4) << "the seed holds the fixed group's weights";
  Replay(CheckpointLoadOneInput, Variants(*seeds));
  ReplayFiles(CheckpointLoadOneInput, "checkpoint_load");
}

TEST(FuzzReplayTest, DISABLED_OpenFindings) {
  ReplayFiles(RequestValidationOneInput, "request_validation", "regressions-open");
  ReplayFiles(ChunkAssemblyOneInput, "chunk_assembly", "regressions-open");
  ReplayFiles(CheckpointLoadOneInput, "checkpoint_load", "regressions-open");
}

}  // namespace
}  // namespace optd::fuzz
