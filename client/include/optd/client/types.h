// Plain types of the optd C++ client: tensor descriptions, caller-owned buffers, options, and
// what the server reports (group info, checkpoint results, optimizer state). No proto or gRPC
// type appears here; the enums' values equal the wire's (optd.v1) so conversion is a cast.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace optd::client {

// The one element-type numbering of the client (= optd.v1.DType; the C ABI's OPTD_DTYPE_*).
enum class DType : int { kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3 };
int DTypeSize(DType dtype);
const char* DTypeName(DType dtype);

struct TensorSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

// Unset fields take the server's defaults (bitsandbytes PagedAdamW8bit's).
struct Hyperparameters {
  std::optional<float> lr;
  std::optional<float> beta1;
  std::optional<float> beta2;
  std::optional<float> eps;
  std::optional<float> weight_decay;
  std::optional<bool> amsgrad;
  std::optional<int32_t> optim_bits;
  std::optional<int64_t> min_8bit_size;
  std::optional<int32_t> percentile_clipping;
  std::optional<bool> block_wise;
};

// The hyperparameters a group runs with, every one resolved (the server fills its defaults).
struct GroupHyperparameters {
  float lr = 0.0f;
  float beta1 = 0.0f;
  float beta2 = 0.0f;
  float eps = 0.0f;
  float weight_decay = 0.0f;
  bool amsgrad = false;
  int32_t optim_bits = 0;
  int64_t min_8bit_size = 0;
  int32_t percentile_clipping = 0;
  bool block_wise = false;
};

enum class SyncMode : int { kSync = 1, kAsync = 2 };             // = optd.v1.SyncMode
enum class WeightsReturn : int { kUpdated = 1, kAll = 2, kNone = 3 };  // = optd.v1.WeightsReturn

struct GroupOptions {
  Hyperparameters hyperparameters;
  int32_t num_workers = 1;
  SyncMode mode = SyncMode::kSync;
  int64_t sync_timeout_ms = 0;  // 0 = the server's default
  int64_t max_staleness = 0;    // 0 = unbounded
};

// A group as the server holds it.
struct GroupInfo {
  std::string group;
  std::vector<TensorSpec> tensors;
  GroupHyperparameters hyperparameters;
  int32_t num_workers = 0;
  SyncMode mode = SyncMode::kSync;
  int64_t sync_timeout_ms = 0;
  int64_t max_staleness = 0;       // 0 = unbounded
  int64_t version = 0;             // updates applied to the group's weights
  int64_t weight_bytes = 0;
  int64_t state_bytes = 0;
  bool weights_initialized = false;  // every element of every tensor has been uploaded
  // Last step applied per worker (index = worker): where a restarted trainer resumes.
  std::vector<int64_t> worker_steps;
};

struct SaveCheckpointResult {
  std::string path;                 // on the server
  int64_t bytes = 0;
  std::vector<std::string> groups;  // the groups saved
};

struct RestoreCheckpointResult {
  std::vector<GroupInfo> groups;  // the groups restored, as they are now
};

// A caller-owned flat tensor the client reads from. Must stay valid and unchanged until the
// call that received it returns.
struct ConstBuffer {
  std::string tensor;
  DType dtype = DType::kFloat32;
  const void* data = nullptr;
  int64_t numel = 0;
};

// A caller-owned flat tensor the client writes into (weights coming back).
struct MutableBuffer {
  std::string tensor;
  DType dtype = DType::kFloat32;
  void* data = nullptr;
  int64_t numel = 0;
};

struct StepOptions {
  int32_t worker = 0;
  std::optional<float> lr;  // this step's lr (schedulers)
  WeightsReturn weights = WeightsReturn::kUpdated;
  std::optional<int64_t> base_version;  // async mode
  // Concurrent streams (connections) for this step; 0 = the client's ClientOptions::streams.
  int32_t streams = 0;
  // A step the caller spreads over several concurrent Step() calls (e.g. one per gradient
  // bucket, each started as soon as backward produced it): this call is part `part_index` of
  // `part_count` that together make the step. It sends only its own gradients, on one stream,
  // and gets back the weights of what it sent; the server applies the step when every part has
  // committed. 0 = this call is the whole step.
  int32_t part_count = 0;
  int32_t part_index = 0;
  // Apply only if this worker's last applied step on the server is this one (else
  // FAILED_PRECONDITION, nothing applied): a trainer that lost its place learns it.
  std::optional<int64_t> expect_last_step;
};

struct StepResult {
  int64_t step = 0;
  int64_t version = 0;
  bool duplicate = false;
  int64_t nonfinite_gradient_elements = 0;
  int64_t weight_elements_received = 0;
};

// TLS to the server (docs/security.md). Each PEM field holds either the PEM text itself
// (it contains "-----BEGIN") or the path of a file that holds it, read by Client::Create.
struct TlsOptions {
  // TLS on; also implied by any PEM field below. Off: plaintext (servers accept it only on
  // loopback or when started with --allow_insecure).
  bool enabled = false;
  // CA bundle that signed the server's certificate; empty = the system's root CAs.
  std::string root_ca;
  // Mutual TLS: this client's certificate chain and its private key (both or neither).
  std::string client_cert;
  std::string client_key;
  // Name the server's certificate is checked against instead of the target's host (e.g. when
  // dialling an IP address the certificate does not list); empty = the target's host.
  std::string server_name;
};

struct ClientOptions {
  // Payload bytes per chunk message; rounded down to a multiple of 256 elements.
  int64_t chunk_bytes = int64_t{4} << 20;
  int max_message_bytes = 64 << 20;
  // Deadline of each call; 0 = none.
  int64_t timeout_ms = 0;
  // Connections to the server (each its own TCP connection), and the concurrent streams a
  // step's chunks, an upload's chunks or a pull's tensors are spread over. >= 1.
  int streams = 1;
  // Raise glibc malloc's mmap and trim thresholds for the whole process, once, so that gRPC's
  // receive buffers are not faulted in afresh for every message (Note [glibc malloc and gRPC's
  // receive buffers] in client/internal/malloc_tuning.h). false leaves the allocator alone.
  bool tune_malloc = true;
  TlsOptions tls;
  // Bearer token sent with every call (metadata "authorization: Bearer <token>") to a server
  // started with --token_file; empty = none. Visible ASCII only.
  std::string token;
};

// Element type of an optimizer-state array (= optd.v1.StateElementType).
enum class StateElementType : int { kUint8 = 1, kFloat32 = 2, kInt64 = 3 };
int StateElementSize(StateElementType type);

// One array of a tensor's optimizer state (reference state_dict layout), raw little-endian.
struct StateArray {
  StateElementType type = StateElementType::kUint8;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
struct TensorStateArrays {
  int64_t step = 0;
  std::vector<std::pair<std::string, StateArray>> arrays;  // state1, state2, qmap1, ...
};

}  // namespace optd::client
