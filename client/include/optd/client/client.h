// The optd C++ client: one Client per server. Errors are absl::Status values with the server's
// code and message (plus the server address).
//
// Thread safety: a Client is thread-safe; calls on different groups may run concurrently.
// Data path: gradients and uploads are sent straight from the caller's buffers (each message is
// a small header plus a slice over the caller's memory, no copy), and weights are written
// straight into the caller's buffers as chunks arrive. A step's chunks may be spread over
// several streams, each on its own connection (ClientOptions::streams); on each stream the
// gradients go up from one thread while another receives, so chunk i+1 goes out while chunk
// i's weights come back.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "optd/client/colocated.h"
#include "optd/client/types.h"

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

  const std::string& target() const;
  const ClientOptions& options() const;

  absl::StatusOr<GroupInfo> CreateGroup(const std::string& group,
                                        const std::vector<TensorSpec>& tensors,
                                        const GroupOptions& options = {});
  absl::StatusOr<GroupInfo> GetGroup(const std::string& group);
  absl::StatusOr<std::vector<GroupInfo>> ListGroups();
  absl::Status DeleteGroup(const std::string& group);
  // Changes the hyperparameters set in `hyperparameters`; returns the group as it is now.
  absl::StatusOr<GroupInfo> UpdateHyperparameters(const std::string& group,
                                                  const Hyperparameters& hyperparameters);

  // Uploads whole tensors, spread over up to ClientOptions::streams concurrent calls (whole
  // tensors per call). Returns the number of elements written.
  absl::StatusOr<int64_t> UploadWeights(const std::string& group,
                                        absl::Span<const ConstBuffer> weights);

  // One step: streams `gradients`, writes returned weights into the matching `weights_out`
  // buffers (by tensor name; a returned tensor without a buffer is an InvalidArgument).
  // With no `weights_out` and options.weights == kUpdated, no weights are asked for (kNone).
  // The gradients are cut into chunks of ClientOptions::chunk_bytes and dealt over up to
  // `streams` streams (options.streams, else the client's), balancing bytes; a step of fewer
  // chunks uses fewer streams. If one stream fails, the others are cancelled, the server undoes
  // the whole step, and the first real error is returned.
  // REQUIRES: the buffers stay valid and unchanged (gradients) until the call returns.
  absl::StatusOr<StepResult> Step(const std::string& group, int64_t step,
                                  absl::Span<const ConstBuffer> gradients,
                                  absl::Span<const MutableBuffer> weights_out,
                                  const StepOptions& options = {});

  // Colocated data path (docs/colocated.md; optd/client/colocated.h).
  // Leases a host shared-memory region of `bytes` bytes for the steps of `group`, from a server
  // on this host. FailedPrecondition with the reason when this process cannot map it (the server
  // is on another host, or /dev/shm is not shared with it, e.g. containers without a shared IPC
  // namespace): the caller may fall back to Step. The server's refusals keep their codes
  // (ResourceExhausted for its region limits, Unimplemented from a server without the RPC).
  absl::StatusOr<std::unique_ptr<ColocatedRegion>> OpenSharedMemoryRegion(const std::string& group,
                                                                         int64_t bytes);
  // Leases a CUDA IPC region over `buffers` (device memory of this process) for the steps of
  // `group`, from a CUDA server on this host (or on a sibling GPU of it): the server's engine
  // reads the gradients from the buffers and writes the new weights into them. Before a step the
  // caller's device work on them must be complete (synchronize); when StepInRegion returns the
  // weights are there. FailedPrecondition naming the buffer when the server cannot open a handle
  // (a CPU server, another host, memory already freed); InvalidArgument for a malformed handle or
  // a range past its allocation.
  absl::StatusOr<std::unique_ptr<ColocatedRegion>> OpenCudaIpcRegion(
      const std::string& group, absl::Span<const CudaIpcBuffer> buffers);
  // One step whose gradients are `ranges` of `region` (written there by the caller before the
  // call). With options.weights kUpdated the new weights of each range that names a weights
  // destination are in the region when this returns; kNone writes nothing; kAll is refused (a
  // tensor without a range has no place in the region). The ranges are dealt over up to
  // options.streams (else the client's) streams, whole ranges each, balancing bytes.
  // REQUIRES: `region` belongs to `group` and stays alive until the call returns.
  absl::StatusOr<StepResult> StepInRegion(const std::string& group, int64_t step,
                                          const ColocatedRegion& region,
                                          absl::Span<const RegionRange> ranges,
                                          const StepOptions& options = {});

  // Reads the current weights into `out` (the tensors named there), with up to
  // ClientOptions::streams concurrent calls (whole tensors per call). Returns the version.
  absl::StatusOr<int64_t> PullWeights(const std::string& group,
                                      absl::Span<const MutableBuffer> out);

  // Opens a Subscribe stream; see Subscription.
  std::unique_ptr<Subscription> Subscribe(const std::string& group, bool send_current);

  absl::StatusOr<SaveCheckpointResult> SaveCheckpoint(const std::string& name,
                                                      const std::vector<std::string>& groups = {});
  absl::StatusOr<RestoreCheckpointResult> RestoreCheckpoint(
      const std::string& name, const std::vector<std::string>& groups = {});

  // Optimizer state in the reference's state_dict layout, per tensor name.
  absl::StatusOr<std::vector<std::pair<std::string, TensorStateArrays>>> ExportState(
      const std::string& group, const std::vector<std::string>& tensors = {});
  absl::Status ImportState(
      const std::string& group,
      const std::vector<std::pair<std::string, TensorStateArrays>>& states);

  // The connections and stubs (gRPC types stay out of this header).
  struct Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

// A Subscribe stream: each Next() fills `out` with the next complete weight version.
// Thread safety: Next() from one thread; Cancel() from any thread.
class Subscription {
 public:
  ~Subscription();
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  // Blocks until a whole version arrived; returns its number. Cancelled after Cancel().
  absl::StatusOr<int64_t> Next(absl::Span<const MutableBuffer> out);
  void Cancel();

  // The call (gRPC types stay out of this header).
  struct Impl;

 private:
  friend class Client;
  explicit Subscription(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace optd::client
