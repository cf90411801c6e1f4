#include "client/internal/wire.h"

#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "optd/v1/optd.pb.h"

namespace optd::client::internal {
namespace {

std::string Flatten(const grpc::ByteBuffer& bb) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(bb.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

TEST(WireTest, ElementsPerChunkIsBlockAligned) {
  EXPECT_EQ(ElementsPerChunk(4 << 20, DType::kFloat32), 1 << 20);
  EXPECT_EQ(ElementsPerChunk(4 << 20, DType::kBFloat16), 2 << 20);
  EXPECT_EQ(ElementsPerChunk(1000 * 4 + 3, DType::kFloat32), 768);
  EXPECT_EQ(ElementsPerChunk(10, DType::kFloat16), 256);
}

TEST(WireTest, StepRequestChunkParsesAsProtobuf) {
  std::vector<float> data(1000);
  std::iota(data.begin(), data.end(), 0.5f);
  grpc::ByteBuffer bb = ChunkMessage("", 2, "layer.weight", 512, DType::kFloat32, data.data(),
                                     data.size() * sizeof(float));
  v1::StepRequest req;
  ASSERT_TRUE(req.ParseFromString(Flatten(bb)));
  ASSERT_TRUE(req.has_gradient());
  EXPECT_EQ(req.gradient().tensor(), "layer.weight");
  EXPECT_EQ(req.gradient().offset(), 512);
  EXPECT_EQ(req.gradient().dtype(), v1::FLOAT32);
  ASSERT_EQ(req.gradient().data().size(), data.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(req.gradient().data().data(), data.data(), data.size() * 4), 0);
}

TEST(WireTest, UploadRequestKeepsGroupPrefixAndLargePayload) {
  std::vector<uint16_t> data(300000, 0x3f80);  // > 2^16 bytes: multi-byte varint lengths
  grpc::ByteBuffer bb = ChunkMessage(StringField(1, "my-group"), 2, "t", 0, DType::kBFloat16,
                                     data.data(), data.size() * 2);
  v1::UploadWeightsRequest req;
  ASSERT_TRUE(req.ParseFromString(Flatten(bb)));
  EXPECT_EQ(req.group(), "my-group");
  EXPECT_EQ(req.chunk().tensor(), "t");
  EXPECT_EQ(req.chunk().dtype(), v1::BFLOAT16);
  EXPECT_EQ(req.chunk().data().size(), data.size() * 2);
}

TEST(WireTest, WriteChunkChecksNameDtypeAndRange) {
  std::vector<float> dst(600, 0.0f);
  std::vector<MutableBuffer> bufs = {{"w", DType::kFloat32, dst.data(), 600}};
  BufferMap map = MakeBufferMap(bufs);
  v1::TensorChunk c;
  c.set_tensor("w");
  c.set_offset(256);
  c.set_dtype(v1::FLOAT32);
  std::vector<float> src(344, 2.0f);
  c.set_data(src.data(), src.size() * 4);
  int64_t n = 0;
  ASSERT_TRUE(WriteChunk(c, map, &n).ok());
  EXPECT_EQ(n, 344);
  EXPECT_EQ(dst[255], 0.0f);
  EXPECT_EQ(dst[256], 2.0f);
  EXPECT_EQ(dst[599], 2.0f);

  c.set_offset(512);
  absl::Status s = WriteChunk(c, map, &n);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("outside"), std::string::npos) << s;
  c.set_offset(0);
  c.set_dtype(v1::FLOAT16);
  s = WriteChunk(c, map, &n);
  EXPECT_NE(s.message().find("dtype"), std::string::npos) << s;
  c.set_tensor("other");
  s = WriteChunk(c, map, &n);
  EXPECT_NE(s.message().find("'other'"), std::string::npos) << s;
}

}  // namespace
}  // namespace optd::client::internal
