// The update kernel alone, timed with CUDA events on the engine's four benchmark layouts, for
// comparing kernel versions in one GPU call (bench/cuda/kernel_lab.sh builds one binary per
// version from a kernel source file and runs them side by side).
//
// Note [Why a kernel lab beside the engine benchmark]: cuda_adamw_bench times ParamGroup::Step
// with the host clock (launch, descriptor copies and the final synchronize included), which is
// what a user gets. To tell two kernel versions apart, this program times only the launch
// sequence of the update kernel with CUDA events (median of many launches after warm-up), and
// prints a digest of every output byte after a fixed sequence of steps from fixed inputs: two
// versions that print the same digest computed the same bits on these layouts (the tight
// conformance run against bitsandbytes' golden vectors stays the proof of exactness).
//
// usage: kernel_lab [--rows all|fp32|bf16|tinyllama|many] [--iters 50] [--profile]
//   --profile: one warm-up launch and one launch per row (for Nsight Compute), no timing.
// The kernel source is compiled into this program (KERNEL_SOURCE, default the engine's own).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "optd/core/quant_maps.h"

#ifndef KERNEL_SOURCE
#define KERNEL_SOURCE "cuda/adamw_kernels.cu"
#endif
#include KERNEL_SOURCE

namespace {

namespace k = optd::core::internal::cuda;

#define CHECK_CUDA(expr)                                                                    \
  do {                                                                                      \
    cudaError_t _e = (expr);                                                                \
    if (_e != cudaSuccess) {                                                                \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorName(_e)); \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

constexpr int64_t kMin8bit = 4096;  // AdamWOptions::min_8bit_size's default

// Deterministic pseudo-random values in (-scale, scale), never zero.
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

// FNV-1a over 64-bit words, one per thread-stride partial, combined on the host.
__global__ void DigestKernel(const uint8_t* p, int64_t bytes, unsigned long long* out) {
  unsigned long long h = 1469598103934665603ull;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < bytes;
       i += int64_t{gridDim.x} * blockDim.x)
    h = (h ^ p[i]) * 1099511628211ull ^ static_cast<unsigned long long>(i);
  atomicXor(out, h);
}

struct Tensor {
  int64_t numel;
  int dtype;  // 0 fp32, 1 fp16, 2 bf16
};

struct Row {
  std::string name;
  std::vector<Tensor> tensors;
};

int Size(int dtype) { return dtype == 0 ? 4 : 2; }

std::vector<Row> Rows(const std::string& which) {
  std::vector<Row> rows;
  const int64_t m256 = int64_t{256} << 20;
  if (which == "all" || which == "fp32") rows.push_back({"1 x 256M fp32", {{m256, 0}}});
  if (which == "all" || which == "bf16") rows.push_back({"1 x 256M bf16", {{m256, 2}}});
  if (which == "all" || which == "tinyllama") {
    Row r{"TinyLlama-1.1B, 201 bf16 tensors", {}};
    r.tensors.push_back({32000 * 2048, 2});
    for (int i = 0; i < 22; ++i) {
      for (int64_t n : {2048 * 2048, 256 * 2048, 256 * 2048, 2048 * 2048, 5632 * 2048,
                        5632 * 2048, 2048 * 5632, 2048, 2048})
        r.tensors.push_back({n, 2});
    }
    r.tensors.push_back({2048, 2});
    r.tensors.push_back({32000 * 2048, 2});
    rows.push_back(r);
  }
  if (which == "all" || which == "many") {
    Row r{"2000 x 64K fp32", {}};
    for (int i = 0; i < 2000; ++i) r.tensors.push_back({65536, 0});
    rows.push_back(r);
  }
  return rows;
}

// Device memory of one row: every tensor's param, grad and states, and the segment list.
struct RowData {
  std::vector<void*> buffers;
  std::vector<k::Segment> segments;
  k::Segment* device_segments = nullptr;
  int64_t total_blocks = 0;
  double bytes = 0;  // the least a step moves through device memory
  std::vector<std::pair<const void*, int64_t>> outputs;

  void* Alloc(int64_t bytes_wanted) {
    void* p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, std::max<int64_t>(bytes_wanted, 16)));
    CHECK_CUDA(cudaMemset(p, 0, std::max<int64_t>(bytes_wanted, 16)));
    buffers.push_back(p);
    return p;
  }
  ~RowData() {
    for (void* p : buffers) cudaFree(p);
    cudaFree(device_segments);
  }
};

void Fill(void* p, int64_t n, int dtype, float scale, uint64_t seed) {
  FillKernel<<<4096, 256>>>(p, n, dtype, scale, seed);
  CHECK_CUDA(cudaGetLastError());
}

void Build(const Row& row, RowData* d) {
  int64_t first = 0;
  int t = 0;
  for (const Tensor& x : row.tensors) {
    k::Segment s;
    const int64_t blocks = (x.numel + 255) / 256;
    s.param = d->Alloc(x.numel * Size(x.dtype));
    void* grad = d->Alloc(x.numel * Size(x.dtype));
    s.grad = grad;
    Fill(s.param, x.numel, x.dtype, 0.1f, 1000 + t);
    Fill(grad, x.numel, x.dtype, 0.01f, 2000 + t);
    d->outputs.push_back({s.param, x.numel * Size(x.dtype)});
    s.eight_bit = x.numel >= kMin8bit;
    if (s.eight_bit) {
      s.state1 = static_cast<uint8_t*>(d->Alloc(x.numel));
      s.state2 = static_cast<uint8_t*>(d->Alloc(x.numel));
      s.absmax1 = static_cast<float*>(d->Alloc(blocks * 4));
      s.absmax2 = static_cast<float*>(d->Alloc(blocks * 4));
      d->outputs.push_back({s.state1, x.numel});
      d->outputs.push_back({s.state2, x.numel});
      d->outputs.push_back({s.absmax1, blocks * 4});
      d->outputs.push_back({s.absmax2, blocks * 4});
      d->bytes += x.numel * (3.0 * Size(x.dtype) + 4.0) + 16.0 * blocks;
    } else {
      s.m = static_cast<float*>(d->Alloc(x.numel * 4));
      s.v = static_cast<float*>(d->Alloc(x.numel * 4));
      d->outputs.push_back({s.m, x.numel * 4});
      d->outputs.push_back({s.v, x.numel * 4});
      d->bytes += x.numel * (3.0 * Size(x.dtype) + 16.0);
    }
    s.numel = x.numel;
    s.first_block = first;
    s.step = 1;
    s.param_dtype = static_cast<uint8_t>(x.dtype);
    s.grad_dtype = static_cast<uint8_t>(x.dtype);
    s.grad_aligned = 1;
    first += blocks;
    d->segments.push_back(s);
    ++t;
  }
  d->total_blocks = first;
  CHECK_CUDA(cudaMalloc(&d->device_segments, d->segments.size() * sizeof(k::Segment)));
}

void SetStep(RowData* d, int step) {
  for (k::Segment& s : d->segments) s.step = step;
  CHECK_CUDA(cudaMemcpy(d->device_segments, d->segments.data(),
                        d->segments.size() * sizeof(k::Segment), cudaMemcpyHostToDevice));
}

struct Tables {
  float* q1;
  float* q2;
  uint8_t* b1;
  uint8_t* b2;
  unsigned long long* nonfinite;
};

Tables MakeTables() {
  Tables t{};
  CHECK_CUDA(cudaMalloc(&t.q1, 1024));
  CHECK_CUDA(cudaMalloc(&t.q2, 1024));
  CHECK_CUDA(cudaMemcpy(t.q1, optd::core::kSignedQuantMap, 1024, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(t.q2, optd::core::kUnsignedQuantMap, 1024, cudaMemcpyHostToDevice));
  std::vector<uint8_t> b1(k::kSignedBuckets), b2(k::kUnsignedBuckets);
  if (k::BuildBuckets(optd::core::kSignedQuantMap, true, b1.data()) > k::kSignedBucketSteps ||
      k::BuildBuckets(optd::core::kUnsignedQuantMap, false, b2.data()) > k::kUnsignedBucketSteps) {
    std::fprintf(stderr, "bucket tables need more comparisons than the kernel makes\n");
    std::exit(1);
  }
  CHECK_CUDA(cudaMalloc(&t.b1, b1.size()));
  CHECK_CUDA(cudaMalloc(&t.b2, b2.size()));
  CHECK_CUDA(cudaMemcpy(t.b1, b1.data(), b1.size(), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(t.b2, b2.data(), b2.size(), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMalloc(&t.nonfinite, 8));
  CHECK_CUDA(cudaMemset(t.nonfinite, 0, 8));
  return t;
}

// Kernel versions up to 10 chose their warps per block from a host copy of the segments.
template <typename L>
void SetHostSegments(L& p, const k::Segment* segments) {
  if constexpr (requires { p.host_segments; }) p.host_segments = segments;
}

k::LaunchParams Params(const RowData& d, const Tables& t, int sm_count) {
  k::LaunchParams p;
  SetHostSegments(p, d.segments.data());
  p.segments = d.device_segments;
  p.num_segments = static_cast<int>(d.segments.size());
  p.total_blocks = d.total_blocks;
  p.qmap1 = t.q1;
  p.qmap2 = t.q2;
  p.buckets1 = t.b1;
  p.buckets2 = t.b2;
  p.sm_count = sm_count;
  p.nonfinite = t.nonfinite;
  p.hyper.weight_decay = 1e-2f;  // AdamWOptions' default
  return p;
}

unsigned long long Digest(const RowData& d) {
  unsigned long long* dev;
  CHECK_CUDA(cudaMalloc(&dev, 8));
  unsigned long long h = 0;
  for (const auto& [p, bytes] : d.outputs) {
    CHECK_CUDA(cudaMemset(dev, 0, 8));
    DigestKernel<<<1024, 256>>>(static_cast<const uint8_t*>(p), bytes, dev);
    unsigned long long part;
    CHECK_CUDA(cudaMemcpy(&part, dev, 8, cudaMemcpyDeviceToHost));
    h = (h ^ part) * 1099511628211ull;
  }
  cudaFree(dev);
  return h;
}

double CopyBandwidth() {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  Fill(a, bytes / 4, 0, 1.0f, 1);
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  std::vector<float> ms;
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
  std::sort(ms.begin(), ms.end());
  return 2.0 * bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  std::string which = "all";
  int iters = 50;
  bool profile = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--rows") == 0 && i + 1 < argc) which = argv[++i];
    else if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc) iters = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--profile") == 0) profile = true;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const Tables tables = MakeTables();
  const double copy_gbs = profile ? 0 : CopyBandwidth();
  if (!profile)
    std::printf("kernel %s on %s; D2D copy %.0f GB/s (1 GiB, read+write)\n", KERNEL_SOURCE,
                prop.name, copy_gbs);
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  for (const Row& row : Rows(which)) {
    RowData d;
    Build(row, &d);
    const k::LaunchParams p = Params(d, tables, prop.multiProcessorCount);
    // Steps 1..5 from fixed inputs (new gradients each step), then the digest.
    for (int step = 1; step <= 5; ++step) {
      SetStep(&d, step);
      CHECK_CUDA(k::LaunchAdamWUpdate(p, nullptr));
      CHECK_CUDA(cudaDeviceSynchronize());
      int t = 0;
      for (const k::Segment& s : d.segments)
        Fill(const_cast<void*>(s.grad), s.numel, s.grad_dtype, 0.01f, 7000 + 100 * step + t++);
      if (profile) break;
    }
    if (profile) {
      CHECK_CUDA(k::LaunchAdamWUpdate(p, nullptr));
      CHECK_CUDA(cudaDeviceSynchronize());
      continue;
    }
    const unsigned long long digest = Digest(d);
    SetStep(&d, 10);
    std::vector<float> ms;
    for (int i = 0; i < iters + 5; ++i) {
      CHECK_CUDA(cudaEventRecord(e0));
      CHECK_CUDA(k::LaunchAdamWUpdate(p, nullptr));
      CHECK_CUDA(cudaEventRecord(e1));
      CHECK_CUDA(cudaEventSynchronize(e1));
      float t;
      CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 5) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    const double floor_ms = d.bytes / (copy_gbs * 1e9) * 1e3;
    std::printf("%-34s kernel %8.3f ms (min %.3f, max %.3f)  floor %7.3f ms  %5.1f%% of floor  "
                "digest %016llx\n",
                row.name.c_str(), med, ms.front(), ms.back(), floor_ms, 100.0 * floor_ms / med,
                digest);
  }
  return 0;
}
