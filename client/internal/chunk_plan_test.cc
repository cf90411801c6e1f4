#include "client/internal/chunk_plan.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace optd::client::internal {
namespace {

int64_t Bytes(const std::vector<ChunkRef>& run, absl::Span<const ConstBuffer> buffers) {
  int64_t b = 0;
  for (const ChunkRef& c : run) b += c.numel * DTypeSize(buffers[c.buffer].dtype);
  return b;
}

// Every element of every buffer is in exactly one chunk, in order.
void ExpectCoversInOrder(const std::vector<std::vector<ChunkRef>>& runs,
                         absl::Span<const ConstBuffer> buffers) {
  size_t buffer = 0;
  int64_t offset = 0;
  for (const auto& run : runs) {
    for (const ChunkRef& c : run) {
      while (buffer < buffers.size() && offset == buffers[buffer].numel) {
        ++buffer;
        offset = 0;
      }
      ASSERT_EQ(c.buffer, buffer);
      ASSERT_EQ(c.offset, offset);
      ASSERT_GT(c.numel, 0);
      EXPECT_EQ(c.offset % 256, 0);  // block-aligned
      offset += c.numel;
    }
  }
  while (buffer < buffers.size() && offset == buffers[buffer].numel) {
    ++buffer;
    offset = 0;
  }
  EXPECT_EQ(buffer, buffers.size());
}

TEST(ChunkPlanTest, OneStreamTakesEveryChunk) {
  const std::vector<ConstBuffer> b = {{"a", DType::kFloat32, nullptr, 3000},
                                      {"b", DType::kBFloat16, nullptr, 513}};
  auto runs = DealChunks(b, 4096, 1);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].size(), 3u + 1u);  // 1024 + 1024 + 952 fp32, 513 bf16 in one 2048
  ExpectCoversInOrder(runs, b);
}

TEST(ChunkPlanTest, RunsBalanceBytesAndSplitTensors) {
  // 10 equal chunks of one tensor over 4 streams: 3, 2, 3, 2 or similar, never 0.
  const std::vector<ConstBuffer> one = {{"t", DType::kFloat32, nullptr, 10 * 1024}};
  auto runs = DealChunks(one, 4096, 4);
  ASSERT_EQ(runs.size(), 4u);
  for (const auto& r : runs) {
    EXPECT_GE(r.size(), 2u);
    EXPECT_LE(r.size(), 3u);
  }
  ExpectCoversInOrder(runs, one);

  // Mixed sizes and dtypes: no run is more than one chunk (4096 bytes) off the mean.
  const std::vector<ConstBuffer> mixed = {{"a", DType::kFloat32, nullptr, 5000},
                                          {"b", DType::kBFloat16, nullptr, 999},
                                          {"c", DType::kFloat32, nullptr, 0},
                                          {"d", DType::kFloat16, nullptr, 20000},
                                          {"e", DType::kFloat32, nullptr, 77}};
  const int64_t total = 5000 * 4 + 999 * 2 + 20000 * 2 + 77 * 4;
  for (int k : {2, 3, 5, 8}) {
    auto r = DealChunks(mixed, 4096, k);
    ASSERT_EQ(r.size(), static_cast<size_t>(k));
    ExpectCoversInOrder(r, mixed);
    for (const auto& run : r) {
      EXPECT_FALSE(run.empty());
      EXPECT_LE(std::abs(Bytes(run, mixed) - total / k), 4096) << "k=" << k;
    }
  }
}

TEST(ChunkPlanTest, FewChunksUseFewStreams) {
  const std::vector<ConstBuffer> small = {{"a", DType::kFloat32, nullptr, 300},
                                          {"b", DType::kFloat32, nullptr, 10}};
  auto runs = DealChunks(small, 4096, 8);
  ASSERT_EQ(runs.size(), 2u);
  ExpectCoversInOrder(runs, small);
  auto none = DealChunks({}, 4096, 8);
  ASSERT_EQ(none.size(), 1u);
  EXPECT_TRUE(none[0].empty());
}

TEST(ChunkPlanTest, TensorsDealtLargestFirstOntoTheLightest) {
  const std::vector<int64_t> bytes = {100, 900, 300, 300, 0, 500};
  auto groups = DealTensors(bytes, 3);
  ASSERT_EQ(groups.size(), 3u);
  // 900 -> g0; 500 -> g1; 300 -> g2; 300 -> g2 (300 < 500); 100 -> g1 (500 < 600);
  // 0 -> g1 (600 = 600, the first).
  EXPECT_EQ(groups[0], (std::vector<size_t>{1}));
  EXPECT_EQ(groups[1], (std::vector<size_t>{0, 4, 5}));
  EXPECT_EQ(groups[2], (std::vector<size_t>{2, 3}));
  EXPECT_EQ(DealTensors(bytes, 1).size(), 1u);
  EXPECT_EQ(DealTensors(std::vector<int64_t>{7}, 4).size(), 1u);
  auto empty = DealTensors({}, 4);
  ASSERT_EQ(empty.size(), 1u);
  EXPECT_TRUE(empty[0].empty());
}

}  // namespace
}  // namespace optd::client::internal
