// Authorization of the client-streaming data-path calls, whose group is known only once a
// message names it: a Step stream's begins (each may name another group), an UploadWeights or
// ImportState stream's messages. Each wraps the transport's stream and checks every group a
// message names before OptimizerCore sees the message; a refused group ends the call with the
// check's status (the core undoes a begun step as for any failed read).
// Thread safety: as the wrapped stream (one call, its thread).
#pragma once

#include "server/auth_policy.h"
#include "server/data_streams.h"

namespace optd::server {

class AuthorizedStepStream final : public StepStream {
 public:
  // `inner` and `authorizer` must outlive this.
  AuthorizedStepStream(StepStream* inner, const Authorizer* authorizer, Caller caller)
      : inner_(inner), authorizer_(authorizer), caller_(std::move(caller)) {}
  absl::StatusOr<bool> Read(StepRequestRef* request) override;
  bool SendWeights(const OutChunk& chunk) override { return inner_->SendWeights(chunk); }
  bool SendDone(const v1::StepDone& done) override { return inner_->SendDone(done); }

 private:
  StepStream* const inner_;
  const Authorizer* const authorizer_;
  const Caller caller_;
};

class AuthorizedUploadStream final : public UploadStream {
 public:
  AuthorizedUploadStream(UploadStream* inner, const Authorizer* authorizer, Caller caller)
      : inner_(inner), authorizer_(authorizer), caller_(std::move(caller)) {}
  absl::StatusOr<bool> Read(std::string* group, ChunkRef* chunk) override;

 private:
  UploadStream* const inner_;
  const Authorizer* const authorizer_;
  const Caller caller_;
};

class AuthorizedStateSource final : public StateSource {
 public:
  AuthorizedStateSource(StateSource* inner, const Authorizer* authorizer, Caller caller)
      : inner_(inner), authorizer_(authorizer), caller_(std::move(caller)) {}
  absl::StatusOr<bool> Read(v1::StateChunk* header, Payload* data) override;

 private:
  StateSource* const inner_;
  const Authorizer* const authorizer_;
  const Caller caller_;
};

}  // namespace optd::server
