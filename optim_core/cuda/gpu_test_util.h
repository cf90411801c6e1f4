// Helpers of the GPU tests: device detection (tests skip without a GPU), random host tensors in
// any dtype, and running the same steps through an engine.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "internal/float_convert.h"
#include "optd/core/engine.h"

namespace optd::core::cuda_test {

// Empty when a device is usable, else the reason to skip.
inline std::string NoDeviceReason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("no CUDA device: cudaGetDeviceCount failed with ") + cudaGetErrorName(err);
  }
  if (n == 0) return "no CUDA device: the driver reports 0 devices";
  return "";
}

#define OPTD_SKIP_WITHOUT_GPU()                                              \
  do {                                                                       \
    const std::string _reason = ::optd::core::cuda_test::NoDeviceReason();   \
    if (!_reason.empty()) GTEST_SKIP() << _reason;                           \
  } while (0)

// Raw bytes of `values` converted to `dtype`.
inline std::vector<uint8_t> ToBytes(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> out(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kFloat32) {
      std::memcpy(out.data() + 4 * i, &values[i], 4);
    } else {
      const uint16_t h = dtype == DType::kFloat16 ? internal::FloatToHalf(values[i])
                                                  : internal::FloatToBFloat16(values[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

inline std::vector<float> ToFloats(const std::vector<uint8_t>& bytes, DType dtype) {
  const size_t n = bytes.size() / DTypeSize(dtype);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (dtype == DType::kFloat32) {
      std::memcpy(&out[i], bytes.data() + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      out[i] = dtype == DType::kFloat16 ? internal::HalfToFloat(h) : internal::BFloat16ToFloat(h);
    }
  }
  return out;
}

// Normal values of scale `sigma`, with a few outliers (x100) and zeros so blocks differ.
inline std::vector<float> RandomValues(int64_t n, float sigma, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::uniform_int_distribution<int> pick(0, 999);
  std::vector<float> v(n);
  for (auto& x : v) {
    const int r = pick(rng);
    x = r == 0 ? normal(rng) * 100.0f : (r == 1 ? 0.0f : normal(rng));
  }
  return v;
}

inline std::unique_ptr<Engine> MakeEngine(Backend backend, int64_t budget = 0) {
  EngineOptions o;
  o.backend = backend;
  o.device_budget_bytes = budget;
  absl::StatusOr<std::unique_ptr<Engine>> e = CreateEngine(o);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

// Device copy of host bytes, freed by the owner.
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(const std::vector<uint8_t>& bytes) {
    EXPECT_EQ(cudaMalloc(&ptr, bytes.size() + 16), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ptr, bytes.data(), bytes.size(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

}  // namespace optd::core::cuda_test
