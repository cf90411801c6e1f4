// Helpers of the server tests: a server in process or as a child process, and a minimal client
// of the optd.v1 API (deliberately independent of client/, so the server is tested on its own).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/server.h"

namespace optd::testing {

using Bytes = std::vector<uint8_t>;

absl::Status FromGrpc(const grpc::Status& s);

std::unique_ptr<v1::Optimizer::Stub> MakeStub(const std::string& address,
                                              int max_message_bytes = 64 << 20);

// The backend the tests run on: $OPTD_TEST_BACKEND (cpu, cuda, auto), default cpu.
std::string TestBackend();

// A server in this process on 127.0.0.1:0 with TestBackend() (metrics endpoint only when
// options.metrics_listen_address is set).
struct InProcessServer {
  std::unique_ptr<server::Server> server;
  std::unique_ptr<v1::Optimizer::Stub> stub;
};
InProcessServer StartInProcess(server::ServerOptions options = {});

// The built optd binary as a child process on 127.0.0.1:0.
class ChildServer {
 public:
  // Starts `OPTD_SERVER_BINARY --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0
  // --backend=TestBackend()`
  // plus `extra_args`, and waits until its --port_file appears.
  static absl::StatusOr<std::unique_ptr<ChildServer>> Start(std::vector<std::string> extra_args);
  ~ChildServer();
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // Sends `sig` and waits; returns the exit status as waitpid reports it.
  int Kill(int sig);

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  std::string dir_;
};

// A fresh temporary directory.
std::string MakeTempDir();

// One tensor of a CreateGroupRequest.
v1::TensorInfo Tensor(const std::string& name, v1::DType dtype, std::vector<int64_t> shape);

// Uploads `data` (raw, in `dtype`) in chunks of `chunk_elements`.
absl::StatusOr<v1::UploadWeightsResponse> Upload(v1::Optimizer::Stub& stub,
                                                 const std::string& group,
                                                 const std::string& tensor, v1::DType dtype,
                                                 const Bytes& data, int64_t chunk_elements = 1 << 20);

struct Grad {
  std::string tensor;
  v1::DType dtype;
  Bytes data;  // whole tensor
};

struct StepOptions {
  int worker = 0;
  std::optional<float> lr;
  v1::WeightsReturn weights = v1::UPDATED;
  std::optional<int64_t> base_version;
  int64_t chunk_elements = 1 << 20;  // gradient elements per message (multiple of 256)
  // K > 1: the step goes over K concurrent streams (StepBegin.streams); chunk j on stream j % K.
  int streams = 1;
  // Fault injection for K-stream tests: this stream sends a chunk outside its tensor first.
  int bad_stream = -1;
  // This stream sends its begin and then nothing (no chunks, no commit) until its deadline.
  int silent_stream = -1;
  // This stream asks for no weights back (NONE), whatever `weights` says.
  int weights_none_stream = -1;
  // This stream waits 100 ms before its commit (so that it commits last).
  int late_commit_stream = -1;
  int64_t deadline_ms = 0;  // per stream; 0 = none
  uint64_t attempt = 0;     // StepBegin.attempt of every stream (0: none)
  // Only streams [first_stream, streams) are opened (the others "never reach the server").
  int first_stream = 0;
};

struct StepResult {
  absl::Status status;
  v1::StepDone done;
  std::map<std::string, Bytes> weights;  // assembled from the weight chunks received
};

// Runs one step on its own stream (or K streams, options.streams). With K streams the result
// holds the first failure, the weights of all streams, and stream 0's StepDone (InternalError if
// the streams' StepDone differ).
StepResult RunStep(v1::Optimizer::Stub& stub, const std::string& group, int64_t step,
                   const std::vector<Grad>& grads, const StepOptions& options = {});

// All weights of the group (PullWeights), by tensor; `version` gets the version when non-null.
absl::StatusOr<std::map<std::string, Bytes>> Pull(v1::Optimizer::Stub& stub,
                                                  const std::string& group,
                                                  int64_t* version = nullptr);

// ExportState as tensor -> key -> raw bytes.
absl::StatusOr<std::map<std::string, std::map<std::string, Bytes>>> Export(
    v1::Optimizer::Stub& stub, const std::string& group);

// Fixed-seed random fp32 values in [-scale, scale).
std::vector<float> RandomFloats(int64_t n, uint32_t seed, float scale = 1.0f);
Bytes AsBytes(const std::vector<float>& v);
// The bf16 bytes of `v` (rounded to nearest even, as the server narrows).
Bytes Bf16(const std::vector<float>& v);
// Two groups that together carry every kind of checkpointed state: "main" and "clip" (percentile
// clipping 10, so gnorm_vec too), each with tensors "w" (fp32, `w` elements: 8-bit states when
// w >= 4096) and "b" (`b_dtype`, `b` elements), uploaded from RandomFloats seeds 1 and 2.
void CreateMainAndClipGroups(v1::Optimizer::Stub& stub, int64_t w, int64_t b, v1::DType b_dtype);
std::vector<float> AsFloats(const Bytes& b);

// Plain HTTP GET of http://127.0.0.1:port/path over a raw socket; returns the body.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// Value of the first sample of `metric` whose label set contains `label_substring`, or -1.
double MetricValue(const std::string& exposition, const std::string& metric,
                   const std::string& label_substring = "");

}  // namespace optd::testing
