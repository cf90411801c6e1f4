#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "client/internal/wire.h"
#include "grpcpp/support/slice.h"
#include "gtest/gtest.h"

namespace optd::client::internal {
namespace {

// The serialized message cut into slices of `piece` bytes (gRPC hands over such lists).
grpc::ByteBuffer Sliced(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < bytes.size(); at += piece) {
    slices.emplace_back(bytes.data() + at, std::min(piece, bytes.size() - at));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string WeightsResponse(const std::string& tensor, int64_t offset, v1::DType dtype,
                            const void* data, size_t bytes) {
  v1::StepResponse r;
  r.mutable_weights()->set_tensor(tensor);
  r.mutable_weights()->set_offset(offset);
  r.mutable_weights()->set_dtype(dtype);
  r.mutable_weights()->set_data(data, bytes);
  return r.SerializeAsString();
}

TEST(StepResponseDecoderTest, WeightsLandInTheBufferWhateverTheSlicing) {
  std::vector<float> src(700);
  std::iota(src.begin(), src.end(), 1.0f);
  const std::string msg = WeightsResponse("w", 256, v1::FLOAT32, src.data(), src.size() * 4);
  for (size_t piece : {size_t{1}, size_t{3}, size_t{7}, size_t{64}, size_t{100000}}) {
    std::vector<float> dst(1000, 0.0f);
    std::vector<MutableBuffer> bufs = {{"w", DType::kFloat32, dst.data(), 1000}};
    DecodedStepResponse d;
    absl::Status s = DecodeStepResponse(Sliced(msg, piece), MakeBufferMap(bufs), &d);
    ASSERT_TRUE(s.ok()) << s << " piece " << piece;
    EXPECT_FALSE(d.has_done);
    EXPECT_EQ(d.weight_elements, 700);
    EXPECT_EQ(dst[255], 0.0f);
    EXPECT_EQ(std::memcmp(dst.data() + 256, src.data(), 700 * 4), 0) << piece;
    EXPECT_EQ(dst[956], 0.0f);
  }
}

TEST(StepResponseDecoderTest, DoneIsParsed) {
  v1::StepResponse r;
  r.mutable_done()->set_step(7);
  r.mutable_done()->set_version(9);
  r.mutable_done()->set_duplicate(true);
  r.mutable_done()->set_nonfinite_gradient_elements(3);
  DecodedStepResponse d;
  ASSERT_TRUE(DecodeStepResponse(Sliced(r.SerializeAsString(), 2), {}, &d).ok());
  ASSERT_TRUE(d.has_done);
  EXPECT_EQ(d.done.step(), 7);
  EXPECT_EQ(d.done.version(), 9);
  EXPECT_TRUE(d.done.duplicate());
  EXPECT_EQ(d.done.nonfinite_gradient_elements(), 3);
}

TEST(StepResponseDecoderTest, BadChunksGiveThePreciseError) {
  std::vector<uint16_t> src(300, 0x3f80);
  std::vector<uint16_t> dst(400);
  std::vector<MutableBuffer> bufs = {{"h", DType::kBFloat16, dst.data(), 400}};
  DecodedStepResponse d;
  absl::Status s = DecodeStepResponse(
      Sliced(WeightsResponse("other", 0, v1::BFLOAT16, src.data(), 600), 5), MakeBufferMap(bufs), &d);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'other'"), std::string::npos) << s;
  s = DecodeStepResponse(Sliced(WeightsResponse("h", 256, v1::BFLOAT16, src.data(), 600), 5),
                         MakeBufferMap(bufs), &d);
  EXPECT_NE(s.message().find("outside"), std::string::npos) << s;
  s = DecodeStepResponse(Sliced(WeightsResponse("h", 0, v1::FLOAT32, src.data(), 600), 5),
                         MakeBufferMap(bufs), &d);
  EXPECT_NE(s.message().find("dtype"), std::string::npos) << s;
  const std::string good = WeightsResponse("h", 0, v1::BFLOAT16, src.data(), 600);
  s = DecodeStepResponse(Sliced(good.substr(0, good.size() - 10), 5), MakeBufferMap(bufs), &d);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

TEST(StepResponseDecoderTest, WeightsMessageLandsInTheBuffer) {
  std::vector<uint16_t> src(300);
  std::iota(src.begin(), src.end(), uint16_t{1});
  v1::WeightsMessage m;
  m.set_version(12);
  m.mutable_chunk()->set_tensor("h");
  m.mutable_chunk()->set_offset(256);
  m.mutable_chunk()->set_dtype(v1::BFLOAT16);
  m.mutable_chunk()->set_data(src.data(), 600);
  m.set_version_complete(true);
  for (size_t piece : {size_t{1}, size_t{5}, size_t{4096}}) {
    std::vector<uint16_t> dst(600, 0);
    std::vector<MutableBuffer> bufs = {{"h", DType::kBFloat16, dst.data(), 600}};
    DecodedWeightsMessage d;
    absl::Status s = DecodeWeightsMessage(Sliced(m.SerializeAsString(), piece),
                                          MakeBufferMap(bufs), &d);
    ASSERT_TRUE(s.ok()) << s << " piece " << piece;
    EXPECT_EQ(d.version, 12);
    EXPECT_TRUE(d.version_complete);
    EXPECT_EQ(d.weight_elements, 300);
    EXPECT_EQ(dst[255], 0);
    EXPECT_EQ(std::memcmp(dst.data() + 256, src.data(), 600), 0) << piece;
    EXPECT_EQ(dst[556], 0);
  }
  // Without a buffer for the tensor: the precise error.
  DecodedWeightsMessage d;
  absl::Status s = DecodeWeightsMessage(Sliced(m.SerializeAsString(), 7), {}, &d);
  EXPECT_NE(s.message().find("'h'"), std::string::npos) << s;
}

}  // namespace
}  // namespace optd::client::internal
