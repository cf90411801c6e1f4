// Zero-copy encoding of chunk-carrying requests, and decoding of weight chunks into
// caller buffers.
//
// A TensorChunk's `data` has the highest field number, so a request message is a small header
// (outer fields, the chunk's tensor/offset/dtype, data's tag and length) followed by the raw
// payload. ChunkMessage builds a grpc::ByteBuffer of two slices: a copy of the header and a
// slice over the caller's memory (gRPC reads it while sending; the caller keeps it alive until
// the call finishes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "grpcpp/support/byte_buffer.h"
#include "optd/client/types.h"
#include "optd/v1/optd.pb.h"

namespace optd::client::internal {

// A random StepBegin.attempt, never 0 (0 means "unknown" to the server). Thread-safe.
uint64_t NewAttemptId();

// The fields of a step's begin that come from the call: group, worker, step, lr, `weights`,
// base_version and expect_last_step (the callers add streams, attempt and region).
void SetStepBegin(const std::string& group, int64_t step, const StepOptions& options,
                  WeightsReturn weights, v1::StepBegin* begin);

inline constexpr int64_t kBlockSize = 256;

// Elements per chunk message: chunk_bytes / dtype size rounded down to a multiple of 256,
// at least 256.
int64_t ElementsPerChunk(int64_t chunk_bytes, DType dtype);

// `prefix` holds already-serialized fields placed before the chunk (e.g. UploadWeightsRequest's
// group); the chunk itself is field `chunk_field` of the outer message.
grpc::ByteBuffer ChunkMessage(std::string_view prefix, int chunk_field, const std::string& tensor,
                              int64_t offset, DType dtype, const void* data, size_t bytes);

// Serialized string field (tag + length + bytes).
std::string StringField(int field, std::string_view value);

// A small protobuf message (a request, a response) as one slice: copies its bytes.
grpc::ByteBuffer SerializeToByteBuffer(const google::protobuf::MessageLite& message);
// False when the bytes do not parse as `message`'s type.
[[nodiscard]] bool ParseFromByteBuffer(const grpc::ByteBuffer& buffer,
                                       google::protobuf::MessageLite* message);

// Destination buffers by tensor name.
using BufferMap = absl::flat_hash_map<std::string, const MutableBuffer*>;
BufferMap MakeBufferMap(absl::Span<const MutableBuffer> buffers);

// Copies `chunk`'s payload into its buffer in `out`. InvalidArgument when no buffer has that
// name, the dtype differs or the range is outside the buffer. Adds the element count to
// *elements.
absl::Status WriteChunk(const v1::TensorChunk& chunk, const BufferMap& out, int64_t* elements);

}  // namespace optd::client::internal

namespace optd::client::internal {

// What DecodeStepResponse found in one StepResponse message.
struct DecodedStepResponse {
  bool has_done = false;
  v1::StepDone done;
  int64_t weight_elements = 0;  // elements written into `out` by this message
};

// What DecodeWeightsMessage found in one WeightsMessage (PullWeights, Subscribe).
struct DecodedWeightsMessage {
  int64_t version = 0;
  bool version_complete = false;
  int64_t weight_elements = 0;  // elements written into `out` by this message
};

// Decodes a serialized optd.v1.StepResponse held in gRPC slices. A weight chunk's payload is
// copied once, from the slices straight into its buffer in `out` (no protobuf string in
// between); everything else is parsed normally. Errors: DataLoss for a malformed message, the
// WriteChunk errors for a chunk that does not fit its buffer.
absl::Status DecodeStepResponse(const grpc::ByteBuffer& message, const BufferMap& out,
                                DecodedStepResponse* decoded);
// The same for a serialized optd.v1.WeightsMessage.
absl::Status DecodeWeightsMessage(const grpc::ByteBuffer& message, const BufferMap& out,
                                  DecodedWeightsMessage* decoded);

}  // namespace optd::client::internal
