// What the data-path operations read and write, independent of the transport that carries them.
// The gRPC adapters (grpc_data_streams.h) decode and encode optd.v1 messages zero-copy; another
// transport (shared memory, a test) implements the same interfaces.
// Thread safety: each object serves one call and is used from that call's thread.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "optd/v1/optd.pb.h"
#include "server/chunk_codec.h"

namespace optd::server {

// One Step stream.
class StepStream {
 public:
  virtual ~StepStream() = default;
  // The next request: true, or false at the end of the stream (or once cancelled); DataLoss
  // for a malformed message.
  virtual absl::StatusOr<bool> Read(StepRequestRef* request) = 0;
  // False once the client is gone.
  virtual bool SendWeights(const OutChunk& chunk) = 0;
  virtual bool SendDone(const v1::StepDone& done) = 0;
};

// The chunks of one UploadWeights call.
class UploadStream {
 public:
  virtual ~UploadStream() = default;
  // `group` is empty on messages that do not name it.
  virtual absl::StatusOr<bool> Read(std::string* group, ChunkRef* chunk) = 0;
};

// Weight versions out (PullWeights, Subscribe).
class WeightsSink {
 public:
  virtual ~WeightsSink() = default;
  virtual bool Send(int64_t version, bool version_complete, const OutChunk& chunk) = 0;
  virtual bool cancelled() const = 0;
};

// State arrays out (ExportState).
class StateSink {
 public:
  virtual ~StateSink() = default;
  virtual bool Send(const v1::StateChunk& header, const void* data, size_t bytes,
                    const Keepalive& keepalive) = 0;
};

// State arrays in (ImportState).
class StateSource {
 public:
  virtual ~StateSource() = default;
  virtual absl::StatusOr<bool> Read(v1::StateChunk* header, Payload* data) = 0;
};

}  // namespace optd::server
