// The optd server: engine, metrics, the Optimizer service, health checking and reflection on one
// gRPC server.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "optd/core/engine.h"
#include "server/checkpoint_scheduler.h"
#include "server/limits.h"
#include "server/metrics.h"
#include "server/auth_policy.h"
#include "server/optimizer_core.h"
#include "server/service.h"

namespace optd::server {

struct ServerOptions {
  // gRPC address; port 0 picks a free port (see Server::port()).
  std::string listen_address = "127.0.0.1:0";
  // Prometheus /metrics address; empty = no HTTP endpoint.
  std::string metrics_listen_address;
  // "auto" (CUDA when compiled in and a device works, else CPU), "cpu" or "cuda".
  std::string backend = "auto";
  int gpu = 0;                       // CUDA device ordinal
  int64_t device_budget_bytes = 0;   // CUDA: bytes the states may occupy; 0 = free memory
  int cpu_threads = 0;               // CPU engine threads; 0 = all hardware threads
  std::string checkpoint_dir;        // empty = SaveCheckpoint/RestoreCheckpoint disabled
  // Largest gRPC message either way. The default leaves room for 4 MiB chunks plus headers and
  // for clients that choose 8 MiB.
  int max_message_bytes = 16 << 20;
  int64_t chunk_bytes = int64_t{4} << 20;  // payload per message the server sends
  std::string hostname;              // `hostname` metric label; empty = gethostname()

  // Security (docs/security.md).
  // TLS on the gRPC port: PEM certificate chain and key; empty = plaintext, which is refused
  // unless listen_address is a loopback address or allow_insecure is set.
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM CA bundle: clients must present a certificate it signed (mutual TLS). Needs the above.
  std::string tls_client_ca_file;
  bool allow_insecure = false;
  // Bearer tokens with roles and group prefixes (Note [Token file] in server/auth_tokens.h);
  // empty = no authentication, every caller may do everything (loopback/development).
  std::string token_file;
  // How often the TLS files and the token file are checked for changes; at least 1 s.
  absl::Duration credential_refresh = absl::Seconds(60);
  // Serve gRPC server reflection (grpc.reflection.v1alpha), without authentication.
  bool reflection = false;
  // Metrics: groups with `group` series of their own (the rest under group="_other"), and the
  // /metrics basic-auth file (empty: none); see MetricsOptions.
  int metrics_max_groups = 100;
  std::string metrics_basic_auth_file;

  // Admission limits (server/limits.h; one flag each).
  Limits limits;
  // Recovery (server/checkpoint_scheduler.h), all needing checkpoint_dir: restore at start
  // ("" = none, "latest", or a checkpoint name); periodic checkpoints every so many steps of a
  // group and/or seconds (0 = off), keeping the newest checkpoint_keep; a last one at shutdown.
  std::string restore;
  int64_t checkpoint_every_steps = 0;
  int64_t checkpoint_every_seconds = 0;
  int checkpoint_keep = 3;
  bool checkpoint_on_shutdown = true;
};

// Thread safety: Wait and Shutdown may be called from different threads.
class Server {
 public:
  // Creates the engine and metrics, binds both ports and starts serving. Errors name what
  // failed: the backend (Unavailable), a port that cannot bind (Unavailable naming the address),
  // TLS or token files (InvalidArgument naming the flag), plaintext on an address other machines
  // can reach (FailedPrecondition).
  static absl::StatusOr<std::unique_ptr<Server>> BuildAndStart(const ServerOptions& options);
  ~Server();

  int port() const { return port_; }
  int metrics_port() const { return metrics_->port(); }
  core::Backend backend() const { return engine_->backend(); }
  // "127.0.0.1:PORT" style address clients can dial.
  std::string address() const;

  // Blocks until the server has shut down.
  void Wait();
  // Stops accepting calls, ends Subscribe streams, lets in-flight calls finish for up to `grace`,
  // then cancels the rest. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(30));

  // Sets the gRPC health status to NOT_SERVING (after a device error); RPCs keep being served.
  void MarkNotServing(const absl::Status& reason);

 private:
  Server() = default;
  // Removes orphaned temporary checkpoint files, restores (options.restore) and starts the
  // periodic checkpoints.
  absl::Status StartRecovery(const ServerOptions& options);

  std::string host_;
  int port_ = 0;
  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<OptimizerCore> core_;
  std::unique_ptr<Authorizer> authorizer_;
  std::unique_ptr<CheckpointScheduler> checkpoints_;  // null without periodic checkpoints
  std::unique_ptr<OptimizerService> service_;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace optd::server
