#include "server/metrics.h"

#include <exception>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "server/process_metrics.h"

namespace optd::server {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;
using prometheus::Labels;

// gRPC status code names, indexed by code.
constexpr std::array<std::string_view, Metrics::kNumStatusCodes> kCodeNames = {
    "OK",        "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED", "NOT_FOUND",  "ALREADY_EXISTS",    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL",       "UNAVAILABLE",       "DATA_LOSS",
    "UNAUTHENTICATED"};
constexpr int kUnknownCode = 2;

// Step latency buckets: 100 us to 60 s, about three per decade. A small group's step on a GPU
// takes well under a millisecond; a large one streamed over the network takes seconds.
Histogram::BucketBoundaries StepBuckets() {
  return {1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
          0.25, 0.5,    1,    2.5,  5,      10,   30,   60};
}

// Adds the increase of a monotonic total since the last report.
void AddDelta(Counter* counter, double now, double before) {
  if (now > before) counter->Increment(now - before);
}

// The `group` label value shared by the groups beyond MetricsOptions::max_groups.
constexpr char kOtherGroup[] = "_other";

// Equal strings, compared in time that does not depend on where they differ.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  }
  return diff == 0;
}

struct BasicAuthCredentials {
  std::string user;
  std::string password;
};

// The first line of `path`, "user:password" (a trailing '\r' is dropped).
absl::StatusOr<BasicAuthCredentials> ReadBasicAuthFile(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in.is_open() || !std::getline(in, line)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_basic_auth_file: cannot read '", path, "'"));
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const size_t colon = line.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == line.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_basic_auth_file: the first line of '", path,
        "' must be user:password (both non-empty)"));
  }
  return BasicAuthCredentials{line.substr(0, colon), line.substr(colon + 1)};
}

}  // namespace

// What the exposer serves: runs the scrape callback, then collects the registry and the process
// figures.
class Metrics::Collector : public prometheus::Collectable {
 public:
  Collector(std::shared_ptr<prometheus::Registry> registry, Labels constant)
      : registry_(std::move(registry)), constant_(std::move(constant)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    {
      absl::MutexLock lock(&callback_mu_);
      if (callback_) callback_();
    }
    std::vector<prometheus::MetricFamily> families = registry_->Collect();
    for (auto& family : CollectProcessMetrics(constant_)) families.push_back(std::move(family));
    return families;
  }
  void SetCallback(std::function<void()> callback) {
    absl::MutexLock lock(&callback_mu_);
    callback_ = std::move(callback);
  }

 private:
  // The endpoint serves from Metrics::Create on, before the server sets the callback, so a scrape
  // can read it while it is written (found by TSan, docs/testing.md).
  mutable absl::Mutex callback_mu_;
  std::function<void()> callback_ ABSL_GUARDED_BY(callback_mu_);
  std::shared_ptr<prometheus::Registry> registry_;
  const Labels constant_;
};

// The children of one `group` label value. Removed from the exposition when the last group
// using them goes away.
struct GroupMetrics::Series {
  Metrics* metrics = nullptr;
  std::string label;
  prometheus::Histogram* step_duration = nullptr;
  prometheus::Counter* steps = nullptr;
  prometheus::Counter* gradient_bytes = nullptr;
  prometheus::Counter* weight_bytes_sent = nullptr;
  prometheus::Counter* nonfinite = nullptr;
  prometheus::Gauge* workers_pending = nullptr;
  prometheus::Gauge* weight_device = nullptr;
  prometheus::Gauge* weight_host = nullptr;
  prometheus::Gauge* state_device = nullptr;
  prometheus::Gauge* state_host = nullptr;
  prometheus::Gauge* buffer_device = nullptr;
  prometheus::Gauge* buffer_host = nullptr;
  prometheus::Gauge* paged_out = nullptr;
  prometheus::Gauge* accumulation = nullptr;

  ~Series() {
    Metrics& m = *metrics;
    m.step_duration_->Remove(step_duration);
    m.steps_->Remove(steps);
    m.gradient_bytes_->Remove(gradient_bytes);
    m.weight_bytes_sent_->Remove(weight_bytes_sent);
    m.nonfinite_->Remove(nonfinite);
    m.workers_pending_->Remove(workers_pending);
    m.group_weight_bytes_->Remove(weight_device);
    m.group_weight_bytes_->Remove(weight_host);
    m.group_state_bytes_->Remove(state_device);
    m.group_state_bytes_->Remove(state_host);
    m.group_buffer_bytes_->Remove(buffer_device);
    m.group_buffer_bytes_->Remove(buffer_host);
    m.group_paged_out_bytes_->Remove(paged_out);
    m.accumulation_->Remove(accumulation);
  }
};

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const MetricsOptions& options) {
  auto metrics = std::unique_ptr<Metrics>(new Metrics());
  absl::Status st = metrics->Init(options);
  if (!st.ok()) return st;
  return metrics;
}

Metrics::~Metrics() {
  // Stop serving before the families go away.
  exposer_.reset();
}

absl::Status Metrics::Init(const MetricsOptions& options) {
  if (options.max_groups < 0 || options.http_threads < 1 || options.request_timeout_ms < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics: max_groups must be >= 0, http_threads and request_timeout_ms >= 1; got ",
        options.max_groups, ", ", options.http_threads, ", ", options.request_timeout_ms));
  }
  max_groups_ = options.max_groups;
  registry_ = std::make_shared<prometheus::Registry>();
  // No empty `gpu` label on a CPU server: a label that is always "" only confuses joins.
  Labels constant = {{"hostname", options.hostname}};
  if (!options.gpu_label.empty()) constant.emplace("gpu", options.gpu_label);
  auto gauge = [&](const char* name, const char* help) -> Family<Gauge>& {
    return prometheus::BuildGauge().Name(name).Help(help).Labels(constant).Register(*registry_);
  };
  auto counter = [&](const char* name, const char* help) -> Family<Counter>& {
    return prometheus::BuildCounter().Name(name).Help(help).Labels(constant).Register(*registry_);
  };

  device_used_ = &gauge("optd_device_memory_used_bytes", "Device memory in use (whole card).");
  device_free_ = &gauge("optd_device_memory_free_bytes", "Device memory free (whole card).");
  device_total_ = &gauge("optd_device_memory_total_bytes", "Device memory of the card.");
  device_budget_ = &gauge("optd_device_memory_budget_bytes",
                          "Device memory the optimizer states may occupy.");
  auto& engine_weights = gauge("optd_engine_weight_bytes", "Weight bytes of all groups by location.");
  engine_weight_device_ = &engine_weights.Add({{"location", "device"}});
  engine_weight_host_ = &engine_weights.Add({{"location", "host"}});
  auto& engine_states = gauge("optd_engine_state_bytes", "Optimizer state bytes of all groups by location.");
  engine_state_device_ = &engine_states.Add({{"location", "device"}});
  engine_state_host_ = &engine_states.Add({{"location", "host"}});
  auto& paged = counter("optd_paged_bytes_total", "State bytes paged between host and device.");
  paged_to_device_ = &paged.Add({{"direction", "to_device"}});
  paged_to_host_ = &paged.Add({{"direction", "to_host"}});
  evictions_ = &counter("optd_page_evictions_total", "States evicted from the device.").Add({});
  page_wait_ = &counter("optd_page_wait_seconds_total", "Time steps waited for states to page in.")
                    .Add({});
  groups_ = &gauge("optd_groups", "Parameter groups held.").Add({});

  step_duration_ = &prometheus::BuildHistogram()
                        .Name("optd_step_duration_seconds")
                        .Help("Duration of optimizer steps, from the first gradient byte to the "
                              "last weight byte.")
                        .Labels(constant)
                        .Register(*registry_);
  steps_ = &counter("optd_steps_total", "Optimizer steps applied.");
  gradient_bytes_ = &counter("optd_gradient_bytes_received_total", "Gradient payload bytes received.");
  weight_bytes_sent_ = &counter("optd_weight_bytes_sent_total", "Weight payload bytes sent.");
  nonfinite_ = &counter("optd_nonfinite_gradient_elements_total",
                        "Gradient elements that were NaN or infinite.");
  workers_pending_ = &gauge("optd_workers_pending", "Workers a sync step is still waiting for.");
  group_weight_bytes_ = &gauge("optd_weight_bytes", "Weight bytes of a group by location.");
  group_state_bytes_ = &gauge("optd_state_bytes", "Optimizer state bytes of a group by location.");
  group_buffer_bytes_ = &gauge("optd_buffer_bytes",
                               "Step working buffers the engine holds for a group by location.");
  group_paged_out_bytes_ = &gauge("optd_paged_out_bytes",
                                  "State bytes of a group kept on the host and paged in by steps.");
  accumulation_ = &gauge("optd_accumulation_bytes",
                         "Gradient accumulation buffers of a group (sync mode, clipping).");

  rpcs_family_ = &counter("optd_rpcs_total", "Finished RPCs by method and status code.");
  checkpoint_saved_ = &gauge("optd_checkpoint_last_success_timestamp_seconds",
                             "When the last checkpoint was written completely (Unix time).");
  auto& auth = counter("optd_auth_failures_total",
                       "Calls refused: missing or unknown token (UNAUTHENTICATED), a role or "
                       "group scope that does not allow the call (PERMISSION_DENIED).");
  constexpr std::array<const char*, 4> kAuthReasons = {"missing_token", "unknown_token",
                                                       "wrong_role", "out_of_scope"};
  for (size_t r = 0; r < kAuthReasons.size(); ++r) {
    auth_failures_[r] = &auth.Add({{"reason", kAuthReasons[r]}});
  }

  auto& transport_bytes = counter("optd_transport_bytes_total",
                                  "Gradient and weight payload bytes steps moved, by transport.");
  transfer_family_ = &prometheus::BuildHistogram()
                       .Name("optd_step_transfer_seconds")
                       .Help("Per step stream: time its gradient reads and weight returns took, "
                             "by transport.")
                       .Labels(constant)
                       .Register(*registry_);
  for (int t = 0; t < kNumTransports; ++t) {
    const std::string name(TransportName(static_cast<Transport>(t)));
    transport_bytes_[static_cast<size_t>(t)] = &transport_bytes.Add({{"transport", name}});
  }
  colocated_regions_ =
      &gauge("optd_colocated_regions", "Colocated regions held (leases open, or in use by a step).")
           .Add({});

  collector_ = std::make_shared<Collector>(registry_, constant);
  if (options.listen_address.empty()) return absl::OkStatus();
  return StartHttp(options);
}

absl::Status Metrics::StartHttp(const MetricsOptions& options) {
  std::optional<BasicAuthCredentials> credentials;
  if (!options.basic_auth_file.empty()) {
    auto read = ReadBasicAuthFile(options.basic_auth_file);
    if (!read.ok()) return read.status();
    credentials = *std::move(read);
  }
  // civetweb's options, passed through prometheus-cpp's Exposer.
  std::vector<std::string> civetweb_options = {
      "listening_ports", options.listen_address,
      "num_threads", std::to_string(options.http_threads),
      "request_timeout_ms", std::to_string(options.request_timeout_ms)};
  // prometheus-cpp reports bind failures with exceptions; none may leave this module.
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(std::move(civetweb_options));
    exposer_->RegisterCollectable(collector_);
    if (credentials.has_value()) {
      exposer_->RegisterAuth(
          [credentials = *credentials](const std::string& user, const std::string& password) {
            // Both compared in full, so the time taken tells nothing about either.
            const bool user_ok = ConstantTimeEquals(user, credentials.user);
            const bool password_ok = ConstantTimeEquals(password, credentials.password);
            return user_ok && password_ok;
          },
          "optd metrics");
    }
    std::vector<int> ports = exposer_->GetListeningPorts();
    if (ports.empty()) {
      exposer_.reset();
      return absl::UnavailableError(
          absl::StrCat("metrics_listen: no port bound for ", options.listen_address));
    }
    port_ = ports[0];
  } catch (const std::exception& e) {
    exposer_.reset();
    return absl::UnavailableError(absl::StrCat(
        "metrics_listen: cannot serve metrics on ", options.listen_address, ": ", e.what()));
  }
  return absl::OkStatus();
}

void Metrics::SetScrapeCallback(std::function<void()> callback) {
  collector_->SetCallback(std::move(callback));
}

std::string Metrics::Scrape() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, collector_->Collect());
  return out.str();
}

std::shared_ptr<GroupMetrics::Series> Metrics::NewGroupSeries(const std::string& label) {
  auto series = std::make_shared<GroupMetrics::Series>();
  series->metrics = this;
  series->label = label;
  const Labels labels = {{"group", label}};
  auto at = [&](const char* location) {
    return Labels{{"group", label}, {"location", location}};
  };
  series->step_duration = &step_duration_->Add(labels, StepBuckets());
  series->steps = &steps_->Add(labels);
  series->gradient_bytes = &gradient_bytes_->Add(labels);
  series->weight_bytes_sent = &weight_bytes_sent_->Add(labels);
  series->nonfinite = &nonfinite_->Add(labels);
  series->workers_pending = &workers_pending_->Add(labels);
  series->weight_device = &group_weight_bytes_->Add(at("device"));
  series->weight_host = &group_weight_bytes_->Add(at("host"));
  series->state_device = &group_state_bytes_->Add(at("device"));
  series->state_host = &group_state_bytes_->Add(at("host"));
  series->buffer_device = &group_buffer_bytes_->Add(at("device"));
  series->buffer_host = &group_buffer_bytes_->Add(at("host"));
  series->paged_out = &group_paged_out_bytes_->Add(labels);
  series->accumulation = &accumulation_->Add(labels);
  return series;
}

std::unique_ptr<GroupMetrics> Metrics::ForGroup(const std::string& group) {
  std::lock_guard<std::mutex> lock(groups_mu_);
  std::shared_ptr<GroupMetrics::Series> series;
  const bool own = labelled_groups_ < max_groups_ && group != kOtherGroup;
  if (own) {
    ++labelled_groups_;
    series = NewGroupSeries(group);
  } else {
    series = other_.lock();
    if (series == nullptr) {
      series = NewGroupSeries(kOtherGroup);
      other_ = series;
    }
  }
  groups_->Increment();
  return std::unique_ptr<GroupMetrics>(new GroupMetrics(this, std::move(series), own));
}

void Metrics::RecordRpc(std::string_view method, int grpc_code) {
  if (size_t slash = method.rfind('/'); slash != std::string_view::npos) {
    method.remove_prefix(slash + 1);
  }
  size_t m = 0;
  while (m < kRpcMethods.size() && kRpcMethods[m] != method) ++m;
  if (grpc_code < 0 || grpc_code >= kNumStatusCodes) grpc_code = kUnknownCode;
  std::atomic<Counter*>& slot = rpcs_[m][grpc_code];
  Counter* counter = slot.load(std::memory_order_acquire);
  if (counter == nullptr) {
    // First RPC of this pair. Family::Add is thread-safe and returns the existing child for the
    // same labels, so two threads racing here get the same counter.
    counter = &rpcs_family_->Add(
        {{"method", std::string(m < kRpcMethods.size() ? kRpcMethods[m] : "other")},
         {"code", std::string(kCodeNames[grpc_code])}});
    slot.store(counter, std::memory_order_release);
  }
  counter->Increment();
}

void Metrics::RecordAuthFailure(AuthFailure reason) {
  auth_failures_[static_cast<size_t>(reason)]->Increment();
}
std::string_view TransportName(Transport transport) {
  switch (transport) {
    case Transport::kGrpc:
      return "grpc";
    case Transport::kShm:
      return "shm";
    case Transport::kCudaIpc:
      return "cuda_ipc";
  }
  return "grpc";
}

void Metrics::AddTransportBytes(Transport transport, int64_t n) {
  transport_bytes_[static_cast<size_t>(transport)]->Increment(static_cast<double>(n));
}

void Metrics::ObserveTransfer(Transport transport, double seconds) {
  std::atomic<Histogram*>& slot = transfer_seconds_[static_cast<size_t>(transport)];
  Histogram* h = slot.load(std::memory_order_acquire);
  if (h == nullptr) {
    std::lock_guard<std::mutex> lock(transfer_mu_);
    h = slot.load(std::memory_order_relaxed);
    if (h == nullptr) {
      h = &transfer_family_->Add({{"transport", std::string(TransportName(transport))}},
                                 StepBuckets());
      slot.store(h, std::memory_order_release);
    }
  }
  h->Observe(seconds);
}

void Metrics::SetColocatedRegions(int n) { colocated_regions_->Set(static_cast<double>(n)); }

void Metrics::RecordCheckpointSaved() { checkpoint_saved_->Add({}).SetToCurrentTime(); }

void Metrics::UpdateEngine(const core::EngineStats& stats) {
  std::lock_guard<std::mutex> lock(engine_mu_);
  if (stats.device_total_bytes >= 0) {
    if (device_total_child_ == nullptr) {
      device_used_child_ = &device_used_->Add({});
      device_free_child_ = &device_free_->Add({});
      device_total_child_ = &device_total_->Add({});
      device_budget_child_ = &device_budget_->Add({});
    }
    device_total_child_->Set(static_cast<double>(stats.device_total_bytes));
    if (stats.device_free_bytes >= 0) {
      device_free_child_->Set(static_cast<double>(stats.device_free_bytes));
      device_used_child_->Set(
          static_cast<double>(stats.device_total_bytes - stats.device_free_bytes));
    }
    if (stats.device_budget_bytes >= 0) {
      device_budget_child_->Set(static_cast<double>(stats.device_budget_bytes));
    }
  }
  engine_weight_device_->Set(static_cast<double>(stats.weight_bytes_device));
  engine_weight_host_->Set(static_cast<double>(stats.weight_bytes_host));
  engine_state_device_->Set(static_cast<double>(stats.state_bytes_device));
  engine_state_host_->Set(static_cast<double>(stats.state_bytes_host));
  AddDelta(paged_to_device_, static_cast<double>(stats.paged_bytes_to_device),
           static_cast<double>(last_.paged_bytes_to_device));
  AddDelta(paged_to_host_, static_cast<double>(stats.paged_bytes_to_host),
           static_cast<double>(last_.paged_bytes_to_host));
  AddDelta(evictions_, static_cast<double>(stats.evictions),
           static_cast<double>(last_.evictions));
  AddDelta(page_wait_, stats.page_wait_seconds, last_.page_wait_seconds);
  last_ = stats;
}

// ---------------------------------------------------------------------------------------------

GroupMetrics::GroupMetrics(Metrics* metrics, std::shared_ptr<Series> series, bool own)
    : metrics_(metrics), series_(std::move(series)), own_(own) {
  workers_pending_.gauge = series_->workers_pending;
  weight_device_.gauge = series_->weight_device;
  weight_host_.gauge = series_->weight_host;
  state_device_.gauge = series_->state_device;
  state_host_.gauge = series_->state_host;
  buffer_device_.gauge = series_->buffer_device;
  buffer_host_.gauge = series_->buffer_host;
  paged_out_.gauge = series_->paged_out;
  accumulation_.gauge = series_->accumulation;
}

GroupMetrics::~GroupMetrics() {
  // Take this group's share out of gauges that other groups under "_other" keep.
  for (GaugeShare* share : {&workers_pending_, &weight_device_, &weight_host_, &state_device_,
                            &state_host_, &buffer_device_, &buffer_host_, &paged_out_,
                            &accumulation_}) {
    share->Set(0);
  }
  Metrics& m = *metrics_;
  std::lock_guard<std::mutex> lock(m.groups_mu_);
  if (own_) --m.labelled_groups_;
  m.groups_->Decrement();
  // series_ goes with this object; the last holder removes its children (Series::~Series),
  // under groups_mu_ so that ForGroup never hands out a series being removed.
  series_.reset();
}

void GroupMetrics::GaugeShare::Set(int64_t v) {
  const int64_t before = value.exchange(v);
  if (v != before) gauge->Increment(static_cast<double>(v - before));
}

const std::string& GroupMetrics::label() const { return series_->label; }

void GroupMetrics::ObserveStep(double seconds) {
  series_->step_duration->Observe(seconds);
  series_->steps->Increment();
}
void GroupMetrics::AddGradientBytesReceived(int64_t n) {
  series_->gradient_bytes->Increment(static_cast<double>(n));
}
void GroupMetrics::AddWeightBytesSent(int64_t n) {
  series_->weight_bytes_sent->Increment(static_cast<double>(n));
}
void GroupMetrics::AddNonfiniteGradientElements(int64_t n) {
  series_->nonfinite->Increment(static_cast<double>(n));
}
void GroupMetrics::SetWorkersPending(int n) { workers_pending_.Set(n); }
void GroupMetrics::SetMemory(const core::MemoryStats& memory) {
  weight_device_.Set(memory.weight_bytes_device);
  weight_host_.Set(memory.weight_bytes_host);
  state_device_.Set(memory.state_bytes_device);
  state_host_.Set(memory.state_bytes_host);
  buffer_device_.Set(memory.buffer_bytes_device);
  buffer_host_.Set(memory.buffer_bytes_host);
  paged_out_.Set(memory.paged_out_bytes);
}
void GroupMetrics::SetAccumulationBytes(int64_t n) { accumulation_.Set(n); }

}  // namespace optd::server
