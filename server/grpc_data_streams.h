// The data_streams.h interfaces over a MessageStream of raw gRPC messages.
#pragma once

#include "server/data_streams.h"
#include "server/message_stream.h"

namespace optd::server {

class GrpcStepStream final : public StepStream {
 public:
  explicit GrpcStepStream(MessageStream* stream) : stream_(stream) {}
  absl::StatusOr<bool> Read(StepRequestRef* request) override;
  bool SendWeights(const OutChunk& chunk) override;
  bool SendDone(const v1::StepDone& done) override;

 private:
  MessageStream* const stream_;
};

class GrpcUploadStream final : public UploadStream {
 public:
  explicit GrpcUploadStream(MessageStream* stream) : stream_(stream) {}
  absl::StatusOr<bool> Read(std::string* group, ChunkRef* chunk) override;

 private:
  MessageStream* const stream_;
};

class GrpcWeightsSink final : public WeightsSink {
 public:
  explicit GrpcWeightsSink(MessageStream* stream) : stream_(stream) {}
  bool Send(int64_t version, bool version_complete, const OutChunk& chunk) override;
  bool cancelled() const override { return stream_->cancelled(); }

 private:
  MessageStream* const stream_;
};

class GrpcStateSink final : public StateSink {
 public:
  explicit GrpcStateSink(MessageStream* stream) : stream_(stream) {}
  bool Send(const v1::StateChunk& header, const void* data, size_t bytes,
            const Keepalive& keepalive) override;

 private:
  MessageStream* const stream_;
};

class GrpcStateSource final : public StateSource {
 public:
  explicit GrpcStateSource(MessageStream* stream) : stream_(stream) {}
  absl::StatusOr<bool> Read(v1::StateChunk* header, Payload* data) override;

 private:
  MessageStream* const stream_;
};

}  // namespace optd::server
