#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "optd/core/engine.h"
#include "server/metrics_http_get.h"

namespace optd::server {
namespace {

// GET http://127.0.0.1:port/metrics; returns the body, or "" (and a test failure) on failure.
std::string HttpScrape(int port) {
  auto body = HttpGetLoopback(port, "/metrics");
  EXPECT_TRUE(body.ok()) << body.status();
  return body.ok() ? *body : "";
}

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses the Prometheus text exposition: `name{k="v",...} value` lines; comments skipped.
std::vector<Sample> Parse(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t i = line.find_first_of("{ ");
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (line[i] != '}') {
        size_t eq = line.find('=', i);
        std::string key = line.substr(i, eq - i);
        size_t start = eq + 2;  // skip ="
        std::string value;
        size_t j = start;
        for (; line[j] != '"'; ++j) {
          if (line[j] == '\\') ++j;
          value += line[j];
        }
        s.labels[key] = value;
        i = j + 1;
        if (line[i] == ',') ++i;
      }
      ++i;
    }
    s.value = std::stod(line.substr(i + 1));
    out.push_back(std::move(s));
  }
  return out;
}

// The value of the one series of `name` whose labels include `labels`; nullopt if none.
std::optional<double> Find(const std::vector<Sample>& samples, const std::string& name,
                           const std::map<std::string, std::string>& labels = {}) {
  std::optional<double> found;
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) match = false;
    }
    if (!match) continue;
    EXPECT_FALSE(found.has_value()) << "several series of " << name << " match";
    found = s.value;
  }
  return found;
}

int CountWithLabel(const std::vector<Sample>& samples, const std::string& key,
                   const std::string& value) {
  int n = 0;
  for (const Sample& s : samples) {
    auto it = s.labels.find(key);
    if (it != s.labels.end() && it->second == value) ++n;
  }
  return n;
}

std::unique_ptr<Metrics> Serving() {
  MetricsOptions options;
  options.listen_address = "127.0.0.1:0";
  options.gpu_label = "3";
  options.hostname = "node-a";
  auto metrics = Metrics::Create(options);
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return metrics.ok() ? std::move(*metrics) : nullptr;
}

TEST(MetricsTest, ServesOverHttpWithConstLabels) {
  auto metrics = Serving();
  ASSERT_NE(metrics, nullptr);
  ASSERT_GT(metrics->port(), 0);
  auto samples = Parse(HttpScrape(metrics->port()));
  ASSERT_FALSE(samples.empty());
  int optd_series = 0;
  for (const Sample& s : samples) {
    // prometheus-cpp's Exposer adds its own exposer_* families, which we cannot label.
    if (s.name.rfind("exposer_", 0) == 0) continue;
    ++optd_series;
    ASSERT_EQ(s.labels.count("gpu"), 1u) << s.name;
    ASSERT_EQ(s.labels.count("hostname"), 1u) << s.name;
    EXPECT_EQ(s.labels.at("gpu"), "3") << s.name;
    EXPECT_EQ(s.labels.at("hostname"), "node-a") << s.name;
    EXPECT_EQ(s.name.rfind("optd_", 0), 0u) << s.name;
  }
  EXPECT_GT(optd_series, 14 * 17);
  // Every method x every code exists from the start, plus "other".
  EXPECT_EQ(Find(samples, "optd_rpcs_total", {{"method", "Step"}, {"code", "OK"}}), 0.0);
  EXPECT_EQ(Find(samples, "optd_rpcs_total", {{"method", "other"}, {"code", "UNAUTHENTICATED"}}),
            0.0);
  EXPECT_EQ(CountWithLabel(samples, "code", "DATA_LOSS"),
            static_cast<int>(Metrics::kRpcMethods.size()) + 1);
  EXPECT_EQ(Find(samples, "optd_groups"), 0.0);
  // The CPU backend has no device memory: no such series until a CUDA engine reports.
  EXPECT_FALSE(Find(samples, "optd_device_memory_free_bytes").has_value());
}

TEST(MetricsTest, RpcsCountByMethodAndCode) {
  auto metrics = Serving();
  ASSERT_NE(metrics, nullptr);
  metrics->RecordRpc("Step", 0);
  metrics->RecordRpc("/optd.v1.Optimizer/Step", 0);
  metrics->RecordRpc("CreateGroup", 6);
  metrics->RecordRpc("Bogus", 99);  // unknown method, out-of-range code
  metrics->RecordRpc("ImportState", 16);
  auto samples = Parse(HttpScrape(metrics->port()));
  EXPECT_EQ(Find(samples, "optd_rpcs_total", {{"method", "Step"}, {"code", "OK"}}), 2.0);
  EXPECT_EQ(Find(samples, "optd_rpcs_total",
                 {{"method", "CreateGroup"}, {"code", "ALREADY_EXISTS"}}), 1.0);
  EXPECT_EQ(Find(samples, "optd_rpcs_total", {{"method", "other"}, {"code", "UNKNOWN"}}), 1.0);
  EXPECT_EQ(Find(samples, "optd_rpcs_total",
                 {{"method", "ImportState"}, {"code", "UNAUTHENTICATED"}}), 1.0);
  EXPECT_EQ(Find(samples, "optd_rpcs_total", {{"method", "Step"}, {"code", "CANCELLED"}}), 0.0);
}

TEST(MetricsTest, GroupSeriesMoveAndDisappear) {
  auto metrics = Serving();
  ASSERT_NE(metrics, nullptr);
  auto g = metrics->ForGroup("llama");
  auto other = metrics->ForGroup("other");
  g->ObserveStep(0.003);
  g->ObserveStep(0.004);
  g->ObserveStep(45.0);
  g->AddGradientBytesReceived(1000);
  g->AddGradientBytesReceived(24);
  g->AddWeightBytesSent(4096);
  g->AddNonfiniteGradientElements(3);
  g->SetWorkersPending(2);
  g->SetBytes(100, 200, 300, 400);
  g->SetAccumulationBytes(1 << 20);
  auto samples = Parse(HttpScrape(metrics->port()));
  const std::map<std::string, std::string> llama = {{"group", "llama"}};
  EXPECT_EQ(Find(samples, "optd_groups"), 2.0);
  EXPECT_EQ(Find(samples, "optd_steps_total", llama), 3.0);
  EXPECT_EQ(Find(samples, "optd_step_duration_seconds_count", llama), 3.0);
  EXPECT_NEAR(*Find(samples, "optd_step_duration_seconds_sum", llama), 45.007, 1e-9);
  EXPECT_EQ(Find(samples, "optd_step_duration_seconds_bucket", {{"group", "llama"}, {"le", "0.0001"}}),
            0.0);
  EXPECT_EQ(Find(samples, "optd_step_duration_seconds_bucket", {{"group", "llama"}, {"le", "0.005"}}),
            2.0);
  EXPECT_EQ(Find(samples, "optd_step_duration_seconds_bucket", {{"group", "llama"}, {"le", "60"}}),
            3.0);
  EXPECT_EQ(Find(samples, "optd_gradient_bytes_received_total", llama), 1024.0);
  EXPECT_EQ(Find(samples, "optd_weight_bytes_sent_total", llama), 4096.0);
  EXPECT_EQ(Find(samples, "optd_nonfinite_gradient_elements_total", llama), 3.0);
  EXPECT_EQ(Find(samples, "optd_workers_pending", llama), 2.0);
  EXPECT_EQ(Find(samples, "optd_weight_bytes", {{"group", "llama"}, {"location", "device"}}), 100.0);
  EXPECT_EQ(Find(samples, "optd_weight_bytes", {{"group", "llama"}, {"location", "host"}}), 200.0);
  EXPECT_EQ(Find(samples, "optd_state_bytes", {{"group", "llama"}, {"location", "device"}}), 300.0);
  EXPECT_EQ(Find(samples, "optd_state_bytes", {{"group", "llama"}, {"location", "host"}}), 400.0);
  EXPECT_EQ(Find(samples, "optd_accumulation_bytes", llama), 1048576.0);
  EXPECT_EQ(Find(samples, "optd_steps_total", {{"group", "other"}}), 0.0);
  EXPECT_GT(CountWithLabel(samples, "group", "llama"), 10);

  g.reset();
  samples = Parse(HttpScrape(metrics->port()));
  EXPECT_EQ(CountWithLabel(samples, "group", "llama"), 0);
  EXPECT_GT(CountWithLabel(samples, "group", "other"), 10);
  EXPECT_EQ(Find(samples, "optd_groups"), 1.0);

  // A group created again under the same name starts from zero.
  g = metrics->ForGroup("llama");
  samples = Parse(HttpScrape(metrics->port()));
  EXPECT_EQ(Find(samples, "optd_steps_total", llama), 0.0);
}

TEST(MetricsTest, EngineTotalsBecomeCounters) {
  auto metrics = Serving();
  ASSERT_NE(metrics, nullptr);
  core::EngineStats s;
  s.device_total_bytes = 80'000'000'000;
  s.device_free_bytes = 60'000'000'000;
  s.device_budget_bytes = 50'000'000'000;
  s.weight_bytes_device = 11;
  s.weight_bytes_host = 12;
  s.state_bytes_device = 13;
  s.state_bytes_host = 14;
  s.paged_bytes_to_device = 100;
  s.paged_bytes_to_host = 50;
  s.evictions = 2;
  s.page_wait_seconds = 0.5;
  metrics->UpdateEngine(s);
  s.paged_bytes_to_device = 250;
  s.evictions = 5;
  s.page_wait_seconds = 0.75;
  metrics->UpdateEngine(s);
  auto samples = Parse(HttpScrape(metrics->port()));
  EXPECT_EQ(Find(samples, "optd_device_memory_total_bytes"), 8e10);
  EXPECT_EQ(Find(samples, "optd_device_memory_free_bytes"), 6e10);
  EXPECT_EQ(Find(samples, "optd_device_memory_used_bytes"), 2e10);
  EXPECT_EQ(Find(samples, "optd_device_memory_budget_bytes"), 5e10);
  EXPECT_EQ(Find(samples, "optd_engine_weight_bytes", {{"location", "device"}}), 11.0);
  EXPECT_EQ(Find(samples, "optd_engine_state_bytes", {{"location", "host"}}), 14.0);
  EXPECT_EQ(Find(samples, "optd_paged_bytes_total", {{"direction", "to_device"}}), 250.0);
  EXPECT_EQ(Find(samples, "optd_paged_bytes_total", {{"direction", "to_host"}}), 50.0);
  EXPECT_EQ(Find(samples, "optd_page_evictions_total"), 5.0);
  EXPECT_EQ(Find(samples, "optd_page_wait_seconds_total"), 0.75);

  // A total that went down (a new engine) adds nothing; growth after it counts again.
  s.paged_bytes_to_device = 10;
  metrics->UpdateEngine(s);
  s.paged_bytes_to_device = 30;
  metrics->UpdateEngine(s);
  samples = Parse(metrics->Scrape());
  EXPECT_EQ(Find(samples, "optd_paged_bytes_total", {{"direction", "to_device"}}), 270.0);
}

TEST(MetricsTest, ScrapeCallbackFeedsRealEngineFigures) {
  auto metrics = Serving();
  ASSERT_NE(metrics, nullptr);
  core::EngineOptions eo;
  eo.num_threads = 1;
  auto engine = core::CreateEngine(eo);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::atomic<int> calls{0};
  metrics->SetScrapeCallback([&] {
    ++calls;
    metrics->UpdateEngine((*engine)->Stats());
  });
  auto before = Parse(HttpScrape(metrics->port()));
  EXPECT_EQ(calls.load(), 1);
  core::GroupSpec spec;
  spec.tensors = {{"w", core::DType::kFloat32, {10000}}};
  auto group = (*engine)->CreateGroup(spec);
  ASSERT_TRUE(group.ok()) << group.status();
  auto after = Parse(HttpScrape(metrics->port()));
  EXPECT_EQ(calls.load(), 2);
  const double w0 = Find(before, "optd_engine_weight_bytes", {{"location", "host"}}).value_or(-1);
  const double w1 = Find(after, "optd_engine_weight_bytes", {{"location", "host"}}).value_or(-1);
  EXPECT_EQ(w1 - w0, 40000.0);
  const double s1 = Find(after, "optd_engine_state_bytes", {{"location", "host"}}).value_or(-1);
  EXPECT_GE(s1, 20000.0);  // 2 bytes of 8-bit state per element, plus block scales
  EXPECT_FALSE(Find(after, "optd_device_memory_total_bytes").has_value());
  metrics->SetScrapeCallback(nullptr);
}

TEST(MetricsTest, ConcurrentRecordingIsExact) {
  auto metrics = Serving();
  ASSERT_NE(metrics, nullptr);
  auto g = metrics->ForGroup("g");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        metrics->RecordRpc("PullWeights", 0);
        g->AddWeightBytesSent(2);
        g->ObserveStep(0.001);
      }
    });
  }
  std::thread scraper([&] {
    for (int i = 0; i < 5; ++i) HttpScrape(metrics->port());
  });
  for (auto& t : threads) t.join();
  scraper.join();
  auto samples = Parse(HttpScrape(metrics->port()));
  EXPECT_EQ(Find(samples, "optd_rpcs_total", {{"method", "PullWeights"}, {"code", "OK"}}), 4000.0);
  EXPECT_EQ(Find(samples, "optd_weight_bytes_sent_total", {{"group", "g"}}), 8000.0);
  EXPECT_EQ(Find(samples, "optd_steps_total", {{"group", "g"}}), 4000.0);
}

TEST(MetricsTest, BusyPortIsUnavailableAndNoAddressMeansNoEndpoint) {
  auto first = Serving();
  ASSERT_NE(first, nullptr);
  MetricsOptions options;
  options.listen_address = "127.0.0.1:" + std::to_string(first->port());
  auto second = Metrics::Create(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(options.listen_address), std::string::npos)
      << second.status();

  auto quiet = Metrics::Create(MetricsOptions{});
  ASSERT_TRUE(quiet.ok());
  EXPECT_EQ((*quiet)->port(), 0);
  (*quiet)->RecordRpc("GetGroup", 5);
  EXPECT_EQ(Find(Parse((*quiet)->Scrape()), "optd_rpcs_total",
                 {{"method", "GetGroup"}, {"code", "NOT_FOUND"}}),
            1.0);
}

}  // namespace
}  // namespace optd::server
