// A trainer's program that uses the installed C++ client: creates a group of one tensor,
// uploads its weights, steps once and checks that the server changed them.
// Usage: consumer TARGET            exit 0 when the step came back with new weights
//        consumer TARGET --closed   exit 0 when the first call fails cleanly with Unavailable
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "optd/client/client.h"

namespace oc = optd::client;

int Fail(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "consumer: %s: %s\n", what, status.ToString().c_str());
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: consumer TARGET [--closed]\n");
    return 2;
  }
  const std::string target = argv[1];
  const bool closed = argc > 2 && std::strcmp(argv[2], "--closed") == 0;
  oc::ClientOptions options;
  options.timeout_ms = 10000;
  auto client = oc::Client::Create(target, options);
  if (!client.ok()) return Fail("Create", client.status());

  if (closed) {
    auto groups = (*client)->ListGroups();
    if (groups.ok() || groups.status().code() != absl::StatusCode::kUnavailable) {
      std::fprintf(stderr, "consumer: expected Unavailable, got %s\n",
                   groups.status().ToString().c_str());
      return 1;
    }
    std::printf("consumer: closed port: %s\n", groups.status().ToString().c_str());
    return 0;
  }

  const std::string group = "consumer-" + std::to_string(static_cast<long>(getpid()));
  constexpr int64_t kN = 1000;
  oc::TensorSpec spec{"w", oc::DType::kFloat32, {kN}};
  oc::GroupOptions group_options;
  group_options.hyperparameters.lr = 0.01f;
  if (auto info = (*client)->CreateGroup(group, {spec}, group_options); !info.ok()) {
    return Fail("CreateGroup", info.status());
  }
  std::vector<float> weights(kN, 1.0f), gradients(kN, 0.5f), updated(kN, 0.0f);
  oc::ConstBuffer w{"w", oc::DType::kFloat32, weights.data(), kN};
  if (auto n = (*client)->UploadWeights(group, {&w, 1}); !n.ok() || *n != kN) {
    return Fail("UploadWeights", n.ok() ? absl::InternalError("short upload") : n.status());
  }
  oc::ConstBuffer g{"w", oc::DType::kFloat32, gradients.data(), kN};
  oc::MutableBuffer out{"w", oc::DType::kFloat32, updated.data(), kN};
  auto step = (*client)->Step(group, 1, {&g, 1}, {&out, 1});
  if (!step.ok()) return Fail("Step", step.status());
  // AdamW's first step moves every element by about lr against the gradient's sign.
  for (int64_t i = 0; i < kN; ++i) {
    if (!(updated[i] < 1.0f && updated[i] > 0.9f)) {
      std::fprintf(stderr, "consumer: weight %lld is %g after one step\n",
                   static_cast<long long>(i), updated[i]);
      return 1;
    }
  }
  if (absl::Status s = (*client)->DeleteGroup(group); !s.ok()) return Fail("DeleteGroup", s);
  std::printf("consumer: version %lld, w[0] %.6f\n", static_cast<long long>(step->version),
              updated[0]);
  return 0;
}
