#include "optd/client/sharding.h"

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

// The table both clients must reproduce; tests/CMakeLists.txt defines its path.
#ifndef OPTD_SHARDING_TABLE
#error "OPTD_SHARDING_TABLE (path of tests/data/sharding_table.tsv) is not defined"
#endif

namespace optd::client {
namespace {

std::vector<std::string> Keys(int n) {
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) keys.push_back(absl::StrCat("model/layer", i, ".weight"));
  return keys;
}

// tests/data/sharding_table.tsv, also read by tests/python/test_sharding.py: fixed names and
// their placements and scores, generated once. Both clients must reproduce every row, so a
// change to either hash (or to how a key's bytes are formed) fails one of the two tests.
TEST(ShardingTest, PlacementMatchesTheSharedTable) {
  std::ifstream in(OPTD_SHARDING_TABLE);
  ASSERT_TRUE(in) << "cannot open " << OPTD_SHARDING_TABLE;
  int places = 0, scores = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::vector<std::string> f = absl::StrSplit(line, '\t');
    ASSERT_EQ(f.size(), 4u) << line;
    if (f[0] == "place") {
      const std::vector<std::string> servers = absl::StrSplit(f[1], ',');
      size_t expected = 0;
      ASSERT_TRUE(absl::SimpleAtoi(f[3], &expected)) << line;
      EXPECT_EQ(PlaceKey(f[2], servers), expected) << line;
      ++places;
    } else if (f[0] == "score") {
      uint64_t expected = 0;
      ASSERT_TRUE(absl::SimpleHexAtoi(f[3], &expected)) << line;
      EXPECT_EQ(RendezvousScore(f[1], f[2]), expected) << line;
      ++scores;
    } else {
      ADD_FAILURE() << "unknown row kind: " << line;
    }
  }
  EXPECT_GE(places, 100);
  EXPECT_GE(scores, 50);
}

TEST(ShardingTest, KnownHashValues) {
  EXPECT_EQ(Fnv1a64(""), 0xCBF29CE484222325ull);
  EXPECT_EQ(Fnv1a64("a"), 0xAF63DC4C8601EC8Cull);
  EXPECT_EQ(RendezvousScore("a:1", "g/t"), Mix64(Fnv1a64(std::string("a:1\0g/t", 7))));
}

TEST(ShardingTest, BalancedOverThreeServers) {
  const std::vector<std::string> servers = {"10.0.0.1:50051", "10.0.0.2:50051",
                                            "10.0.0.3:50051"};
  int counts[3] = {0, 0, 0};
  for (const std::string& k : Keys(3000)) counts[PlaceKey(k, servers)]++;
  for (int c : counts) EXPECT_GT(c, 800);
}

TEST(ShardingTest, AddingAServerMovesAboutOneInN) {
  std::vector<std::string> servers = {"s1:1", "s2:1", "s3:1"};
  std::vector<std::string> more = servers;
  more.push_back("s4:1");
  int moved = 0;
  const auto keys = Keys(3000);
  for (const std::string& k : keys) {
    const size_t a = PlaceKey(k, servers), b = PlaceKey(k, more);
    if (a != b) {
      EXPECT_EQ(b, 3u) << k;  // only ever to the new server
      ++moved;
    }
  }
  EXPECT_GT(moved, 0.18 * keys.size());
  EXPECT_LT(moved, 0.32 * keys.size());
}

TEST(ShardingTest, IndependentOfServerOrder) {
  const std::vector<std::string> a = {"x:1", "y:1", "z:1"};
  const std::vector<std::string> b = {"z:1", "x:1", "y:1"};
  for (const std::string& k : Keys(300)) EXPECT_EQ(a[PlaceKey(k, a)], b[PlaceKey(k, b)]);
}

}  // namespace
}  // namespace optd::client
