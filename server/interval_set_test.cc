#include "server/interval_set.h"

#include "gtest/gtest.h"

namespace optd::server {
namespace {

TEST(IntervalSetTest, DisjointInsertRejectsOverlapAndKeepsCount) {
  IntervalSet s;
  EXPECT_TRUE(s.InsertDisjoint(256, 512));
  EXPECT_TRUE(s.InsertDisjoint(0, 256));
  EXPECT_FALSE(s.InsertDisjoint(500, 600));
  EXPECT_FALSE(s.InsertDisjoint(0, 1));
  EXPECT_TRUE(s.InsertDisjoint(512, 1000));
  EXPECT_EQ(s.covered(), 1000);
}

TEST(IntervalSetTest, MergeCountsRewrittenElementsOnce) {
  IntervalSet s;
  s.InsertMerge(0, 100);
  s.InsertMerge(50, 150);
  s.InsertMerge(300, 400);
  s.InsertMerge(150, 300);
  EXPECT_EQ(s.covered(), 400);
  s.InsertMerge(0, 400);
  EXPECT_EQ(s.covered(), 400);
}

}  // namespace
}  // namespace optd::server
