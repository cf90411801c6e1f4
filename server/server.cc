#include "server/server.h"

#include <unistd.h>

#include <cstdio>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <vector>
#include <string>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/checkpoint_dir.h"
#include "server/tls_credentials.h"

namespace optd::server {
namespace {

absl::StatusOr<std::unique_ptr<core::Engine>> MakeEngine(const ServerOptions& options) {
  core::EngineOptions eo;
  eo.device = options.gpu;
  eo.device_budget_bytes = options.device_budget_bytes;
  eo.num_threads = options.cpu_threads;
  if (options.backend == "cpu") {
    eo.backend = core::Backend::kCpu;
    return core::CreateEngine(eo);
  }
  if (options.backend == "cuda") {
    eo.backend = core::Backend::kCuda;
    return core::CreateEngine(eo);
  }
  if (options.backend != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend must be auto, cpu or cuda, got '", options.backend, "'"));
  }
  // --backend=auto falls back to the CPU engine, and says why (an operator who expected a GPU
  // sees it in the log, not only in the metrics).
  if (core::CudaEngineCompiled()) {
    eo.backend = core::Backend::kCuda;
    auto engine = core::CreateEngine(eo);
    if (engine.ok()) return engine;
    std::fprintf(stderr, "optd: --backend=auto: the CUDA engine is not usable (%s); using the CPU "
                         "backend\n", engine.status().ToString().c_str());
  } else {
    std::fprintf(stderr, "optd: --backend=auto: this build has no CUDA engine; using the CPU "
                         "backend\n");
  }
  eo.backend = core::Backend::kCpu;
  return core::CreateEngine(eo);
}

// Server reflection for one ServerBuilder, on or off. libgrpc++_reflection registers its plugin
// for every ServerBuilder of the process from a static initializer as soon as it is loaded, so
// "off" must remove it; "on" installs one instance whatever the process registered.
class ReflectionOption final : public grpc::ServerBuilderOption {
 public:
  explicit ReflectionOption(bool on) : on_(on) {}
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    auto reflection = std::make_unique<grpc::reflection::ProtoServerReflectionPlugin>();
    const std::string name = reflection->name();
    std::erase_if(*plugins, [&name](const auto& p) { return p->name() == name; });
    if (on_) plugins->push_back(std::move(reflection));
  }

 private:
  const bool on_;
};

std::string HostPart(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::BuildAndStart(const ServerOptions& options) {
  // Weight and state messages carry chunk_bytes of payload plus a small header.
  constexpr int64_t kHeaderRoom = 64 << 10;
  if (options.chunk_bytes < 4096 || options.chunk_bytes > options.max_message_bytes - kHeaderRoom) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk_bytes must be in [4096, max_message_bytes - 65536 = ",
        static_cast<int64_t>(options.max_message_bytes) - kHeaderRoom, "], got ",
        options.chunk_bytes));
  }
  if (absl::Status st = ValidateLimits(options.limits); !st.ok()) return st;
  const bool periodic =
      options.checkpoint_every_steps != 0 || options.checkpoint_every_seconds != 0;
  if (options.checkpoint_dir.empty() && (periodic || !options.restore.empty())) {
    return absl::InvalidArgumentError(
        "--restore, --checkpoint_every_steps and --checkpoint_every_seconds need --checkpoint_dir");
  }
  if (!options.checkpoint_dir.empty()) {
    // Created here, not at the first save: a path that cannot be a directory fails the start,
    // where an operator sees it, instead of every SaveCheckpoint later.
    std::error_code ec;
    std::filesystem::create_directories(options.checkpoint_dir, ec);
    if (ec || !std::filesystem::is_directory(options.checkpoint_dir)) {
      return absl::FailedPreconditionError(
          absl::StrCat("--checkpoint_dir=", options.checkpoint_dir,
                       " cannot be created: ", ec ? ec.message() : "not a directory"));
    }
  }
  // Credentials before the engine: a refused configuration costs no device memory.
  TlsFileOptions tls;
  tls.cert_file = options.tls_cert_file;
  tls.key_file = options.tls_key_file;
  tls.client_ca_file = options.tls_client_ca_file;
  tls.refresh = options.credential_refresh;
  auto credentials = MakeServerCredentials(tls, options.listen_address, options.allow_insecure);
  if (!credentials.ok()) return credentials.status();

  std::unique_ptr<Server> s(new Server());
  auto engine = MakeEngine(options);
  if (!engine.ok()) return engine.status();
  s->engine_ = *std::move(engine);

  MetricsOptions mo;
  mo.listen_address = options.metrics_listen_address;
  mo.gpu_label = s->engine_->backend() == core::Backend::kCuda ? std::to_string(options.gpu) : "";
  mo.hostname = options.hostname;
  mo.max_groups = options.metrics_max_groups;
  mo.basic_auth_file = options.metrics_basic_auth_file;
  if (mo.hostname.empty()) {
    char name[256] = {};
    if (gethostname(name, sizeof(name) - 1) == 0) mo.hostname = name;
  }
  auto metrics = Metrics::Create(mo);
  if (!metrics.ok()) return metrics.status();
  s->metrics_ = *std::move(metrics);
  core::Engine* engine_ptr = s->engine_.get();
  Metrics* metrics_ptr = s->metrics_.get();
  // Fresh engine figures at every scrape, besides the per-step updates.
  s->metrics_->SetScrapeCallback(
      [engine_ptr, metrics_ptr] { metrics_ptr->UpdateEngine(engine_ptr->Stats()); });

  CoreOptions co;
  co.checkpoint_dir = options.checkpoint_dir;
  co.chunk_bytes = options.chunk_bytes;
  co.max_message_bytes = options.max_message_bytes;
  co.limits = options.limits;
  s->core_ = std::make_unique<OptimizerCore>(s->engine_.get(), s->metrics_.get(), co);
  if (absl::Status st = s->StartRecovery(options); !st.ok()) return st;
  OptimizerService::DeviceErrorCallback on_device_error;
  if (s->engine_->backend() == core::Backend::kCuda) {
    // Internal is reserved for device errors (style.md). A CUDA error may be sticky and the
    // context unusable: report NOT_SERVING so the orchestrator restarts us; keep serving reads.
    Server* server = s.get();
    on_device_error = [server](const absl::Status& status) { server->MarkNotServing(status); };
  }
  AuthOptions ao;
  ao.token_file = options.token_file;
  ao.refresh = std::max(options.credential_refresh, absl::Seconds(1));
  auto authorizer = Authorizer::Create(ao, s->metrics_.get());
  if (!authorizer.ok()) return authorizer.status();
  s->authorizer_ = *std::move(authorizer);
  s->service_ = std::make_unique<OptimizerService>(s->core_.get(), s->metrics_.get(),
                                                   s->authorizer_.get(), std::move(on_device_error));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.SetOption(std::make_unique<ReflectionOption>(options.reflection));
  builder.AddListeningPort(options.listen_address, *credentials, &s->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // A streamed step holds its group until the commit: keepalive pings find a trainer that
  // vanished without closing its connection (the stream then ends and the step is undone).
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on --listen=", options.listen_address));
  }
  s->host_ = HostPart(options.listen_address);
  return s;
}

Server::~Server() {
  Shutdown(absl::ZeroDuration());
  Wait();
}

std::string Server::address() const {
  const std::string host = host_.empty() || host_ == "0.0.0.0" || host_ == "[::]" ? "127.0.0.1" : host_;
  return absl::StrCat(host, ":", port_);
}

void Server::Wait() {
  if (server_ != nullptr) server_->Wait();
}

void Server::MarkNotServing(const absl::Status& reason) {
  if (server_ == nullptr) return;
  if (auto* health = server_->GetHealthCheckService(); health != nullptr) {
    std::fprintf(stderr, "optd: device error, health set to NOT_SERVING: %s\n",
                 reason.ToString().c_str());
    health->SetServingStatus(false);
  }
}

void Server::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  if (server_ == nullptr) return;
  if (auto* health = server_->GetHealthCheckService(); health != nullptr) {
    health->SetServingStatus(false);
  }
  core_->BeginShutdown();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  // After the last call ended: the final checkpoint holds every step the clients were told of.
  if (checkpoints_ != nullptr) checkpoints_->Stop(/*final_checkpoint=*/true);
}

absl::Status Server::StartRecovery(const ServerOptions& options) {
  if (options.checkpoint_dir.empty()) return absl::OkStatus();
  // Before the restore and before serving: nothing of ours can be half-written yet.
  auto removed = RemoveOrphanTempFiles(options.checkpoint_dir);
  if (!removed.ok()) return core_->HideCheckpointDir(removed.status());
  for (const std::string& name : *removed) {
    std::fprintf(stderr, "optd: removed orphaned temporary file %s\n", name.c_str());
  }
  auto restored = RestoreAtStart(core_.get(), options.restore);
  if (!restored.ok()) return restored.status();
  if (options.checkpoint_every_steps == 0 && options.checkpoint_every_seconds == 0) {
    return absl::OkStatus();
  }
  CheckpointScheduleOptions so;
  so.every_steps = options.checkpoint_every_steps;
  so.every = absl::Seconds(options.checkpoint_every_seconds);
  so.keep = options.checkpoint_keep;
  so.on_shutdown = options.checkpoint_on_shutdown;
  auto scheduler = CheckpointScheduler::Start(core_.get(), so);
  if (!scheduler.ok()) return scheduler.status();
  checkpoints_ = *std::move(scheduler);
  return absl::OkStatus();
}

}  // namespace optd::server
