// The standard process_* metrics of a Prometheus client (the names every dashboard and alert
// expects), read from Linux's /proc/self at each scrape:
//   process_cpu_seconds_total        user + system CPU time
//   process_resident_memory_bytes    resident set size
//   process_virtual_memory_bytes     virtual memory size
//   process_open_fds, process_max_fds
//   process_start_time_seconds       since the Unix epoch
// A figure that cannot be read (no /proc) is left out rather than reported as 0.
#pragma once

#include <vector>

#include "prometheus/labels.h"
#include "prometheus/metric_family.h"

namespace optd::server {

// Thread safety: thread-safe (reads files, keeps no state).
std::vector<prometheus::MetricFamily> CollectProcessMetrics(const prometheus::Labels& labels);

}  // namespace optd::server
