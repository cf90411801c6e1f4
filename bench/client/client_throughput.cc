// Client data-path throughput over loopback: upload, pull and step (gradients up, weights down)
// of one large fp32 tensor through optd_client, beside a memcpy of the same bytes measured in
// the same run. The server is started from --server (the built optd) on 127.0.0.1:0.
//
//   client_throughput --server=build/server/optd [--elements=67108864] [--repeats=3]
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "optd/client/client.h"
#include "tests/client/server_process.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

template <typename Fn>
double Best(int repeats, Fn fn) {
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!fn()) return -1;
    best = std::min(best, Seconds(t0, std::chrono::steady_clock::now()));
  }
  return best;
}

std::string Flag(int argc, char** argv, const std::string& name, const std::string& def) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  }
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace optd::client;
  const std::string server_bin = Flag(argc, argv, "server", optd::testing::ServerBinary());
  const int64_t n = std::stoll(Flag(argc, argv, "elements", "67108864"));
  const int repeats = std::stoi(Flag(argc, argv, "repeats", "3"));
  if (server_bin.empty()) {
    std::fprintf(stderr, "usage: client_throughput --server=PATH_TO_OPTD\n");
    return 2;
  }
  auto server = optd::testing::ServerProcess::Start(
      server_bin, optd::testing::MakeTempDir("optd-client-bench"));
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<optd::testing::ServerProcess> owner(*server);
  auto client = Client::Create((*server)->target());
  if (!client.ok()) return 1;
  Client& c = **client;
  std::vector<float> w(n, 0.5f), g(n, 1e-3f), out(n);
  const double bytes = static_cast<double>(n) * sizeof(float);

  const double memcpy_s = Best(repeats, [&] {
    std::memcpy(out.data(), w.data(), n * sizeof(float));
    return true;
  });
  if (!c.CreateGroup("bench", {{"t", DType::kFloat32, {n}}}).ok()) return 1;
  const double upload_s = Best(repeats, [&] {
    return c.UploadWeights("bench", {{"t", DType::kFloat32, w.data(), n}}).ok();
  });
  const double pull_s = Best(repeats, [&] {
    return c.PullWeights("bench", {{"t", DType::kFloat32, out.data(), n}}).ok();
  });
  int64_t step = 0;
  const double step_s = Best(repeats, [&] {
    auto r = c.Step("bench", ++step, {{"t", DType::kFloat32, g.data(), n}},
                    {{"t", DType::kFloat32, out.data(), n}});
    if (!r.ok()) std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
    return r.ok();
  });
  StepOptions none;
  none.weights = WeightsReturn::kNone;
  const double step_none_s = Best(repeats, [&] {
    return c.Step("bench", ++step, {{"t", DType::kFloat32, g.data(), n}}, {}, none).ok();
  });
  std::printf("tensor: %lld fp32 elements (%.0f MiB), best of %d, loopback, CPU backend\n",
              static_cast<long long>(n), bytes / (1 << 20), repeats);
  std::printf("memcpy (same run)           %8.2f GB/s\n", bytes / memcpy_s / 1e9);
  std::printf("UploadWeights               %8.2f GB/s\n", bytes / upload_s / 1e9);
  std::printf("PullWeights                 %8.2f GB/s\n", bytes / pull_s / 1e9);
  std::printf("Step, weights back          %8.2f GB/s each way (%.1f ms)\n",
              bytes / step_s / 1e9, step_s * 1e3);
  std::printf("Step, no weights back       %8.2f GB/s (%.1f ms)\n", bytes / step_none_s / 1e9,
              step_none_s * 1e3);
  return 0;
}
