#include "server/chunk_codec.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace optd::server {
namespace {

// `bytes` as a ByteBuffer cut into slices of `piece` bytes (so fields straddle slices).
grpc::ByteBuffer Sliced(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  slices.emplace_back(grpc::Slice());  // an empty first slice is allowed
  for (size_t off = 0; off < bytes.size(); off += piece) {
    slices.emplace_back(bytes.data() + off, std::min(piece, bytes.size() - off));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string PayloadOf(const Payload& p) {
  std::string out(p.size(), '\0');
  p.CopyTo(out.data());
  return out;
}

TEST(ChunkCodecTest, DecodesStepRequestsAcrossSlices) {
  std::string data(10'000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 3);
  v1::StepRequest gradient;
  gradient.mutable_gradient()->set_tensor("layer.0/w");
  gradient.mutable_gradient()->set_offset(int64_t{3} << 33);
  gradient.mutable_gradient()->set_dtype(v1::BFLOAT16);
  gradient.mutable_gradient()->set_data(data);
  v1::StepRequest begin;
  begin.mutable_begin()->set_group("g");
  begin.mutable_begin()->set_step(42);
  begin.mutable_begin()->set_streams(4);
  begin.mutable_begin()->set_stream_index(3);
  begin.mutable_begin()->set_lr(0.5f);
  v1::StepRequest commit;
  commit.mutable_commit();
  for (size_t piece : {1, 2, 3, 7, 4096, 1 << 20}) {
    StepRequestRef r;
    ASSERT_TRUE(DecodeStepRequest(Sliced(gradient.SerializeAsString(), piece), &r).ok());
    ASSERT_EQ(r.kind, StepRequestRef::Kind::kGradient);
    EXPECT_EQ(r.gradient.tensor, "layer.0/w");
    EXPECT_EQ(r.gradient.offset, int64_t{3} << 33);
    EXPECT_EQ(r.gradient.dtype, v1::BFLOAT16);
    EXPECT_EQ(PayloadOf(r.gradient.data), data) << "piece " << piece;
    EXPECT_EQ(r.gradient.data.contiguous() != nullptr, piece >= data.size() + 32);
    ASSERT_TRUE(DecodeStepRequest(Sliced(begin.SerializeAsString(), piece), &r).ok());
    ASSERT_EQ(r.kind, StepRequestRef::Kind::kBegin);
    EXPECT_EQ(r.begin.SerializeAsString(), begin.begin().SerializeAsString());
    ASSERT_TRUE(DecodeStepRequest(Sliced(commit.SerializeAsString(), piece), &r).ok());
    EXPECT_EQ(r.kind, StepRequestRef::Kind::kCommit);
  }
}

TEST(ChunkCodecTest, MalformedMessagesAreDataLoss) {
  v1::StepRequest gradient;
  gradient.mutable_gradient()->set_tensor("w");
  gradient.mutable_gradient()->set_data(std::string(100, 'x'));
  const std::string bytes = gradient.SerializeAsString();
  for (size_t cut = 1; cut < bytes.size(); ++cut) {
    StepRequestRef r;
    const absl::Status s = DecodeStepRequest(Sliced(bytes.substr(0, cut), 3), &r);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "cut at " << cut;
  }
  StepRequestRef r;
  EXPECT_EQ(DecodeStepRequest(Sliced(std::string("\x08", 1), 1), &r).code(),
            absl::StatusCode::kDataLoss);  // varint cut short
  EXPECT_EQ(DecodeStepRequest(Sliced(std::string(12, '\xff'), 5), &r).code(),
            absl::StatusCode::kDataLoss);  // varint too long
}

TEST(ChunkCodecTest, DecodesUploadAndStateChunks) {
  v1::UploadWeightsRequest up;
  up.set_group("grp");
  up.mutable_chunk()->set_tensor("t");
  up.mutable_chunk()->set_offset(256);
  up.mutable_chunk()->set_dtype(v1::FLOAT32);
  up.mutable_chunk()->set_data(std::string(4096, 'a'));
  std::string group;
  ChunkRef chunk;
  ASSERT_TRUE(DecodeUploadRequest(Sliced(up.SerializeAsString(), 100), &group, &chunk).ok());
  EXPECT_EQ(group, "grp");
  EXPECT_EQ(chunk.tensor, "t");
  EXPECT_EQ(chunk.offset, 256);
  EXPECT_EQ(PayloadOf(chunk.data), std::string(4096, 'a'));

  v1::StateChunk state;
  state.set_group("grp");
  state.set_tensor("t");
  state.set_key("absmax1");
  state.set_type(v1::STATE_ELEMENT_TYPE_FLOAT32);
  state.add_shape(3);
  state.add_shape(5);
  state.set_offset(2);
  state.set_data(std::string(60, 'z'));
  v1::StateChunk header;
  Payload data;
  ASSERT_TRUE(DecodeStateChunk(Sliced(state.SerializeAsString(), 7), &header, &data).ok());
  EXPECT_EQ(PayloadOf(data), std::string(60, 'z'));
  state.clear_data();
  EXPECT_EQ(header.SerializeAsString(), state.SerializeAsString());
}

// What the server sends is read by stock protobuf like any other message.
TEST(ChunkCodecTest, EncodedMessagesParseWithProtobuf) {
  auto memory = std::make_shared<std::string>(5000, 'q');
  const std::string name = "tensor";
  OutChunk out;
  out.tensor = &name;
  out.offset = 512;
  out.dtype = v1::FLOAT16;
  out.data = memory->data();
  out.bytes = memory->size();
  out.keepalive = memory;
  grpc::Slice single;
  ASSERT_TRUE(EncodeStepWeights(out).DumpToSingleSlice(&single).ok());
  v1::StepResponse step;
  ASSERT_TRUE(step.ParseFromArray(single.begin(), static_cast<int>(single.size())));
  EXPECT_EQ(step.weights().tensor(), "tensor");
  EXPECT_EQ(step.weights().offset(), 512);
  EXPECT_EQ(step.weights().dtype(), v1::FLOAT16);
  EXPECT_EQ(step.weights().data(), *memory);

  ASSERT_TRUE(EncodeWeightsMessage(7, true, out).DumpToSingleSlice(&single).ok());
  v1::WeightsMessage w;
  ASSERT_TRUE(w.ParseFromArray(single.begin(), static_cast<int>(single.size())));
  EXPECT_EQ(w.version(), 7);
  EXPECT_TRUE(w.version_complete());
  EXPECT_EQ(w.chunk().data(), *memory);

  v1::StateChunk header;
  header.set_tensor("t");
  header.set_key("state1");
  ASSERT_TRUE(EncodeStateChunk(header, memory->data(), 100, memory).DumpToSingleSlice(&single).ok());
  v1::StateChunk state;
  ASSERT_TRUE(state.ParseFromArray(single.begin(), static_cast<int>(single.size())));
  EXPECT_EQ(state.key(), "state1");
  EXPECT_EQ(state.data(), memory->substr(0, 100));
}

// The payload slice keeps its memory alive until gRPC (here: the last ByteBuffer) lets go.
TEST(ChunkCodecTest, KeepaliveLastsAsLongAsTheMessage) {
  auto memory = std::make_shared<std::string>(64, 'k');
  std::weak_ptr<std::string> watch = memory;
  const std::string name = "t";
  {
    OutChunk out;
    out.tensor = &name;
    out.dtype = v1::FLOAT32;
    out.data = memory->data();
    out.bytes = memory->size();
    out.keepalive = memory;
    grpc::ByteBuffer message = EncodeStepWeights(out);
    memory.reset();
    EXPECT_FALSE(watch.expired());
  }
  EXPECT_TRUE(watch.expired());
}

}  // namespace
}  // namespace optd::server
