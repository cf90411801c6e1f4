// Server benchmark: (1) payload throughput through the real optd binary on loopback beside plain
// loopback TCP measured in the same run, with jemalloc and with glibc malloc; (2) bytes per
// parameter for the TinyLlama-1.1B layout (optionally scaled down), read from the server's
// /metrics and /proc.
//
//   optd_server_bench [--mib=512] [--repeats=3] [--tinyllama_scale=2] [--skip_wire]
//                     [--skip_memory]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "grpcpp/grpcpp.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/metrics_http_get.h"

ABSL_FLAG(int, mib, 512, "tensor size of the wire benchmark, MiB");
ABSL_FLAG(int, repeats, 3, "runs per figure; the median is reported");
ABSL_FLAG(int, tinyllama_scale, 2, "divide every TinyLlama dimension by this (1 = full size)");
ABSL_FLAG(bool, skip_wire, false, "skip the throughput table");
ABSL_FLAG(bool, skip_memory, false, "skip the memory table");
ABSL_FLAG(std::string, server_binary, OPTD_SERVER_BINARY, "the optd binary (jemalloc)");
ABSL_FLAG(std::string, glibc_server_binary, OPTD_SERVER_GLIBC_BINARY,
          "the same server linked without jemalloc");
ABSL_FLAG(std::string, backend, "cpu", "server backend: cpu or cuda");
ABSL_FLAG(int64_t, chunk_bytes, int64_t{4} << 20, "payload bytes per message");

namespace {

using Clock = std::chrono::steady_clock;
using optd::v1::Optimizer;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The optd binary as a child process.
struct Child {
  pid_t pid = -1;
  int port = 0;
  int metrics_port = 0;
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGTERM);
      int st;
      waitpid(pid, &st, 0);
    }
  }
};

int ReadInt(const std::string& path) {
  std::ifstream in(path);
  int v = 0;
  in >> v;
  return v;
}

std::unique_ptr<Child> StartServer(const std::string& binary) {
  char tmpl[] = "/tmp/optd-bench-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  auto c = std::make_unique<Child>();
  std::vector<std::string> args = {binary,
                                   "--listen=127.0.0.1:0",
                                   "--metrics_listen=127.0.0.1:0",
                                   "--backend=" + absl::GetFlag(FLAGS_backend),
                                   "--max_message_bytes=67108864",
                                   "--chunk_bytes=" + std::to_string(absl::GetFlag(FLAGS_chunk_bytes)),
                                   "--port_file=" + dir + "/port",
                                   "--metrics_port_file=" + dir + "/mport"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  c->pid = fork();
  if (c->pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  for (int i = 0; i < 600 && c->port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    c->port = ReadInt(dir + "/port");
  }
  c->metrics_port = ReadInt(dir + "/mport");
  return c;
}

std::unique_ptr<Optimizer::Stub> Stub(int port) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return Optimizer::NewStub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                                      grpc::InsecureChannelCredentials(), args));
}

int64_t ProcStatusKb(pid_t pid, const char* key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key));
  }
  return -1;
}

// CPU seconds (user + system, all threads) the process has used so far.
double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream fields(text.substr(text.rfind(')') + 2));  // after "pid (comm) "
  std::string f;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14 || i == 15) ticks += std::atof(f.c_str());  // utime, stime
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

void ResetPeakRss(pid_t pid) {
  std::ofstream out("/proc/" + std::to_string(pid) + "/clear_refs");
  out << "5";
}

// The /metrics body, or "" when the scrape fails (the figure then prints as missing).
std::string HttpGet(int port, const std::string& path) {
  auto body = optd::server::HttpGetLoopback(port, path);
  return body.ok() ? *body : "";
}

double Metric(const std::string& text, const std::string& name, const std::string& label) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + "{", 0) == 0 && line.find(label) != std::string::npos) {
      return std::atof(line.c_str() + line.rfind(' ') + 1);
    }
  }
  return -1;
}

// A cold source buffer: larger than the caches, touched once.
std::vector<uint8_t> Buffer(size_t bytes, uint32_t seed) {
  std::vector<uint8_t> b(bytes);
  std::mt19937 rng(seed);
  uint32_t* p = reinterpret_cast<uint32_t*>(b.data());
  // Small finite floats (bit patterns of values in [-1, 1)) so the optimizer sees real numbers.
  std::uniform_real_distribution<float> d(-1e-3f, 1e-3f);
  for (size_t i = 0; i < bytes / 4; ++i) {
    const float f = d(rng);
    std::memcpy(&p[i], &f, 4);
  }
  return b;
}

// Plain loopback TCP: one thread writes `src` in 1 MiB writes, this one receives into `dst`.
double TcpLoopback(const std::vector<uint8_t>& src, std::vector<uint8_t>& dst) {
  const int ls = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &len);
  listen(ls, 1);
  const auto t0 = Clock::now();
  std::thread sender([&] {
    const int s = socket(AF_INET, SOCK_STREAM, 0);
    connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    size_t off = 0;
    while (off < src.size()) {
      const ssize_t n = send(s, src.data() + off, std::min<size_t>(1 << 20, src.size() - off), 0);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    close(s);
  });
  const int r = accept(ls, nullptr, nullptr);
  size_t got = 0;
  while (got < dst.size()) {
    const ssize_t n = recv(r, dst.data() + got, dst.size() - got, 0);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  const auto t1 = Clock::now();
  sender.join();
  close(r);
  close(ls);
  return static_cast<double>(got) / Seconds(t0, t1) / 1e9;
}

bool CreateGroup(Optimizer::Stub& stub, const std::string& name,
                 const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors,
                 optd::v1::DType dtype) {
  grpc::ClientContext ctx;
  optd::v1::CreateGroupRequest req;
  req.set_group(name);
  for (const auto& [n, shape] : tensors) {
    auto* t = req.add_tensors();
    t->set_name(n);
    t->set_dtype(dtype);
    for (int64_t d : shape) t->add_shape(d);
  }
  optd::v1::GroupInfo info;
  const grpc::Status s = stub.CreateGroup(&ctx, req, &info);
  if (!s.ok()) std::fprintf(stderr, "CreateGroup: %s\n", s.error_message().c_str());
  return s.ok();
}

// Uploads `src` as tensor `tensor` (elements of esize bytes) in chunk_bytes messages.
double UploadGBps(Optimizer::Stub& stub, const std::string& group, const std::string& tensor,
                  const std::vector<uint8_t>& src, int64_t chunk) {
  grpc::ClientContext ctx;
  optd::v1::UploadWeightsResponse resp;
  const auto t0 = Clock::now();
  auto w = stub.UploadWeights(&ctx, &resp);
  optd::v1::UploadWeightsRequest req;
  req.set_group(group);
  for (size_t off = 0; off < src.size(); off += static_cast<size_t>(chunk)) {
    const size_t n = std::min<size_t>(static_cast<size_t>(chunk), src.size() - off);
    req.mutable_chunk()->set_tensor(tensor);
    req.mutable_chunk()->set_offset(static_cast<int64_t>(off / 4));
    req.mutable_chunk()->set_dtype(optd::v1::FLOAT32);
    req.mutable_chunk()->set_data(src.data() + off, n);
    w->Write(req);
    req.clear_group();
  }
  w->WritesDone();
  const grpc::Status s = w->Finish();
  const auto t1 = Clock::now();
  if (!s.ok()) std::fprintf(stderr, "UploadWeights: %s\n", s.error_message().c_str());
  return static_cast<double>(src.size()) / Seconds(t0, t1) / 1e9;
}

double PullGBps(Optimizer::Stub& stub, const std::string& group, std::vector<uint8_t>& dst) {
  grpc::ClientContext ctx;
  optd::v1::PullWeightsRequest req;
  req.set_group(group);
  const auto t0 = Clock::now();
  auto r = stub.PullWeights(&ctx, req);
  optd::v1::WeightsMessage m;
  size_t got = 0;
  while (r->Read(&m)) {
    std::memcpy(dst.data() + m.chunk().offset() * 4, m.chunk().data().data(), m.chunk().data().size());
    got += m.chunk().data().size();
  }
  r->Finish();
  return static_cast<double>(got) / Seconds(t0, Clock::now()) / 1e9;
}

// One step over the tensors with gradients taken from `grad` (cycled), weights back as
// `weights`. Returns seconds; *bytes gets payload bytes both ways.
double StepSeconds(Optimizer::Stub& stub, const std::string& group, int64_t step,
                   const std::vector<std::pair<std::string, int64_t>>& tensors, int esize,
                   optd::v1::DType dtype, const std::vector<uint8_t>& grad, int64_t chunk,
                   optd::v1::WeightsReturn weights, double* bytes) {
  grpc::ClientContext ctx;
  auto stream = stub.Step(&ctx);
  const auto t0 = Clock::now();
  double sent = 0;
  std::thread writer([&] {
    optd::v1::StepRequest req;
    req.mutable_begin()->set_group(group);
    req.mutable_begin()->set_step(step);
    req.mutable_begin()->set_weights(weights);
    stream->Write(req);
    const int64_t per = chunk / esize / 256 * 256;
    for (const auto& [name, numel] : tensors) {
      for (int64_t off = 0; off < numel; off += per) {
        const int64_t n = std::min(per, numel - off);
        req.Clear();
        auto* g = req.mutable_gradient();
        g->set_tensor(name);
        g->set_offset(off);
        g->set_dtype(dtype);
        const size_t start = static_cast<size_t>(off * esize) % (grad.size() - static_cast<size_t>(chunk));
        g->set_data(grad.data() + start, static_cast<size_t>(n * esize));
        sent += static_cast<double>(n * esize);
        if (!stream->Write(req)) return;
      }
    }
    req.Clear();
    req.mutable_commit();
    stream->Write(req);
    stream->WritesDone();
  });
  optd::v1::StepResponse resp;
  double received = 0;
  while (stream->Read(&resp)) {
    if (resp.has_weights()) received += static_cast<double>(resp.weights().data().size());
  }
  writer.join();
  const grpc::Status s = stream->Finish();
  const auto t1 = Clock::now();
  if (!s.ok()) std::fprintf(stderr, "Step: %s\n", s.error_message().c_str());
  *bytes = sent + received;
  return Seconds(t0, t1);
}

void WireTable() {
  const size_t bytes = static_cast<size_t>(absl::GetFlag(FLAGS_mib)) << 20;
  const int repeats = absl::GetFlag(FLAGS_repeats);
  const int64_t chunk = absl::GetFlag(FLAGS_chunk_bytes);
  const std::vector<uint8_t> src = Buffer(bytes, 1);
  std::vector<uint8_t> dst(bytes);
  std::vector<double> tcp;
  for (int i = 0; i < repeats; ++i) tcp.push_back(TcpLoopback(src, dst));
  const double tcp_gbps = Median(tcp);
  std::printf("\n## Wire: %d MiB fp32 tensor, %lld KiB messages, median of %d (GB/s = 1e9 B/s)\n\n",
              absl::GetFlag(FLAGS_mib), static_cast<long long>(chunk >> 10), repeats);
  // Server CPU s/GB: the optd process's user + system CPU time over the payload bytes of all
  // repeats; unlike GB/s it hardly moves when other processes share the cores.
  std::printf("| path | allocator | GB/s | vs plain TCP | server CPU s/GB |\n|---|---|---|---|---|\n");
  std::printf("| plain loopback TCP, 1 MiB writes, cold buffer | - | %.2f | 1.00 | - |\n", tcp_gbps);
  const int64_t numel = static_cast<int64_t>(bytes / 4);
  const std::string jemalloc_binary = absl::GetFlag(FLAGS_server_binary);
  const std::string glibc_binary = absl::GetFlag(FLAGS_glibc_server_binary);
  for (const auto& [binary, alloc] :
       {std::pair<std::string, const char*>{jemalloc_binary, "jemalloc"}, {glibc_binary, "glibc"}}) {
    auto child = StartServer(binary);
    if (child->port == 0) {
      std::fprintf(stderr, "server %s did not start\n", binary.c_str());
      continue;
    }
    auto stub = Stub(child->port);
    CreateGroup(*stub, "w", {{"x", {numel}}}, optd::v1::FLOAT32);
    std::vector<double> up, pull, step, step_none;
    const double gb = static_cast<double>(bytes) * repeats / 1e9;
    double cpu = CpuSeconds(child->pid);
    auto cpu_per_gb = [&](double payload_gb) {
      const double now = CpuSeconds(child->pid);
      const double r = (now - cpu) / payload_gb;
      cpu = now;
      return r;
    };
    for (int i = 0; i < repeats; ++i) up.push_back(UploadGBps(*stub, "w", "x", src, chunk));
    const double up_cpu = cpu_per_gb(gb);
    for (int i = 0; i < repeats; ++i) pull.push_back(PullGBps(*stub, "w", dst));
    const double pull_cpu = cpu_per_gb(gb);
    int64_t k = 1;
    for (int i = 0; i < repeats; ++i) {
      double b;
      const double s = StepSeconds(*stub, "w", k++, {{"x", numel}}, 4, optd::v1::FLOAT32, src,
                                   chunk, optd::v1::UPDATED, &b);
      step.push_back(b / s / 1e9);
    }
    const double step_cpu = cpu_per_gb(2 * gb);
    for (int i = 0; i < repeats; ++i) {
      double b;
      const double s = StepSeconds(*stub, "w", k++, {{"x", numel}}, 4, optd::v1::FLOAT32, src,
                                   chunk, optd::v1::NONE, &b);
      step_none.push_back(b / s / 1e9);
    }
    const double none_cpu = cpu_per_gb(gb);
    const double u = Median(up), p = Median(pull), s = Median(step), n = Median(step_none);
    std::printf("| UploadWeights (client stream, protobuf bytes) | %s | %.2f | %.2f | %.2f |\n", alloc, u, u / tcp_gbps, up_cpu);
    std::printf("| PullWeights (server stream; includes the snapshot copy) | %s | %.2f | %.2f | %.2f |\n", alloc, p, p / tcp_gbps, pull_cpu);
    std::printf("| Step fp32 gradient up + updated weights down (bytes both ways; includes the CPU update) | %s | %.2f | %.2f | %.2f |\n", alloc, s, s / tcp_gbps, step_cpu);
    std::printf("| Step fp32 gradient up, weights NONE (includes the CPU update) | %s | %.2f | %.2f | %.2f |\n", alloc, n, n / tcp_gbps, none_cpu);
    std::fflush(stdout);
  }
}

void MemoryTable() {
  const int s = absl::GetFlag(FLAGS_tinyllama_scale);
  const int64_t h = 2048 / s, kv = 256 / s, inter = 5632 / s, vocab = 32000 / s;
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors;
  tensors.push_back({"embed", {vocab, h}});
  for (int l = 0; l < 22; ++l) {
    const std::string p = "l" + std::to_string(l) + ".";
    tensors.push_back({p + "q", {h, h}});
    tensors.push_back({p + "k", {kv, h}});
    tensors.push_back({p + "v", {kv, h}});
    tensors.push_back({p + "o", {h, h}});
    tensors.push_back({p + "gate", {inter, h}});
    tensors.push_back({p + "up", {inter, h}});
    tensors.push_back({p + "down", {h, inter}});
    tensors.push_back({p + "norm1", {h}});
    tensors.push_back({p + "norm2", {h}});
  }
  tensors.push_back({"norm", {h}});
  tensors.push_back({"lm_head", {vocab, h}});
  std::vector<std::pair<std::string, int64_t>> numels;
  int64_t params = 0;
  for (const auto& [n, shape] : tensors) {
    int64_t e = 1;
    for (int64_t d : shape) e *= d;
    numels.push_back({n, e});
    params += e;
  }
  const int64_t chunk = absl::GetFlag(FLAGS_chunk_bytes);
  const std::vector<uint8_t> grad = Buffer(static_cast<size_t>(64) << 20, 3);
  std::printf("\n## Memory: TinyLlama-1.1B layout / %d per dimension (201 bf16 tensors, %.1f M "
              "params), %s backend, a fresh server per row group\n\n", s, params / 1e6,
              absl::GetFlag(FLAGS_backend).c_str());
  std::printf("| figure | bytes | bytes per parameter |\n|---|---|---|\n");
  std::vector<std::pair<const char*, optd::v1::WeightsReturn>> modes = {
      {"NONE", optd::v1::NONE}, {"UPDATED", optd::v1::UPDATED}};
  bool first = true;
  for (const auto& [label, mode] : modes) {
    auto child = StartServer(absl::GetFlag(FLAGS_server_binary));
    if (child->port == 0) return;
    auto stub = Stub(child->port);
    const int64_t rss0 = ProcStatusKb(child->pid, "VmRSS:");
    CreateGroup(*stub, "tinyllama", tensors, optd::v1::BFLOAT16);
    {
      // Weights: bf16 bit patterns taken from the buffer (finite, arbitrary).
      grpc::ClientContext ctx;
      optd::v1::UploadWeightsResponse resp;
      auto w = stub->UploadWeights(&ctx, &resp);
      optd::v1::UploadWeightsRequest req;
      req.set_group("tinyllama");
      const int64_t per = chunk / 2;
      for (const auto& [name, numel] : numels) {
        for (int64_t off = 0; off < numel; off += per) {
          const int64_t n = std::min(per, numel - off);
          req.mutable_chunk()->set_tensor(name);
          req.mutable_chunk()->set_offset(off);
          req.mutable_chunk()->set_dtype(optd::v1::BFLOAT16);
          req.mutable_chunk()->set_data(grad.data(), static_cast<size_t>(n * 2));
          w->Write(req);
          req.clear_group();
        }
      }
      w->WritesDone();
      w->Finish();
    }
    const int64_t rss1 = ProcStatusKb(child->pid, "VmRSS:");
    if (first) {
      const std::string m = HttpGet(child->metrics_port, "/metrics");
      const std::string loc = absl::GetFlag(FLAGS_backend) == "cuda" ? "location=\"device\""
                                                                      : "location=\"host\"";
      const double weights = Metric(m, "optd_engine_weight_bytes", loc);
      const double states = Metric(m, "optd_engine_state_bytes", loc);
      const double used = Metric(m, "optd_device_memory_used_bytes", "");
      if (used >= 0) {
        std::printf("| device memory used, whole card (optd_device_memory_used_bytes; includes the "
                    "CUDA context) | %.0f | %.3f |\n", used, used / params);
      }
      std::printf("| engine weights (optd_engine_weight_bytes) | %.0f | %.3f |\n", weights, weights / params);
      std::printf("| engine 8-bit states + block scales (optd_engine_state_bytes) | %.0f | %.3f |\n", states, states / params);
      std::printf("| server RSS after create + upload, minus RSS at start | %lld | %.3f |\n",
                  static_cast<long long>((rss1 - rss0) * 1024), (rss1 - rss0) * 1024.0 / params);
      first = false;
    }
    for (int k = 1; k <= 2; ++k) {
      ResetPeakRss(child->pid);
      double bytes;
      const double secs = StepSeconds(*stub, "tinyllama", k, numels, 2, optd::v1::BFLOAT16, grad,
                                      chunk, mode, &bytes);
      const int64_t peak = ProcStatusKb(child->pid, "VmHWM:");
      std::printf("| step %d, bf16 gradients, weights %s: peak server RSS minus RSS at start "
                  "(weights + states + gradient and snapshot buffers + gRPC buffers); %.2f s, %.2f GB/s payload "
                  "| %lld | %.3f |\n",
                  k, label, secs, bytes / secs / 1e9, static_cast<long long>((peak - rss0) * 1024),
                  (peak - rss0) * 1024.0 / params);
    }
    const double used_after =
        Metric(HttpGet(child->metrics_port, "/metrics"), "optd_device_memory_used_bytes", "");
    if (used_after >= 0) {
      std::printf("| device memory used after 2 steps with weights %s (whole card) | %.0f | %.3f |\n",
                  label, used_after, used_after / params);
    }
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_skip_wire)) WireTable();
  if (!absl::GetFlag(FLAGS_skip_memory)) MemoryTable();
  return 0;
}
