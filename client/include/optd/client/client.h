// The optd C++ client: one Client per server. Errors are absl::Status values with the server's
// code and message (plus the server address).
//
// Thread safety: a Client is thread-safe; calls on different groups may run concurrently.
// Data path: gradients and uploads are sent straight from the caller's buffers (each message is
// a small header plus a slice over the caller's memory, no copy), and weights are written
// straight into the caller's buffers as chunks arrive. Step() sends from a writer thread while
// the calling thread receives, so tensor i+1 goes out while tensor i's weights come back.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "optd/client/types.h"
#include "optd/v1/optd.grpc.pb.h"

namespace optd::client {

class Subscription;

class Client {
 public:
  // Connects lazily: an unreachable server shows up as Unavailable on the first call.
  static absl::StatusOr<std::unique_ptr<Client>> Create(const std::string& target,
                                                        const ClientOptions& options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const std::string& target() const { return target_; }
  const ClientOptions& options() const { return options_; }

  absl::StatusOr<v1::GroupInfo> CreateGroup(const std::string& group,
                                            const std::vector<TensorSpec>& tensors,
                                            const GroupOptions& options = {});
  absl::StatusOr<v1::GroupInfo> GetGroup(const std::string& group);
  absl::StatusOr<std::vector<v1::GroupInfo>> ListGroups();
  absl::Status DeleteGroup(const std::string& group);
  absl::StatusOr<v1::GroupInfo> UpdateHyperparameters(const std::string& group,
                                                      const Hyperparameters& hyperparameters);

  // Uploads whole tensors. Returns the number of elements written.
  absl::StatusOr<int64_t> UploadWeights(const std::string& group,
                                        absl::Span<const ConstBuffer> weights);

  // One step: streams `gradients`, writes returned weights into the matching `weights_out`
  // buffers (by tensor name; a returned tensor without a buffer is an InvalidArgument).
  // With no `weights_out` and options.weights == kUpdated, no weights are asked for (kNone).
  absl::StatusOr<StepResult> Step(const std::string& group, int64_t step,
                                  absl::Span<const ConstBuffer> gradients,
                                  absl::Span<const MutableBuffer> weights_out,
                                  const StepOptions& options = {});

  // Reads the current weights into `out` (the tensors named there). Returns the version.
  absl::StatusOr<int64_t> PullWeights(const std::string& group,
                                      absl::Span<const MutableBuffer> out);

  // Opens a Subscribe stream; see Subscription.
  std::unique_ptr<Subscription> Subscribe(const std::string& group, bool send_current);

  absl::StatusOr<v1::SaveCheckpointResponse> SaveCheckpoint(
      const std::string& name, const std::vector<std::string>& groups = {});
  absl::StatusOr<v1::RestoreCheckpointResponse> RestoreCheckpoint(
      const std::string& name, const std::vector<std::string>& groups = {});

  // Optimizer state in the reference's state_dict layout, per tensor name.
  absl::StatusOr<std::vector<std::pair<std::string, TensorStateArrays>>> ExportState(
      const std::string& group, const std::vector<std::string>& tensors = {});
  absl::Status ImportState(
      const std::string& group,
      const std::vector<std::pair<std::string, TensorStateArrays>>& states);

 private:
  Client(std::string target, const ClientOptions& options,
         std::shared_ptr<grpc::Channel> channel);
  void PrepareContext(grpc::ClientContext* context) const;

  const std::string target_;
  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Optimizer::Stub> stub_;

  friend class Subscription;
};

// A Subscribe stream: each Next() fills `out` with the next complete weight version.
// Thread safety: Next() from one thread; Cancel() from any thread.
class Subscription {
 public:
  ~Subscription();
  // Blocks until a whole version arrived; returns its number. Cancelled after Cancel().
  absl::StatusOr<int64_t> Next(absl::Span<const MutableBuffer> out);
  void Cancel();

 private:
  friend class Client;
  Subscription() = default;
  std::string target_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::WeightsMessage>> reader_;
};

}  // namespace optd::client
