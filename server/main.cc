// optd: the PagedAdamW8bit optimizer server. The only place that reads flags.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC listen address (port 0: any free port)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9400",
          "Prometheus /metrics listen address; empty: no endpoint");
ABSL_FLAG(std::string, backend, "auto", "auto, cpu or cuda");
ABSL_FLAG(int, gpu, 0, "CUDA device ordinal");
ABSL_FLAG(int64_t, device_budget_bytes, 0,
          "CUDA: device bytes the optimizer states may occupy; 0 = the free memory");
ABSL_FLAG(int, cpu_threads, 0, "CPU engine threads; 0 = all hardware threads");
ABSL_FLAG(std::string, checkpoint_dir, "", "directory of checkpoints; empty: disabled");
ABSL_FLAG(int, max_message_bytes, 16 << 20, "largest gRPC message accepted or sent");
ABSL_FLAG(int64_t, chunk_bytes, int64_t{4} << 20, "payload bytes per weights/state message sent");
ABSL_FLAG(std::string, port_file, "",
          "once serving, write the bound gRPC port here (decimal, newline)");
ABSL_FLAG(std::string, metrics_port_file, "", "once serving, write the bound metrics port here");
ABSL_FLAG(std::string, hostname, "", "hostname label of the metrics; empty: gethostname()");
ABSL_FLAG(int, metrics_max_groups, 100,
          "groups whose metrics carry their own group label; further groups are summed under "
          "group=\"_other\" (0: all of them)");
ABSL_FLAG(std::string, metrics_basic_auth_file, "",
          "file whose first line is user:password; /metrics then requires that HTTP basic auth "
          "(empty: no authentication)");
ABSL_FLAG(int, shutdown_grace_seconds, 30, "on SIGTERM, how long in-flight calls may finish");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the gRPC port; with --tls_key serves TLS (files are re-read "
          "when they change)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: clients must present a certificate signed by it (mutual TLS)");
ABSL_FLAG(bool, allow_insecure, false,
          "serve plaintext on a --listen address other machines can reach (refused otherwise)");
ABSL_FLAG(std::string, token_file, "",
          "bearer tokens, one per line: '<token> <train|admin> <group prefix>...' "
          "(docs/security.md); empty: no authentication");
ABSL_FLAG(int, credential_refresh_seconds, 60,
          "how often --tls_* and --token_file are checked for changes");
ABSL_FLAG(bool, reflection, false, "serve gRPC server reflection");

// Admission limits (server/limits.h, docs/limits.md).
ABSL_FLAG(int, max_groups, optd::server::Limits().max_groups, "groups the server holds at once");
ABSL_FLAG(int, max_tensors_per_group, optd::server::Limits().max_tensors_per_group,
          "tensors in one group");
ABSL_FLAG(int, max_name_bytes, optd::server::Limits().max_name_bytes,
          "bytes of a group, tensor or checkpoint name (alphabet [A-Za-z0-9._/-])");
ABSL_FLAG(int, max_workers, optd::server::Limits().max_workers, "num_workers of a group");
ABSL_FLAG(int64_t, max_group_bytes, optd::server::Limits().max_group_bytes,
          "weight + state bytes of one group; 0 = bounded by free memory only");
ABSL_FLAG(int64_t, memory_reserve_bytes, optd::server::Limits().memory_reserve_bytes,
          "host and device memory kept free when admitting a group");
ABSL_FLAG(float, max_lr, optd::server::Limits().max_lr,
          "largest learning rate of a group or a step");
ABSL_FLAG(int, max_list_page_size, optd::server::Limits().max_list_page_size,
          "most groups in one ListGroups page (default page: 1000)");
ABSL_FLAG(int, max_streams, optd::server::Limits().max_streams,
          "data-path calls (Step, UploadWeights, PullWeights, Subscribe, ExportState, "
          "ImportState) running at once");
ABSL_FLAG(int, max_streams_per_peer, optd::server::Limits().max_streams_per_peer,
          "data-path calls at once per client address; 0 = no per-address bound");
ABSL_FLAG(int, max_regions, optd::server::Limits().max_regions,
          "colocated regions (docs/colocated.md) open at once; 0 = the colocated data path is off");
ABSL_FLAG(int, max_regions_per_client, optd::server::Limits().max_regions_per_client,
          "colocated regions open at once per client (bearer token and address)");
ABSL_FLAG(int64_t, max_region_bytes, optd::server::Limits().max_region_bytes,
          "bytes of one colocated region");
ABSL_FLAG(int64_t, max_region_total_bytes, optd::server::Limits().max_region_total_bytes,
          "bytes of all colocated regions together");

// Recovery (server/checkpoint_scheduler.h).
ABSL_FLAG(std::string, restore, "",
          "at start, restore 'latest' (the newest complete checkpoint in --checkpoint_dir) or "
          "the checkpoint of this name; empty: start empty");
ABSL_FLAG(int64_t, checkpoint_every_steps, 0,
          "write a checkpoint when some group advanced this many steps (checked once a second, "
          "so at most one checkpoint a second); 0 = off");
ABSL_FLAG(int64_t, checkpoint_every_seconds, 0,
          "write a checkpoint this often when anything changed; 0 = off");
ABSL_FLAG(int, checkpoint_keep, 3, "periodic checkpoints kept (older ones are deleted)");
ABSL_FLAG(bool, checkpoint_on_shutdown, true,
          "with periodic checkpoints, write a last one at shutdown when anything changed");

namespace {

// Abseil's --help and --helpshort list the flags of files named after the program ("optd.cc",
// "optd_main.cc"), so by default they matched none of ours. All of optd's flags live here.
bool IsOptdFlagFile(absl::string_view filename) {
  return absl::EndsWith(filename, "server/main.cc");
}

// Help groups flags by file; show the path inside the repository, not the build machine's.
std::string RepositoryPath(absl::string_view filename) {
  return IsOptdFlagFile(filename) ? std::string("server/main.cc") : std::string(filename);
}

// Writes atomically (temp file + rename) so that a watcher never reads a partial number.
bool WritePortFile(const std::string& path, int port) {
  if (path.empty()) return true;
  const std::string tmp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (!out.good()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

// Note [Allocator settings for the data path]
// jemalloc (linked into optd, see server/CMakeLists.txt) by default hands allocations above 8 MiB
// to an arena that returns their pages to the kernel at once, so every multi-MB gRPC buffer and
// weight snapshot was faulted in and zeroed afresh: a third of the server's CPU time in a pull
// (perf on the 2-core development VM, 2026-12-01). Keeping freed pages for 30 s lets the next
// step reuse them, and one arena lets a buffer freed by one of gRPC's threads serve the next
// allocation of another (with one arena per thread group, the kernel's page faults in recvmsg
// were still a fifth of the server's time; small allocations still go through thread caches).
// Read by jemalloc at start-up; ignored when another allocator is linked.
extern "C" {
__attribute__((used)) const char* malloc_conf =
    "narenas:1,oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:30000";
}

int main(int argc, char** argv) {
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = IsOptdFlagFile;
  usage_config.contains_helpshort_flags = IsOptdFlagFile;
  usage_config.normalize_filename = RepositoryPath;
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(
      "the PagedAdamW8bit optimizer server.\n"
      "usage: optd --listen=HOST:PORT [--backend=auto|cpu|cuda] [--checkpoint_dir=DIR] ...\n"
      "--helpfull also lists the flags of the libraries optd uses.");
  absl::ParseCommandLine(argc, argv);

  // Block SIGTERM/SIGINT in every thread (gRPC's threads inherit this mask); main waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  optd::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.metrics_listen_address = absl::GetFlag(FLAGS_metrics_listen);
  options.backend = absl::GetFlag(FLAGS_backend);
  options.gpu = absl::GetFlag(FLAGS_gpu);
  options.device_budget_bytes = absl::GetFlag(FLAGS_device_budget_bytes);
  options.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  options.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  options.hostname = absl::GetFlag(FLAGS_hostname);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.allow_insecure = absl::GetFlag(FLAGS_allow_insecure);
  options.token_file = absl::GetFlag(FLAGS_token_file);
  options.credential_refresh = absl::Seconds(absl::GetFlag(FLAGS_credential_refresh_seconds));
  options.reflection = absl::GetFlag(FLAGS_reflection);
  options.metrics_max_groups = absl::GetFlag(FLAGS_metrics_max_groups);
  options.metrics_basic_auth_file = absl::GetFlag(FLAGS_metrics_basic_auth_file);
  optd::server::Limits& limits = options.limits;
  limits.max_groups = absl::GetFlag(FLAGS_max_groups);
  limits.max_tensors_per_group = absl::GetFlag(FLAGS_max_tensors_per_group);
  limits.max_name_bytes = absl::GetFlag(FLAGS_max_name_bytes);
  limits.max_workers = absl::GetFlag(FLAGS_max_workers);
  limits.max_group_bytes = absl::GetFlag(FLAGS_max_group_bytes);
  limits.memory_reserve_bytes = absl::GetFlag(FLAGS_memory_reserve_bytes);
  limits.max_lr = absl::GetFlag(FLAGS_max_lr);
  limits.max_list_page_size = absl::GetFlag(FLAGS_max_list_page_size);
  limits.max_streams = absl::GetFlag(FLAGS_max_streams);
  limits.max_streams_per_peer = absl::GetFlag(FLAGS_max_streams_per_peer);
  limits.max_regions = absl::GetFlag(FLAGS_max_regions);
  limits.max_regions_per_client = absl::GetFlag(FLAGS_max_regions_per_client);
  limits.max_region_bytes = absl::GetFlag(FLAGS_max_region_bytes);
  limits.max_region_total_bytes = absl::GetFlag(FLAGS_max_region_total_bytes);
  options.restore = absl::GetFlag(FLAGS_restore);
  options.checkpoint_every_steps = absl::GetFlag(FLAGS_checkpoint_every_steps);
  options.checkpoint_every_seconds = absl::GetFlag(FLAGS_checkpoint_every_seconds);
  options.checkpoint_keep = absl::GetFlag(FLAGS_checkpoint_keep);
  options.checkpoint_on_shutdown = absl::GetFlag(FLAGS_checkpoint_on_shutdown);

  auto server = optd::server::Server::BuildAndStart(options);
  if (!server.ok()) {
    std::fprintf(stderr, "optd: failed to start: %s\n", server.status().ToString().c_str());
    return 1;
  }
  const std::string metrics =
      (*server)->metrics_port() > 0
          ? absl::StrCat("metrics ", options.metrics_listen_address.substr(
                                         0, options.metrics_listen_address.rfind(':')),
                         ":", (*server)->metrics_port())
          : std::string("metrics off");
  if (!WritePortFile(absl::GetFlag(FLAGS_port_file), (*server)->port()) ||
      !WritePortFile(absl::GetFlag(FLAGS_metrics_port_file), (*server)->metrics_port())) {
    std::fprintf(stderr, "optd: failed to start: cannot write --port_file or --metrics_port_file\n");
    return 1;
  }
  const std::string security = absl::StrCat(
      options.tls_cert_file.empty() ? "plaintext"
                                    : (options.tls_client_ca_file.empty() ? "TLS" : "mutual TLS"),
      options.token_file.empty() ? ", no authentication" : ", bearer tokens");
  std::fprintf(stderr, "optd: serving on %s (backend %s, %s, %s)\n", (*server)->address().c_str(),
               std::string(optd::core::BackendName((*server)->backend())).c_str(),
               security.c_str(), metrics.c_str());

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "optd: stopping on %s: finishing in-flight calls\n",
               sig == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Shutdown(absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  (*server)->Wait();
  server->reset();
  std::fprintf(stderr, "optd: stopped\n");
  return 0;
}
