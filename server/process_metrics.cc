#include "server/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>

namespace optd::server {
namespace {

// The fields of /proc/self/stat we use (proc(5); counted from 1, as there).
struct ProcStat {
  double utime_ticks = 0;      // 14
  double stime_ticks = 0;      // 15
  double starttime_ticks = 0;  // 22: since boot
  double vsize_bytes = 0;      // 23
  double rss_pages = 0;        // 24
};

std::optional<ProcStat> ReadProcStat() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // Field 2 is the command name in parentheses and may itself hold spaces or ')': the fields
  // we want follow the last ')'. After it comes field 3.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(close + 1));
  ProcStat s;
  std::string skip;
  for (int field = 3; field <= 24; ++field) {
    double* into = nullptr;
    switch (field) {
      case 14: into = &s.utime_ticks; break;
      case 15: into = &s.stime_ticks; break;
      case 22: into = &s.starttime_ticks; break;
      case 23: into = &s.vsize_bytes; break;
      case 24: into = &s.rss_pages; break;
      default: break;
    }
    if (into != nullptr ? !(fields >> *into) : !(fields >> skip)) return std::nullopt;
  }
  return s;
}

// Boot time in seconds since the epoch: the `btime` line of /proc/stat.
std::optional<double> ReadBootTime() {
  std::ifstream in("/proc/stat");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("btime ", 0) == 0) return std::stod(line.substr(6));
  }
  return std::nullopt;
}

std::optional<double> CountOpenFds() {
  std::error_code ec;
  double n = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++n;
  }
  if (ec) return std::nullopt;
  return n - 1;  // the iterator's own descriptor
}

prometheus::MetricFamily One(const char* name, const char* help, prometheus::MetricType type,
                             const prometheus::Labels& labels, double value) {
  prometheus::ClientMetric metric;
  for (const auto& [k, v] : labels) metric.label.push_back({k, v});
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  return prometheus::MetricFamily{name, help, type, {std::move(metric)}};
}

}  // namespace

std::vector<prometheus::MetricFamily> CollectProcessMetrics(const prometheus::Labels& labels) {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  if (auto stat = ReadProcStat(); stat.has_value() && ticks > 0) {
    out.push_back(One("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                      MetricType::Counter, labels,
                      (stat->utime_ticks + stat->stime_ticks) / ticks));
    out.push_back(One("process_resident_memory_bytes", "Resident memory size in bytes.",
                      MetricType::Gauge, labels, stat->rss_pages * page));
    out.push_back(One("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                      MetricType::Gauge, labels, stat->vsize_bytes));
    if (auto boot = ReadBootTime(); boot.has_value()) {
      out.push_back(One("process_start_time_seconds",
                        "Start time of the process since unix epoch in seconds.",
                        MetricType::Gauge, labels, *boot + stat->starttime_ticks / ticks));
    }
  }
  if (auto fds = CountOpenFds(); fds.has_value()) {
    out.push_back(One("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
                      labels, *fds));
  }
  if (rlimit limit{}; getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    out.push_back(One("process_max_fds", "Maximum number of open file descriptors.",
                      MetricType::Gauge, labels, static_cast<double>(limit.rlim_cur)));
  }
  return out;
}

}  // namespace optd::server
