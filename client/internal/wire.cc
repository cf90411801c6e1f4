#include "client/internal/wire.h"

#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/support/slice.h"

namespace optd::client::internal {
namespace {

constexpr int kWireLengthDelimited = 2;
constexpr int kChunkDataField = 15;  // optd.v1.TensorChunk.data

void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void AppendTag(int field, std::string* out) {
  AppendVarint((static_cast<uint64_t>(field) << 3) | kWireLengthDelimited, out);
}

}  // namespace

void SetStepBegin(const std::string& group, int64_t step, const StepOptions& options,
                  WeightsReturn weights, v1::StepBegin* begin) {
  begin->set_group(group);
  begin->set_worker(options.worker);
  begin->set_step(step);
  if (options.lr) begin->set_lr(*options.lr);
  begin->set_weights(static_cast<v1::WeightsReturn>(weights));
  if (options.base_version) begin->set_base_version(*options.base_version);
  if (options.expect_last_step) begin->set_expect_last_step(*options.expect_last_step);
}

uint64_t NewAttemptId() {
  thread_local std::mt19937_64 gen{std::random_device{}()};
  uint64_t id = 0;
  while (id == 0) id = gen();
  return id;
}

int64_t ElementsPerChunk(int64_t chunk_bytes, DType dtype) {
  const int64_t n = chunk_bytes / DTypeSize(dtype) / kBlockSize * kBlockSize;
  return n < kBlockSize ? kBlockSize : n;
}

std::string StringField(int field, std::string_view value) {
  std::string out;
  AppendTag(field, &out);
  AppendVarint(value.size(), &out);
  out.append(value);
  return out;
}

grpc::ByteBuffer ChunkMessage(std::string_view prefix, int chunk_field, const std::string& tensor,
                              int64_t offset, DType dtype, const void* data, size_t bytes) {
  v1::TensorChunk header;
  header.set_tensor(tensor);
  header.set_offset(offset);
  header.set_dtype(static_cast<v1::DType>(dtype));
  std::string chunk_head = header.SerializeAsString();  // data is empty: not serialized
  if (bytes > 0) {
    AppendTag(kChunkDataField, &chunk_head);
    AppendVarint(bytes, &chunk_head);
  }
  std::string head(prefix);
  AppendTag(chunk_field, &head);
  AppendVarint(chunk_head.size() + bytes, &head);
  head += chunk_head;
  std::vector<grpc::Slice> slices;
  slices.emplace_back(head.data(), head.size());  // copies the few header bytes
  if (bytes > 0) slices.emplace_back(data, bytes, grpc::Slice::STATIC_SLICE);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

grpc::ByteBuffer SerializeToByteBuffer(const google::protobuf::MessageLite& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

bool ParseFromByteBuffer(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return false;
  std::string bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return message->ParseFromString(bytes);
}

BufferMap MakeBufferMap(absl::Span<const MutableBuffer> buffers) {
  BufferMap map;
  for (const MutableBuffer& b : buffers) map[b.tensor] = &b;
  return map;
}

absl::Status WriteChunk(const v1::TensorChunk& chunk, const BufferMap& out, int64_t* elements) {
  auto it = out.find(chunk.tensor());
  if (it == out.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights_out: no buffer for tensor '", chunk.tensor(), "'"));
  }
  const MutableBuffer& dst = *it->second;
  if (static_cast<int>(chunk.dtype()) != static_cast<int>(dst.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights_out[", dst.tensor, "].dtype: buffer is ", DTypeName(dst.dtype),
        ", server sent dtype ", static_cast<int>(chunk.dtype())));
  }
  const int size = DTypeSize(dst.dtype);
  if (chunk.data().size() % size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("weights of ", dst.tensor, ": ",
                                                   chunk.data().size(),
                                                   " bytes is not a whole number of elements"));
  }
  const int64_t n = static_cast<int64_t>(chunk.data().size()) / size;
  if (chunk.offset() < 0 || chunk.offset() + n > dst.numel) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights_out[", dst.tensor, "]: chunk [", chunk.offset(), ", ", chunk.offset() + n,
        ") is outside the buffer's ", dst.numel, " elements"));
  }
  std::memcpy(static_cast<char*>(dst.data) + chunk.offset() * size, chunk.data().data(),
              chunk.data().size());
  *elements += n;
  return absl::OkStatus();
}

}  // namespace optd::client::internal
