// CPU engine bandwidth: one optimizer step over a 64M-element fp32 group and a 64M-element
// bf16 group, beside a large multi-threaded memcpy measured in the same run.
//
//   cpu_engine_bench [--elements N] [--threads T] [--steps S]
//
// Timings are the best of S steps (and of S memcpys): on a shared machine the best run is the
// one least disturbed by other processes. "cpu share" is the process CPU time over wall time
// times threads during the timed steps; well below 100% means the machine was busy.
// Bytes moved per element (issue 2): fp32 16 (param read+write 8, grad 4, two 8-bit states read
// and written 4), bf16 10. memcpy counts bytes read plus bytes written, the same convention.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "optd/core/engine.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Best(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

double ProcessCpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

// Fills with pseudo-random values in [-scale, scale) (a fast LCG; statistics do not matter,
// only that the codes and the search paths vary like real data).
void FillFloat(float* p, int64_t n, float scale, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 1;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    p[i] = scale * (static_cast<float>(s >> 8) * (1.0f / 8388608.0f) - 1.0f);
  }
}

void FillBf16(uint16_t* p, int64_t n, float scale, uint32_t seed) {
  std::vector<float> tmp(std::min<int64_t>(n, 1 << 20));
  for (int64_t i = 0; i < n; i += static_cast<int64_t>(tmp.size())) {
    const int64_t m = std::min<int64_t>(tmp.size(), n - i);
    FillFloat(tmp.data(), m, scale, seed + static_cast<uint32_t>(i));
    for (int64_t j = 0; j < m; ++j) {
      uint32_t u;
      std::memcpy(&u, &tmp[j], 4);
      p[i + j] = static_cast<uint16_t>(u >> 16);
    }
  }
}

// Multi-threaded memcpy of `bytes`, best of `reps`; returns (read + written) bytes per second.
double MemcpyBandwidth(int64_t bytes, int threads, int reps) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  std::vector<double> times;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    const int64_t chunk = (bytes + threads - 1) / threads;
    for (int t = 0; t < threads; ++t) {
      const int64_t b = t * chunk, e = std::min(bytes, b + chunk);
      if (b >= e) break;
      pool.emplace_back([&, b, e] { std::memcpy(dst.data() + b, src.data() + b, e - b); });
    }
    for (auto& th : pool) th.join();
    if (r > 0) times.push_back(Seconds(t0, Clock::now()));  // the first run faults pages in
  }
  return 2.0 * bytes / Best(times);
}

struct Result {
  double seconds = 0;
  double bandwidth = 0;
  double cpu_share = 0;
};

Result BenchGroup(optd::core::Engine& engine, optd::core::DType dtype, int64_t n, int steps,
                  int threads) {
  optd::core::GroupSpec spec;
  spec.tensors.push_back({"w", dtype, {n}});
  auto group = engine.CreateGroup(spec);
  if (!group.ok()) {
    std::fprintf(stderr, "CreateGroup: %s\n", group.status().ToString().c_str());
    std::exit(1);
  }
  optd::core::TensorView param = (*group)->ParamStorage(0);
  std::vector<float> grad32;
  std::vector<uint16_t> grad16;
  optd::core::TensorGradient g{0, {}};
  if (dtype == optd::core::DType::kFloat32) {
    FillFloat(static_cast<float*>(param.data), n, 1.0f, 1);
    grad32.resize(n);
    FillFloat(grad32.data(), n, 1e-2f, 2);
    g.grad = {grad32.data(), dtype, n};
  } else {
    FillBf16(static_cast<uint16_t*>(param.data), n, 1.0f, 1);
    grad16.resize(n);
    FillBf16(grad16.data(), n, 1e-2f, 2);
    g.grad = {grad16.data(), dtype, n};
  }
  // Two warm-up steps: page faults, then codes that are no longer all zero.
  for (int i = 0; i < 2; ++i) {
    if (absl::Status s = (*group)->Step({&g, 1}, {}); !s.ok()) {
      std::fprintf(stderr, "Step: %s\n", s.ToString().c_str());
      std::exit(1);
    }
  }
  std::vector<double> times;
  const double cpu0 = ProcessCpuSeconds();
  const auto wall0 = Clock::now();
  for (int i = 0; i < steps; ++i) {
    const auto t0 = Clock::now();
    if (absl::Status s = (*group)->Step({&g, 1}, {}); !s.ok()) std::exit(1);
    times.push_back(Seconds(t0, Clock::now()));
  }
  Result r;
  r.cpu_share = (ProcessCpuSeconds() - cpu0) / (Seconds(wall0, Clock::now()) * threads);
  r.seconds = Best(times);
  const double bytes_per_element = dtype == optd::core::DType::kFloat32 ? 16 : 10;
  r.bandwidth = bytes_per_element * n / r.seconds;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t elements = int64_t{64} << 20;
  int threads = 0;
  int steps = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--elements" && i + 1 < argc) {
      elements = std::atoll(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--steps" && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: cpu_engine_bench [--elements N] [--threads T] [--steps S]\n");
      return 2;
    }
  }
  if (elements <= 0 || steps <= 0 || threads < 0) return 2;
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int used = threads == 0 ? hw : threads;

  optd::core::EngineOptions options;
  options.backend = optd::core::Backend::kCpu;
  options.num_threads = used;
  auto engine = optd::core::CreateEngine(options);
  if (!engine.ok()) return 1;

  // memcpy of the fp32 parameter size, measured before and after the steps; the better counts.
  const double copy_before = MemcpyBandwidth(elements * 4, used, steps);
  Result results[2];
  const optd::core::DType dtypes[2] = {optd::core::DType::kFloat32,
                                       optd::core::DType::kBFloat16};
  for (int i = 0; i < 2; ++i) results[i] = BenchGroup(**engine, dtypes[i], elements, steps, used);
  const double copy_bw = std::max(copy_before, MemcpyBandwidth(elements * 4, used, steps));
  std::printf("cpu_engine_bench: %lld elements, %d threads (%d hardware), best of %d steps\n",
              static_cast<long long>(elements), used, hw, steps);
  std::printf("%-24s %10s %10s %11s %10s\n", "workload", "ms/step", "GB/s", "of memcpy",
              "cpu share");
  std::printf("%-24s %10s %10.2f %10.1f%% %10s\n", "memcpy (read+write)", "-", copy_bw / 1e9,
              100.0, "-");
  for (int i = 0; i < 2; ++i) {
    const Result& r = results[i];
    const char* name = i == 0 ? "step fp32 (16 B/elem)" : "step bf16 (10 B/elem)";
    std::printf("%-24s %10.2f %10.2f %10.1f%% %9.0f%%\n", name, r.seconds * 1e3,
                r.bandwidth / 1e9, 100.0 * r.bandwidth / copy_bw, 100.0 * r.cpu_share);
  }
  return 0;
}
