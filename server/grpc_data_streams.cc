#include "server/grpc_data_streams.h"

namespace optd::server {

absl::StatusOr<bool> GrpcStepStream::Read(StepRequestRef* request) {
  grpc::ByteBuffer message;
  if (!stream_->Read(&message)) return false;
  if (absl::Status s = DecodeStepRequest(message, request); !s.ok()) return s;
  return true;
}

bool GrpcStepStream::SendWeights(const OutChunk& chunk) {
  return stream_->Write(EncodeStepWeights(chunk));
}

bool GrpcStepStream::SendDone(const v1::StepDone& done) {
  v1::StepResponse response;
  *response.mutable_done() = done;
  return stream_->Write(EncodeMessage(response));
}

absl::StatusOr<bool> GrpcUploadStream::Read(std::string* group, ChunkRef* chunk) {
  grpc::ByteBuffer message;
  if (!stream_->Read(&message)) return false;
  if (absl::Status s = DecodeUploadRequest(message, group, chunk); !s.ok()) return s;
  return true;
}

bool GrpcWeightsSink::Send(int64_t version, bool version_complete, const OutChunk& chunk) {
  return stream_->Write(EncodeWeightsMessage(version, version_complete, chunk));
}

bool GrpcStateSink::Send(const v1::StateChunk& header, const void* data, size_t bytes,
                         const Keepalive& keepalive) {
  return stream_->Write(EncodeStateChunk(header, data, bytes, keepalive));
}

absl::StatusOr<bool> GrpcStateSource::Read(v1::StateChunk* header, Payload* data) {
  grpc::ByteBuffer message;
  if (!stream_->Read(&message)) return false;
  if (absl::Status s = DecodeStateChunk(message, header, data); !s.ok()) return s;
  return true;
}

}  // namespace optd::server
