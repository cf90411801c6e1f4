// Prometheus metrics of the optd server, served over HTTP at /metrics (prometheus-cpp).
//
// Every optd family carries the const label `hostname`, and `gpu` (the device ordinal) on the
// CUDA backend, so dashboards can join optd's series with NVIDIA's DCGM exporter (whose metric
// names we do not reuse); a CPU server has no `gpu` label. Names follow Prometheus conventions:
// `optd_` prefix, base units, `_bytes`/`_seconds` suffixes, `_total` on counters. Families:
//   optd_device_memory_{used,free,total,budget}_bytes   gauges; only once a CUDA engine reports
//   optd_engine_weight_bytes{location}, optd_engine_state_bytes{location}   location: device|host
//   optd_paged_bytes_total{direction}                   direction: to_device|to_host
//   optd_page_evictions_total, optd_page_wait_seconds_total
//   optd_groups                                          groups with live GroupMetrics
//   optd_step_duration_seconds{group}                   histogram, 100 us .. 60 s
//   optd_steps_total{group}
//   optd_gradient_bytes_received_total{group}, optd_weight_bytes_sent_total{group}
//   optd_nonfinite_gradient_elements_total{group}
//   optd_workers_pending{group}                          workers a sync step still waits for
//   optd_weight_bytes{group,location}, optd_state_bytes{group,location},
//   optd_buffer_bytes{group,location}                   what the engine holds for the group
//                                                        (core::MemoryStats), not its declared size
//   optd_paged_out_bytes{group}                          state bytes kept on the host and paged
//   optd_accumulation_bytes{group}                       sync/clipping accumulation buffers
//   optd_rpcs_total{method,code}                         code: gRPC status name, e.g. "OK"
//   optd_auth_failures_total{reason}                     missing_token|unknown_token|wrong_role|
//                                                        out_of_scope (docs/security.md)
//   optd_checkpoint_last_success_timestamp_seconds      once a checkpoint was saved
//   optd_transport_bytes_total{transport}               gradient + weight payload bytes a step
//                                                        moved; transport: grpc|shm|cuda_ipc
//   optd_step_transfer_seconds{transport}               histogram: per step stream, the time its
//                                                        gradient reads and weight returns took;
//                                                        a transport's series from its first step
//   optd_colocated_regions                               colocated regions held (docs/colocated.md)
//   process_{cpu_seconds_total,resident_memory_bytes,virtual_memory_bytes,open_fds,max_fds,
//            start_time_seconds}                         (server/process_metrics.h)
// See Note [Bounded label sets] for which series exist when.
//
// Note [Bounded label sets]
// A scrape must stay small however the server is used, so no series is created ahead of use and
// no label takes unbounded values:
// - optd_rpcs_total{method,code} children are created at a method's first RPC with that code
//   (an unknown method counts as "other"), not for all 14 x 17 pairs up front. A rate() over a
//   series misses the increment that created it; the alert rules allow for that.
// - `group` labels: the first MetricsOptions::max_groups live groups get series of their own;
//   further groups (and a group literally named "_other") are summed under group="_other":
//   counters and histograms add up, gauges hold the sum over those groups. A slot freed by a
//   deleted group goes to the next group created; groups already under "_other" stay there.
//   optd_groups counts every group.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "optd/core/engine.h"

namespace prometheus {
class Counter;
class Exposer;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace optd::server {

struct MetricsOptions {
  // Address of the HTTP endpoint, "127.0.0.1:0" style (port 0 picks a free port, see
  // Metrics::port()); empty = no HTTP endpoint (Scrape() still works).
  std::string listen_address;
  // Value of the `gpu` label: the GPU index or UUID (as DCGM labels it); "" (CPU): no label.
  std::string gpu_label;
  // Value of the `hostname` label.
  std::string hostname;
  // Live groups that get `group` series of their own; the rest are summed under
  // group="_other" (Note [Bounded label sets]). 0: every group under "_other". >= 0.
  int max_groups = 100;
  // A file whose first line is "user:password": /metrics then requires that HTTP basic auth
  // (plain text, so mount it from a secret; use TLS or a private network for the scrape).
  // Empty: no authentication. Read once, in Create.
  std::string basic_auth_file;
  // HTTP worker threads, and how long one may wait for a client's request before closing the
  // connection: a client that opens a connection and sends half a request holds a worker until
  // then, so that many idle connections cannot block scrapes for longer than this.
  int http_threads = 4;
  int request_timeout_ms = 5000;
};

class Metrics;

// How a step's bytes travel (optd_transport_bytes_total's `transport`).
enum class Transport : int { kGrpc = 0, kShm = 1, kCudaIpc = 2 };
inline constexpr int kNumTransports = 3;
// "grpc", "shm" or "cuda_ipc".
std::string_view TransportName(Transport transport);

// Why a call was refused (optd_auth_failures_total's `reason`): the first two are
// UNAUTHENTICATED, the others PERMISSION_DENIED.
enum class AuthFailure : int { kMissingToken, kUnknownToken, kWrongRole, kOutOfScope };

// The series of one group. Created by Metrics::ForGroup when the group is created; destroying
// it removes the group's series from the exposition (or, for a group summed under "_other",
// its share of the gauges there).
//
// Thread safety: thread-safe. REQUIRES: destroyed before the Metrics that made it.
class GroupMetrics {
 public:
  ~GroupMetrics();
  GroupMetrics(const GroupMetrics&) = delete;
  GroupMetrics& operator=(const GroupMetrics&) = delete;

  void ObserveStep(double seconds);  // step latency histogram and step count
  void AddGradientBytesReceived(int64_t n);
  void AddWeightBytesSent(int64_t n);
  void AddNonfiniteGradientElements(int64_t n);
  void SetWorkersPending(int n);
  // What the engine reports it holds for the group.
  void SetMemory(const core::MemoryStats& memory);
  void SetAccumulationBytes(int64_t n);

  // The value of this group's `group` label: its name, or "_other".
  const std::string& label() const;

 private:
  friend class Metrics;
  struct Series;  // the children of one `group` label value, shared by the groups under it
  // This group's contribution to a gauge of its series: gauges are moved by the change of the
  // contribution, so that several groups under "_other" add up.
  struct GaugeShare {
    prometheus::Gauge* gauge = nullptr;
    std::atomic<int64_t> value{0};
    void Set(int64_t v);
  };
  GroupMetrics(Metrics* metrics, std::shared_ptr<Series> series, bool own);

  Metrics* const metrics_;
  std::shared_ptr<Series> series_;  // reset under Metrics::groups_mu_ in the destructor
  const bool own_;  // series_ holds this group's name, not "_other"
  GaugeShare workers_pending_, weight_device_, weight_host_, state_device_, state_host_,
      buffer_device_, buffer_host_, paged_out_, accumulation_;
};

// Owns the registry, the metric families and the HTTP exposer. Besides the families above,
// prometheus-cpp's exposer serves its own exposer_* families (scrape counts), without our labels.
// Destruction takes up to 2 s: civetweb's listener notices the stop on its next poll.
//
// Thread safety: thread-safe.
class Metrics {
 public:
  // The methods of optd.v1.Optimizer, in the order of the service; RecordRpc counts any other
  // name as "other".
  static constexpr std::array<std::string_view, 14> kRpcMethods = {
      "CreateGroup",    "UploadWeights", "GetGroup",       "ListGroups",
      "DeleteGroup",    "UpdateHyperparameters",           "Step",
      "Subscribe",      "PullWeights",   "SaveCheckpoint", "RestoreCheckpoint",
      "ExportState",    "ImportState",   "Colocate"};
  static constexpr int kNumStatusCodes = 17;  // gRPC codes 0 (OK) .. 16 (UNAUTHENTICATED)

  // Unavailable naming the address when the HTTP endpoint cannot bind; InvalidArgument for a
  // bad option or an unreadable basic_auth_file.
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const MetricsOptions& options);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The bound HTTP port; 0 when there is no endpoint.
  int port() const { return port_; }

  // Creates the series of `group` (label group="<name>", all zero), or joins the shared
  // group="_other" series when max_groups groups have their own (Note [Bounded label sets]).
  // REQUIRES: no other live GroupMetrics of the same name (they would share, and the first
  // destroyed would remove, the series); the service holds one per group and destroys it when
  // the group is deleted.
  std::unique_ptr<GroupMetrics> ForGroup(const std::string& group);

  // Counts one finished RPC. `method` is a name of kRpcMethods, bare or as the full gRPC path
  // ("/optd.v1.Optimizer/Step"); `grpc_code` a grpc::StatusCode value (others count as UNKNOWN).
  // The labelled child is looked up once, at the pair's first RPC, and kept.
  void RecordRpc(std::string_view method, int grpc_code);

  // Counts one call refused by authentication or authorization.
  void RecordAuthFailure(AuthFailure reason);
  // Records a checkpoint written completely (optd_checkpoint_last_success_timestamp_seconds:
  // now).
  void RecordCheckpointSaved();

  // The data path by transport: payload bytes a step stream moved (gradients in, weights out),
  // and the time its transfers took.
  void AddTransportBytes(Transport transport, int64_t n);
  void ObserveTransfer(Transport transport, double seconds);
  // Colocated regions held now.
  void SetColocatedRegions(int n);

  // Publishes the engine's figures. Its traffic figures are monotonic totals; the exported
  // counters grow by the difference since the last call (a total that went down counts as a
  // restart of the engine and adds nothing).
  void UpdateEngine(const core::EngineStats& stats);

  // Called at the start of every scrape (HTTP or Scrape()), e.g. to call UpdateEngine with fresh
  // engine figures. May be set while the endpoint serves; the callback must be thread-safe.
  void SetScrapeCallback(std::function<void()> callback);

  // The text exposition, as served at /metrics.
  std::string Scrape() const;

 private:
  friend class GroupMetrics;
  class Collector;
  Metrics() = default;
  absl::Status Init(const MetricsOptions& options);

  absl::Status StartHttp(const MetricsOptions& options);
  std::shared_ptr<GroupMetrics::Series> NewGroupSeries(const std::string& label);

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<Collector> collector_;  // what the exposer serves: callback, then registry_
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;

  prometheus::Family<prometheus::Gauge>* device_used_ = nullptr;
  prometheus::Family<prometheus::Gauge>* device_free_ = nullptr;
  prometheus::Family<prometheus::Gauge>* device_total_ = nullptr;
  prometheus::Family<prometheus::Gauge>* device_budget_ = nullptr;
  prometheus::Gauge* engine_weight_device_ = nullptr;
  prometheus::Gauge* engine_weight_host_ = nullptr;
  prometheus::Gauge* engine_state_device_ = nullptr;
  prometheus::Gauge* engine_state_host_ = nullptr;
  prometheus::Counter* paged_to_device_ = nullptr;
  prometheus::Counter* paged_to_host_ = nullptr;
  prometheus::Counter* evictions_ = nullptr;
  prometheus::Counter* page_wait_ = nullptr;
  prometheus::Gauge* groups_ = nullptr;

  prometheus::Family<prometheus::Histogram>* step_duration_ = nullptr;
  prometheus::Family<prometheus::Counter>* steps_ = nullptr;
  prometheus::Family<prometheus::Counter>* gradient_bytes_ = nullptr;
  prometheus::Family<prometheus::Counter>* weight_bytes_sent_ = nullptr;
  prometheus::Family<prometheus::Counter>* nonfinite_ = nullptr;
  prometheus::Family<prometheus::Gauge>* workers_pending_ = nullptr;
  prometheus::Family<prometheus::Gauge>* group_weight_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* group_state_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* group_buffer_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* group_paged_out_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* accumulation_ = nullptr;

  prometheus::Family<prometheus::Counter>* rpcs_family_ = nullptr;
  // [method index (kRpcMethods, then "other")][code]; null until the pair's first RPC.
  std::array<std::array<std::atomic<prometheus::Counter*>, kNumStatusCodes>,
             kRpcMethods.size() + 1>
      rpcs_{};
  prometheus::Family<prometheus::Gauge>* checkpoint_saved_ = nullptr;
  std::array<prometheus::Counter*, kNumTransports> transport_bytes_{};
  // Children created at a transport's first step (Note [Bounded label sets]: a histogram is
  // some twenty series).
  prometheus::Family<prometheus::Histogram>* transfer_family_ = nullptr;
  std::mutex transfer_mu_;
  std::array<std::atomic<prometheus::Histogram*>, kNumTransports> transfer_seconds_{};
  prometheus::Gauge* colocated_regions_ = nullptr;

  int max_groups_ = 0;
  std::mutex groups_mu_;
  int labelled_groups_ ABSL_GUARDED_BY(groups_mu_) = 0;  // groups with series of their own
  // The group="_other" series while any group is summed there.
  std::weak_ptr<GroupMetrics::Series> other_ ABSL_GUARDED_BY(groups_mu_);
  std::array<prometheus::Counter*, 4> auth_failures_{};  // [AuthFailure]

  std::mutex engine_mu_;
  // Device-memory gauges are created on the first report from a CUDA engine, so a CPU server
  // does not claim 0 bytes of free device memory.
  prometheus::Gauge* device_used_child_ ABSL_GUARDED_BY(engine_mu_) = nullptr;
  prometheus::Gauge* device_free_child_ ABSL_GUARDED_BY(engine_mu_) = nullptr;
  prometheus::Gauge* device_total_child_ ABSL_GUARDED_BY(engine_mu_) = nullptr;
  prometheus::Gauge* device_budget_child_ ABSL_GUARDED_BY(engine_mu_) = nullptr;
  core::EngineStats last_ ABSL_GUARDED_BY(engine_mu_);
};

}  // namespace optd::server
