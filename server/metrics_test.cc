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

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <fstream>

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

std::unique_ptr<Metrics> Serving(MetricsOptions options = {}) {
  options.listen_address = "127.0.0.1:0";
  if (options.gpu_label.empty()) options.gpu_label = "3";
  options.hostname = "node-a";
  auto metrics = Metrics::Create(options);
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return metrics.ok() ? std::move(*metrics) : nullptr;
}

// A connected loopback socket to `port` whose reads give up after `guard_seconds`, or -1 (and
// a test failure).
int Connect(int port, int guard_seconds = 60) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ADD_FAILURE() << "cannot connect to 127.0.0.1:" << port;
    if (fd >= 0) close(fd);
    return -1;
  }
  timeval guard{guard_seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &guard, sizeof(guard));
  return fd;
}

// Reads until the peer closes; false when the read failed or the guard time ran out first.
bool ReadToEof(int fd, std::string* out) {
  char buf[65536];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
    out->append(buf, static_cast<size_t>(n));
  }
}

// Sends `request` as is and returns the whole response ("" on failure).
std::string Exchange(int port, const std::string& request, int guard_seconds = 60) {
  const int fd = Connect(port, guard_seconds);
  if (fd < 0) return "";
  std::string response;
  EXPECT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  EXPECT_TRUE(ReadToEof(fd, &response));
  close(fd);
  return response;
}

std::string GetWithAuthorization(int port, const std::string& authorization) {
  std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n";
  if (!authorization.empty()) request += "Authorization: " + authorization + "\r\n";
  return Exchange(port, request + "\r\n");
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
    EXPECT_TRUE(s.name.rfind("optd_", 0) == 0 || s.name.rfind("process_", 0) == 0) << s.name;
  }
  // A fresh server exposes a few dozen series, not one per method x code (Note [Bounded label
  // sets]): no RPC series before the first RPC.
  EXPECT_GT(optd_series, 5);
  EXPECT_LT(optd_series, 40);
  EXPECT_FALSE(Find(samples, "optd_rpcs_total", {{"method", "Step"}, {"code", "OK"}}).has_value());
  EXPECT_EQ(CountWithLabel(samples, "code", "DATA_LOSS"), 0);
  EXPECT_EQ(Find(samples, "optd_groups"), 0.0);
  // The CPU backend has no device memory: no such series until a CUDA engine reports.
  EXPECT_FALSE(Find(samples, "optd_device_memory_free_bytes").has_value());
  EXPECT_FALSE(Find(samples, "optd_checkpoint_last_success_timestamp_seconds").has_value());
}

TEST(MetricsTest, CpuServerHasNoGpuLabel) {
  MetricsOptions options;
  options.hostname = "node-b";
  auto metrics = Metrics::Create(options);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  (*metrics)->RecordRpc("Step", 0);
  auto samples = Parse((*metrics)->Scrape());
  ASSERT_TRUE(Find(samples, "optd_rpcs_total", {{"method", "Step"}}).has_value());
  for (const Sample& s : samples) {
    EXPECT_EQ(s.labels.count("gpu"), 0u) << s.name;
    EXPECT_EQ(s.labels.at("hostname"), "node-b") << s.name;
  }
}

TEST(MetricsTest, ProcessMetricsFromProc) {
  auto metrics = Metrics::Create(MetricsOptions{});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  // Hold a file open so that the count of open descriptors has something to see.
  std::FILE* held = std::fopen("/proc/self/stat", "r");
  ASSERT_NE(held, nullptr);
  auto samples = Parse((*metrics)->Scrape());
  std::fclose(held);
  const double rss = Find(samples, "process_resident_memory_bytes").value_or(-1);
  EXPECT_GT(rss, 1 << 20);  // a process linking gRPC and prometheus-cpp holds more than 1 MiB
  EXPECT_GE(Find(samples, "process_virtual_memory_bytes").value_or(-1), rss);
  EXPECT_GE(Find(samples, "process_open_fds").value_or(-1), 4.0);  // stdio + `held`
  EXPECT_GE(Find(samples, "process_max_fds").value_or(-1),
            Find(samples, "process_open_fds").value_or(0));
  EXPECT_GE(Find(samples, "process_cpu_seconds_total").value_or(-1), 0.0);
  const double now = static_cast<double>(std::time(nullptr));
  const double start = Find(samples, "process_start_time_seconds").value_or(-1);
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 24 * 3600);  // this test process started today
  // Typed as Prometheus expects.
  const std::string text = (*metrics)->Scrape();
  EXPECT_NE(text.find("# TYPE process_cpu_seconds_total counter"), std::string::npos);
  EXPECT_NE(text.find("# TYPE process_resident_memory_bytes gauge"), std::string::npos);
}

TEST(MetricsTest, CheckpointTimestampAppearsAtFirstSave) {
  auto metrics = Metrics::Create(MetricsOptions{});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  const double before = static_cast<double>(std::time(nullptr));
  (*metrics)->RecordCheckpointSaved();
  const double at =
      Find(Parse((*metrics)->Scrape()), "optd_checkpoint_last_success_timestamp_seconds")
          .value_or(-1);
  EXPECT_GE(at, before - 1);
  EXPECT_LE(at, static_cast<double>(std::time(nullptr)) + 1);
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
  // Pairs that never happened have no series.
  EXPECT_FALSE(
      Find(samples, "optd_rpcs_total", {{"method", "Step"}, {"code", "CANCELLED"}}).has_value());
  EXPECT_EQ(CountWithLabel(samples, "method", "Step"), 1);
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
  core::MemoryStats memory;
  memory.weight_bytes_device = 100;
  memory.weight_bytes_host = 200;
  memory.state_bytes_device = 300;
  memory.state_bytes_host = 400;
  memory.buffer_bytes_device = 500;
  memory.buffer_bytes_host = 600;
  memory.paged_out_bytes = 400;
  g->SetMemory(memory);
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
  EXPECT_EQ(Find(samples, "optd_buffer_bytes", {{"group", "llama"}, {"location", "device"}}), 500.0);
  EXPECT_EQ(Find(samples, "optd_buffer_bytes", {{"group", "llama"}, {"location", "host"}}), 600.0);
  EXPECT_EQ(Find(samples, "optd_paged_out_bytes", llama), 400.0);
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

TEST(MetricsTest, GroupsBeyondTheCapAreSummedUnderOther) {
  MetricsOptions options;
  options.max_groups = 2;
  auto metrics = Serving(options);
  ASSERT_NE(metrics, nullptr);
  auto a = metrics->ForGroup("a");
  auto b = metrics->ForGroup("b");
  auto c = metrics->ForGroup("c");
  auto d = metrics->ForGroup("d");
  EXPECT_EQ(a->label(), "a");
  EXPECT_EQ(b->label(), "b");
  EXPECT_EQ(c->label(), "_other");
  EXPECT_EQ(d->label(), "_other");
  c->ObserveStep(0.01);
  d->ObserveStep(0.02);
  auto host_bytes = [](int64_t weights, int64_t states) {
    core::MemoryStats m;
    m.weight_bytes_host = weights;
    m.state_bytes_host = states;
    return m;
  };
  c->SetMemory(host_bytes(100, 10));
  d->SetMemory(host_bytes(200, 20));
  d->SetMemory(host_bytes(250, 20));  // a gauge holds the sum of the latest figures of c and d
  c->SetWorkersPending(1);
  d->SetWorkersPending(2);
  auto samples = Parse(HttpScrape(metrics->port()));
  const std::map<std::string, std::string> other = {{"group", "_other"}};
  EXPECT_EQ(Find(samples, "optd_groups"), 4.0);
  EXPECT_EQ(Find(samples, "optd_steps_total", other), 2.0);
  EXPECT_EQ(Find(samples, "optd_step_duration_seconds_count", other), 2.0);
  EXPECT_EQ(Find(samples, "optd_weight_bytes", {{"group", "_other"}, {"location", "host"}}),
            350.0);
  EXPECT_EQ(Find(samples, "optd_workers_pending", other), 3.0);
  EXPECT_EQ(CountWithLabel(samples, "group", "c"), 0);
  EXPECT_EQ(CountWithLabel(samples, "group", "d"), 0);

  // c leaves: its share of the gauges goes with it; the counters keep what was counted.
  c.reset();
  samples = Parse(HttpScrape(metrics->port()));
  EXPECT_EQ(Find(samples, "optd_weight_bytes", {{"group", "_other"}, {"location", "host"}}),
            250.0);
  EXPECT_EQ(Find(samples, "optd_workers_pending", other), 2.0);
  EXPECT_EQ(Find(samples, "optd_steps_total", other), 2.0);

  // a leaves: its slot goes to the next group created; d stays under "_other".
  a.reset();
  auto e = metrics->ForGroup("e");
  EXPECT_EQ(e->label(), "e");
  // A group named like the shared label is summed there, never given that label of its own.
  auto named_other = metrics->ForGroup("_other");
  EXPECT_EQ(named_other->label(), "_other");
  named_other.reset();
  d.reset();
  samples = Parse(HttpScrape(metrics->port()));
  EXPECT_EQ(CountWithLabel(samples, "group", "_other"), 0);  // the last one under it left
  EXPECT_GT(CountWithLabel(samples, "group", "e"), 10);
  EXPECT_EQ(Find(samples, "optd_groups"), 2.0);

  // max_groups = 0: no group has series of its own.
  options.max_groups = 0;
  auto none = Serving(options);
  ASSERT_NE(none, nullptr);
  auto g = none->ForGroup("g");
  EXPECT_EQ(g->label(), "_other");
}

TEST(MetricsTest, BadOptionsAreInvalidArgument) {
  MetricsOptions options;
  options.max_groups = -1;
  EXPECT_EQ(Metrics::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.max_groups = 1;
  options.listen_address = "127.0.0.1:0";
  options.basic_auth_file = testing::TempDir() + "/no-such-auth-file";
  EXPECT_EQ(Metrics::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.basic_auth_file = testing::TempDir() + "/auth-without-colon";
  std::ofstream(options.basic_auth_file) << "justauser\n";
  auto bad = Metrics::Create(options);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("user:password"), std::string::npos) << bad.status();
}

TEST(MetricsTest, BasicAuthGuardsTheEndpoint) {
  MetricsOptions options;
  options.basic_auth_file = testing::TempDir() + "/metrics-auth";
  std::ofstream(options.basic_auth_file) << "prometheus:s3cret pass\n";
  auto metrics = Serving(options);
  ASSERT_NE(metrics, nullptr);
  // "prometheus:s3cret pass", "prometheus:wrong" and "other:s3cret pass" in base64.
  const std::string right = "Basic cHJvbWV0aGV1czpzM2NyZXQgcGFzcw==";
  const std::string wrong_password = "Basic cHJvbWV0aGV1czp3cm9uZw==";
  const std::string wrong_user = "Basic b3RoZXI6czNjcmV0IHBhc3M=";
  const std::string ok = GetWithAuthorization(metrics->port(), right);
  EXPECT_EQ(ok.rfind("HTTP/1.1 200", 0), 0u) << ok.substr(0, 80);
  EXPECT_NE(ok.find("optd_groups"), std::string::npos);
  for (const std::string& bad : {std::string(), wrong_password, wrong_user}) {
    const std::string refused = GetWithAuthorization(metrics->port(), bad);
    EXPECT_EQ(refused.rfind("HTTP/1.1 401", 0), 0u) << bad << ": " << refused.substr(0, 80);
    EXPECT_EQ(refused.find("optd_groups"), std::string::npos);
  }
  // The unauthenticated helper gets no body either.
  EXPECT_FALSE(HttpGetLoopback(metrics->port(), "/metrics").ok());
}

// Note [Blocking the metrics endpoint]
// civetweb gives each connection a worker thread until its request is complete. A client that
// sends half a request and waits holds a worker: with 2 workers and civetweb's 30 s default,
// two such connections stopped every scrape for 30 s. The tests below bound their reads by 20 s,
// far beyond what an unblocked request takes and below that default, so each fails on the old
// behaviour without timing anything finer than that.
TEST(MetricsTest, IdleHalfSentRequestsDoNotBlockScrapes) {
  MetricsOptions options;
  options.request_timeout_ms = 60000;  // the idle connections stay for the whole test
  auto metrics = Serving(options);
  ASSERT_NE(metrics, nullptr);
  std::vector<int> idle;
  for (int i = 0; i < 2; ++i) {
    const int fd = Connect(metrics->port());
    ASSERT_GE(fd, 0);
    const std::string half = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n";  // no blank line
    ASSERT_EQ(send(fd, half.data(), half.size(), 0), static_cast<ssize_t>(half.size()));
    idle.push_back(fd);
  }
  for (int k = 0; k < 3; ++k) {
    const std::string response =
        Exchange(metrics->port(), "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", 20);
    EXPECT_NE(response.find("optd_groups"), std::string::npos) << "scrape " << k << " blocked";
  }
  for (int fd : idle) close(fd);
}

TEST(MetricsTest, ServerClosesAConnectionThatNeverFinishesItsRequest) {
  MetricsOptions options;
  options.http_threads = 1;         // one worker: the idle connection holds it
  options.request_timeout_ms = 200;
  auto metrics = Serving(options);
  ASSERT_NE(metrics, nullptr);
  const int fd = Connect(metrics->port(), 20);
  ASSERT_GE(fd, 0);
  const std::string half = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  ASSERT_EQ(send(fd, half.data(), half.size(), 0), static_cast<ssize_t>(half.size()));
  // The only worker is held until the request timeout closes the idle connection; then the
  // scrape is served.
  const std::string response =
      Exchange(metrics->port(), "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", 20);
  EXPECT_NE(response.find("optd_groups"), std::string::npos);
  std::string rest;
  EXPECT_TRUE(ReadToEof(fd, &rest)) << "the server did not close the idle connection";
  EXPECT_EQ(rest.find("optd_groups"), std::string::npos);
  close(fd);
}

}  // namespace
}  // namespace optd::server
