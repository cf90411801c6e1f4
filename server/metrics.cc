#include "server/metrics.h"

#include <exception>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

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

}  // namespace

// What the exposer serves: runs the scrape callback, then collects the registry.
class Metrics::Collector : public prometheus::Collectable {
 public:
  explicit Collector(std::shared_ptr<prometheus::Registry> registry)
      : registry_(std::move(registry)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    if (callback_) callback_();
    return registry_->Collect();
  }
  std::function<void()> callback_;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
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
  registry_ = std::make_shared<prometheus::Registry>();
  const Labels constant = {{"gpu", options.gpu_label}, {"hostname", options.hostname}};
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
  accumulation_ = &gauge("optd_accumulation_bytes",
                         "Gradient accumulation buffers of a group (sync mode, clipping).");

  auto& rpcs = counter("optd_rpcs_total", "Finished RPCs by method and status code.");
  for (size_t m = 0; m <= kRpcMethods.size(); ++m) {
    const std::string method(m < kRpcMethods.size() ? kRpcMethods[m] : "other");
    for (int c = 0; c < kNumStatusCodes; ++c) {
      rpcs_[m][c] = &rpcs.Add({{"method", method}, {"code", std::string(kCodeNames[c])}});
    }
  }
  auto& auth = counter("optd_auth_failures_total",
                       "Calls refused: missing or unknown token (UNAUTHENTICATED), a role or "
                       "group scope that does not allow the call (PERMISSION_DENIED).");
  constexpr std::array<const char*, 4> kAuthReasons = {"missing_token", "unknown_token",
                                                       "wrong_role", "out_of_scope"};
  for (size_t r = 0; r < kAuthReasons.size(); ++r) {
    auth_failures_[r] = &auth.Add({{"reason", kAuthReasons[r]}});
  }

  collector_ = std::make_shared<Collector>(registry_);
  if (!options.listen_address.empty()) {
    // prometheus-cpp reports bind failures with exceptions; none may leave this module.
    try {
      exposer_ = std::make_unique<prometheus::Exposer>(options.listen_address, 2);
      exposer_->RegisterCollectable(collector_);
      std::vector<int> ports = exposer_->GetListeningPorts();
      if (ports.empty()) {
        return absl::UnavailableError(absl::StrCat(
            "metrics_listen: no port bound for ", options.listen_address));
      }
      port_ = ports[0];
    } catch (const std::exception& e) {
      exposer_.reset();
      return absl::UnavailableError(absl::StrCat(
          "metrics_listen: cannot serve metrics on ", options.listen_address, ": ", e.what()));
    }
  }
  return absl::OkStatus();
}

void Metrics::SetScrapeCallback(std::function<void()> callback) {
  collector_->callback_ = std::move(callback);
}

std::string Metrics::Scrape() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, collector_->Collect());
  return out.str();
}

std::unique_ptr<GroupMetrics> Metrics::ForGroup(const std::string& group) {
  auto g = std::unique_ptr<GroupMetrics>(new GroupMetrics(this));
  const Labels labels = {{"group", group}};
  auto at = [&](const char* location) {
    return Labels{{"group", group}, {"location", location}};
  };
  g->step_duration_ = &step_duration_->Add(labels, StepBuckets());
  g->steps_ = &steps_->Add(labels);
  g->gradient_bytes_ = &gradient_bytes_->Add(labels);
  g->weight_bytes_sent_ = &weight_bytes_sent_->Add(labels);
  g->nonfinite_ = &nonfinite_->Add(labels);
  g->workers_pending_ = &workers_pending_->Add(labels);
  g->weight_device_ = &group_weight_bytes_->Add(at("device"));
  g->weight_host_ = &group_weight_bytes_->Add(at("host"));
  g->state_device_ = &group_state_bytes_->Add(at("device"));
  g->state_host_ = &group_state_bytes_->Add(at("host"));
  g->accumulation_ = &accumulation_->Add(labels);
  groups_->Increment();
  return g;
}

void Metrics::RecordRpc(std::string_view method, int grpc_code) {
  if (size_t slash = method.rfind('/'); slash != std::string_view::npos) {
    method.remove_prefix(slash + 1);
  }
  size_t m = 0;
  while (m < kRpcMethods.size() && kRpcMethods[m] != method) ++m;
  if (grpc_code < 0 || grpc_code >= kNumStatusCodes) grpc_code = kUnknownCode;
  rpcs_[m][grpc_code]->Increment();
}

void Metrics::RecordAuthFailure(AuthFailure reason) {
  auth_failures_[static_cast<size_t>(reason)]->Increment();
}

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

GroupMetrics::~GroupMetrics() {
  Metrics& m = *metrics_;
  m.step_duration_->Remove(step_duration_);
  m.steps_->Remove(steps_);
  m.gradient_bytes_->Remove(gradient_bytes_);
  m.weight_bytes_sent_->Remove(weight_bytes_sent_);
  m.nonfinite_->Remove(nonfinite_);
  m.workers_pending_->Remove(workers_pending_);
  m.group_weight_bytes_->Remove(weight_device_);
  m.group_weight_bytes_->Remove(weight_host_);
  m.group_state_bytes_->Remove(state_device_);
  m.group_state_bytes_->Remove(state_host_);
  m.accumulation_->Remove(accumulation_);
  m.groups_->Decrement();
}

void GroupMetrics::ObserveStep(double seconds) {
  step_duration_->Observe(seconds);
  steps_->Increment();
}
void GroupMetrics::AddGradientBytesReceived(int64_t n) {
  gradient_bytes_->Increment(static_cast<double>(n));
}
void GroupMetrics::AddWeightBytesSent(int64_t n) {
  weight_bytes_sent_->Increment(static_cast<double>(n));
}
void GroupMetrics::AddNonfiniteGradientElements(int64_t n) {
  nonfinite_->Increment(static_cast<double>(n));
}
void GroupMetrics::SetWorkersPending(int n) { workers_pending_->Set(n); }
void GroupMetrics::SetBytes(int64_t weight_device, int64_t weight_host, int64_t state_device,
                            int64_t state_host) {
  weight_device_->Set(static_cast<double>(weight_device));
  weight_host_->Set(static_cast<double>(weight_host));
  state_device_->Set(static_cast<double>(state_device));
  state_host_->Set(static_cast<double>(state_host));
}
void GroupMetrics::SetAccumulationBytes(int64_t n) {
  accumulation_->Set(static_cast<double>(n));
}

}  // namespace optd::server
