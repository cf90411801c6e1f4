// Times the CUDA engine's Step on the layouts of issue 3 and prints each beside its bandwidth
// floor, with the device-to-device copy bandwidth measured in the same run; then paging (budget a
// quarter of the states) against the bus bandwidth per direction, and managed-memory prefetch
// against explicit pinned copies, both directions.
//
// usage: cuda_adamw_bench [--rows all|single|tinyllama|many|paging|bus] [--iters 20]
// Step() is synchronous (it ends with a stream synchronize), so a step is timed with the host
// clock around the call: launch overhead and the final synchronize are included. Copies are
// timed with CUDA events.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "optd/core/engine.h"

namespace {

using optd::core::Backend;
using optd::core::DType;
using optd::core::DTypeSize;

#define CHECK_CUDA(expr)                                                               \
  do {                                                                                 \
    cudaError_t _e = (expr);                                                           \
    if (_e != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr,                \
                   cudaGetErrorName(_e));                                              \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

// Deterministic pseudo-random fill (never zeros: zeros can run faster than real data).
__global__ void FillKernel(void* out, int64_t n, int dtype, float scale, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint64_t x = (static_cast<uint64_t>(i) + seed) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    const float u = (static_cast<float>(x >> 40) / 16777216.0f) * 2.0f - 1.0f;
    const float v = (u == 0.0f ? 0.5f : u) * scale;
    if (dtype == 0) static_cast<float*>(out)[i] = v;
    else if (dtype == 1) static_cast<__half*>(out)[i] = __float2half_rn(v);
    else static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v);
  }
}

void Fill(void* p, int64_t n, DType t, float scale, uint64_t seed) {
  FillKernel<<<4096, 256>>>(p, n, static_cast<int>(t), scale, seed);
  CHECK_CUDA(cudaGetLastError());
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// GB/s of a D2D copy of 1 GiB, counting bytes read + written.
double CopyBandwidth() {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  Fill(a, bytes / 4, DType::kFloat32, 1.0f, 1);
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  std::vector<double> ms;
  for (int i = 0; i < 23; ++i) {
    CHECK_CUDA(cudaEventRecord(e0));
    CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    CHECK_CUDA(cudaEventRecord(e1));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float t;
    CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
    if (i >= 3) ms.push_back(t);
  }
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (Median(ms) * 1e-3) / 1e9;
}

struct Layout {
  std::string name;
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors;
  DType dtype;
};

Layout TinyLlama() {
  Layout l{"TinyLlama-1.1B layout, 201 bf16 tensors", {}, DType::kBFloat16};
  l.tensors.push_back({"embed", {32000, 2048}});
  for (int i = 0; i < 22; ++i) {
    const std::string p = "layer" + std::to_string(i) + ".";
    l.tensors.push_back({p + "q", {2048, 2048}});
    l.tensors.push_back({p + "k", {256, 2048}});
    l.tensors.push_back({p + "v", {256, 2048}});
    l.tensors.push_back({p + "o", {2048, 2048}});
    l.tensors.push_back({p + "gate", {5632, 2048}});
    l.tensors.push_back({p + "up", {5632, 2048}});
    l.tensors.push_back({p + "down", {2048, 5632}});
    l.tensors.push_back({p + "input_norm", {2048}});
    l.tensors.push_back({p + "post_norm", {2048}});
  }
  l.tensors.push_back({"final_norm", {2048}});
  l.tensors.push_back({"lm_head", {32000, 2048}});
  return l;
}

struct StepResult {
  double ms = 0;
  double bytes = 0;          // minimum bytes a step must move through device memory
  double paged_in = 0, paged_out = 0;  // per step
  double state_bytes = 0;
  double page_wait_ms = 0;
};

// Bytes a step must move per element: p read+write, g read, states read+write.
double StepBytes(int64_t numel, DType p, int64_t min8) {
  const double ps = DTypeSize(p);
  if (numel < min8) return numel * (2 * ps + ps + 16.0);
  return numel * (2 * ps + ps + 4.0) + 16.0 * ((numel + 255) / 256);
}

StepResult TimeLayout(const Layout& l, int iters, int64_t budget) {
  optd::core::EngineOptions eo;
  eo.backend = Backend::kCuda;
  eo.device_budget_bytes = budget;
  auto engine = optd::core::CreateEngine(eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "CreateEngine: %s\n", engine.status().ToString().c_str());
    std::exit(1);
  }
  optd::core::GroupSpec spec;
  for (const auto& [name, shape] : l.tensors) spec.tensors.push_back({name, l.dtype, shape});
  auto group = (*engine)->CreateGroup(spec);
  if (!group.ok()) {
    std::fprintf(stderr, "CreateGroup: %s\n", group.status().ToString().c_str());
    std::exit(1);
  }
  StepResult r;
  std::vector<void*> grads;
  std::vector<optd::core::TensorGradient> tg;
  for (int t = 0; t < (*group)->num_tensors(); ++t) {
    const optd::core::TensorView p = (*group)->ParamStorage(t);
    Fill(p.data, p.numel, l.dtype, 0.1f, 1000 + t);
    void* g = nullptr;
    CHECK_CUDA(cudaMalloc(&g, p.numel * DTypeSize(l.dtype)));
    Fill(g, p.numel, l.dtype, 0.01f, 2000 + t);
    grads.push_back(g);
    tg.push_back({t, {g, l.dtype, p.numel, optd::core::MemoryKind::kDevice}});
    r.bytes += StepBytes(p.numel, l.dtype, spec.options.min_8bit_size);
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  r.state_bytes = static_cast<double>((*engine)->Stats().state_bytes_device +
                                      (*engine)->Stats().state_bytes_host);
  std::vector<double> ms;
  optd::core::EngineStats before{};
  for (int i = 0; i < iters + 3; ++i) {
    if (i == 3) before = (*engine)->Stats();
    const auto t0 = std::chrono::steady_clock::now();
    const absl::Status s = (*group)->Step(tg, {});
    const auto t1 = std::chrono::steady_clock::now();
    if (!s.ok()) {
      std::fprintf(stderr, "Step: %s\n", s.ToString().c_str());
      std::exit(1);
    }
    if (i >= 3) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  const optd::core::EngineStats after = (*engine)->Stats();
  r.ms = Median(ms);
  r.paged_in = double(after.paged_bytes_to_device - before.paged_bytes_to_device) / iters;
  r.paged_out = double(after.paged_bytes_to_host - before.paged_bytes_to_host) / iters;
  r.page_wait_ms = (after.page_wait_seconds - before.page_wait_seconds) * 1e3 / iters;
  for (void* g : grads) cudaFree(g);
  return r;
}

// GB/s of explicit pinned copies and of managed-memory prefetch, each direction.
struct Bus {
  double pinned_h2d = 0, pinned_d2h = 0, managed_h2d = 0, managed_d2h = 0;
};

Bus MeasureBus(size_t bytes) {
  Bus b;
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  auto timed = [&](auto&& op) {
    std::vector<double> ms;
    for (int i = 0; i < 8; ++i) {
      CHECK_CUDA(cudaEventRecord(e0, s));
      op();
      CHECK_CUDA(cudaEventRecord(e1, s));
      CHECK_CUDA(cudaEventSynchronize(e1));
      float t;
      CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 2) ms.push_back(t);
    }
    return bytes / (Median(ms) * 1e-3) / 1e9;
  };
  void *host, *dev;
  CHECK_CUDA(cudaMallocHost(&host, bytes));
  std::memset(host, 1, bytes);
  CHECK_CUDA(cudaMalloc(&dev, bytes));
  b.pinned_h2d = timed([&] { CHECK_CUDA(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, s)); });
  b.pinned_d2h = timed([&] { CHECK_CUDA(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s)); });
  cudaFreeHost(host);
  cudaFree(dev);
  // Managed memory: never more than the card has free (shared machines can hang otherwise).
  size_t free_b = 0, total_b = 0;
  CHECK_CUDA(cudaMemGetInfo(&free_b, &total_b));
  if (bytes * 2 < free_b) {
    void* m;
    CHECK_CUDA(cudaMallocManaged(&m, bytes));
    std::memset(m, 1, bytes);
    int device = 0;
    CHECK_CUDA(cudaGetDevice(&device));
    cudaMemLocation to_dev{};
    to_dev.type = cudaMemLocationTypeDevice;
    to_dev.id = device;
    cudaMemLocation to_host{};
    to_host.type = cudaMemLocationTypeHost;
    to_host.id = 0;
    std::vector<double> h2d, d2h;
    for (int i = 0; i < 8; ++i) {
      float t;
      CHECK_CUDA(cudaEventRecord(e0, s));
      CHECK_CUDA(cudaMemPrefetchAsync(m, bytes, to_dev, 0, s));
      CHECK_CUDA(cudaEventRecord(e1, s));
      CHECK_CUDA(cudaEventSynchronize(e1));
      CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 2) h2d.push_back(t);
      CHECK_CUDA(cudaEventRecord(e0, s));
      CHECK_CUDA(cudaMemPrefetchAsync(m, bytes, to_host, 0, s));
      CHECK_CUDA(cudaEventRecord(e1, s));
      CHECK_CUDA(cudaEventSynchronize(e1));
      CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 2) d2h.push_back(t);
    }
    b.managed_h2d = bytes / (Median(h2d) * 1e-3) / 1e9;
    b.managed_d2h = bytes / (Median(d2h) * 1e-3) / 1e9;
    cudaFree(m);
  }
  cudaStreamDestroy(s);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::string rows = "all";
  int iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--rows") == 0) rows = argv[i + 1];
    else if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double copy_gbs = CopyBandwidth();
  std::printf("device: %s, D2D copy bandwidth (read+write, 1 GiB): %.0f GB/s\n", prop.name,
              copy_gbs);
  std::printf("%-44s %10s %10s %12s %10s\n", "group", "ms/step", "floor ms", "of floor", "GB/s");
  auto report = [&](const std::string& name, const StepResult& r) {
    const double floor_ms = r.bytes / (copy_gbs * 1e9) * 1e3;
    std::printf("%-44s %10.3f %10.3f %11.1f%% %10.0f\n", name.c_str(), r.ms, floor_ms,
                100.0 * floor_ms / r.ms, r.bytes / (r.ms * 1e-3) / 1e9);
  };
  const int64_t m256 = int64_t{256} << 20;
  if (rows == "all" || rows == "single") {
    report("1 tensor, 256M fp32", TimeLayout({"", {{"w", {m256}}}, DType::kFloat32}, iters, 0));
    report("1 tensor, 256M bf16", TimeLayout({"", {{"w", {m256}}}, DType::kBFloat16}, iters, 0));
  }
  if (rows == "all" || rows == "tinyllama") {
    const Layout l = TinyLlama();
    report(l.name, TimeLayout(l, iters, 0));
  }
  if (rows == "all" || rows == "many") {
    Layout l{"2000 tensors x 64K fp32", {}, DType::kFloat32};
    for (int i = 0; i < 2000; ++i) l.tensors.push_back({"t" + std::to_string(i), {65536}});
    report(l.name, TimeLayout(l, iters, 0));
  }
  if (rows == "all" || rows == "bus" || rows == "paging") {
    const Bus b = MeasureBus(size_t{1} << 30);
    std::printf("bus, 1 GiB: pinned H2D %.1f GB/s, pinned D2H %.1f GB/s, managed prefetch H2D "
                "%.1f GB/s, managed prefetch D2H %.1f GB/s\n",
                b.pinned_h2d, b.pinned_d2h, b.managed_h2d, b.managed_d2h);
    if (rows != "bus") {
      Layout l = TinyLlama();
      // States of the layout (8-bit codes + scales; norms fp32): the budget is a quarter.
      int64_t states = 0;
      for (const auto& [name, shape] : l.tensors) {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        states += n < 4096 ? 8 * n : 2 * n + 8 * ((n + 255) / 256);
      }
      const StepResult r = TimeLayout(l, std::max(5, iters / 2), states / 4);
      const double in_ms = r.paged_in / (b.pinned_h2d * 1e9) * 1e3;
      const double out_ms = r.paged_out / (b.pinned_d2h * 1e9) * 1e3;
      const double bus_ms = std::max(in_ms, out_ms);
      std::printf("paging, TinyLlama, budget %.0f MB = 1/4 of %.0f MB of states: %.2f ms/step; "
                  "moved %.0f MB in (%.2f ms at pinned H2D) and %.0f MB out (%.2f ms at pinned "
                  "D2H) per step; bus floor %.2f ms (directions overlap); %.2fx the floor; page "
                  "wait %.2f ms/step\n",
                  states / 4 / 1e6, states / 1e6, r.ms, r.paged_in / 1e6, in_ms,
                  r.paged_out / 1e6, out_ms, bus_ms, r.ms / bus_ms, r.page_wait_ms);
    }
  }
  return 0;
}
