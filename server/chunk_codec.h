// Zero-copy encoding and decoding of the optd.v1 messages that carry tensor bytes.
//
// Note [Chunk messages without protobuf copies]
// A TensorChunk or StateChunk puts its payload (`data`, field 15) last, so a serialized message
// is a small header followed by the raw bytes. Decoding walks gRPC's receive slices with a
// protobuf wire-format reader: the header fields are parsed into small values, and the payload
// is kept as a reference into the slices (Payload), from which the step path copies it exactly
// once, straight into its gradient buffer. Encoding writes the header into one small slice and
// adds a slice that points at the sender's memory (a weight snapshot) with a release callback
// that keeps that memory alive until gRPC has written it. Protobuf parsers accept fields in any
// order, so stock clients read these messages like any other (WeightsMessage sends
// version_complete, field 3, before chunk, field 2, to keep the payload last).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "optd/v1/optd.pb.h"

namespace optd::server {

// The payload bytes of a decoded message: a run of bytes spread over gRPC slices that the
// Payload keeps referenced. Thread safety: immutable after decoding; CopyTo may run on any thread.
class Payload {
 public:
  size_t size() const { return size_; }
  // Copies all size() bytes to `dst`.
  void CopyTo(void* dst) const { CopyRange(0, size_, dst); }
  // Copies bytes [offset, offset + n) to `dst`. REQUIRES: offset + n <= size().
  void CopyRange(size_t offset, size_t n, void* dst) const;
  // The bytes when they lie in one slice (the usual case for small messages), else nullptr.
  const uint8_t* contiguous() const;

 private:
  friend class MessageReader;
  struct Piece {
    size_t slice;
    size_t offset;
    size_t size;
  };
  std::shared_ptr<std::vector<grpc::Slice>> slices_;
  std::vector<Piece> pieces_;
  size_t size_ = 0;
};

// A TensorChunk with its payload left in the receive buffers.
struct ChunkRef {
  std::string tensor;
  int64_t offset = 0;
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  Payload data;
};

// One decoded StepRequest.
struct StepRequestRef {
  enum class Kind { kNone, kBegin, kGradient, kCommit, kRegionGradient };
  Kind kind = Kind::kNone;
  v1::StepBegin begin;
  ChunkRef gradient;
  v1::RegionChunk region_gradient;  // a range in the step's colocated region
};

// DataLoss for malformed bytes (the message names what was wrong).
[[nodiscard]] absl::Status DecodeStepRequest(const grpc::ByteBuffer& message, StepRequestRef* out);
// UploadWeightsRequest: group (may be empty) and chunk.
[[nodiscard]] absl::Status DecodeUploadRequest(const grpc::ByteBuffer& message, std::string* group,
                                               ChunkRef* chunk);
// StateChunk: every field but `data` in `header`, the payload in `data`.
[[nodiscard]] absl::Status DecodeStateChunk(const grpc::ByteBuffer& message,
                                            v1::StateChunk* header, Payload* data);
// Parses a small message (requests without payload) from a ByteBuffer.
[[nodiscard]] absl::Status DecodeMessage(const grpc::ByteBuffer& message,
                                         google::protobuf::MessageLite* out);

// Memory an outgoing message points into, kept alive until gRPC has sent the bytes.
using Keepalive = std::shared_ptr<const void>;

// The fields of an outgoing TensorChunk; `data` stays valid while `keepalive` lives.
struct OutChunk {
  const std::string* tensor = nullptr;
  int64_t offset = 0;
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  const void* data = nullptr;
  size_t bytes = 0;
  Keepalive keepalive;
};

// StepResponse{weights = chunk}.
grpc::ByteBuffer EncodeStepWeights(const OutChunk& chunk);
// WeightsMessage{version, version_complete, chunk}.
grpc::ByteBuffer EncodeWeightsMessage(int64_t version, bool version_complete,
                                      const OutChunk& chunk);
// StateChunk `header` (data unset) with `bytes` bytes at `data` as its payload.
grpc::ByteBuffer EncodeStateChunk(const v1::StateChunk& header, const void* data, size_t bytes,
                                  Keepalive keepalive);
// Any small message, serialized into one slice.
grpc::ByteBuffer EncodeMessage(const google::protobuf::MessageLite& message);

}  // namespace optd::server
