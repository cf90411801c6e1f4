#include "tests/server/server_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/metrics_http_get.h"
#include "server/widen.h"

namespace optd::testing {

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::unique_ptr<v1::Optimizer::Stub> MakeStub(const std::string& address, int max_message_bytes) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  return v1::Optimizer::NewStub(channel);
}

std::string TestBackend() {
  const char* b = std::getenv("OPTD_TEST_BACKEND");
  return b == nullptr || *b == '\0' ? std::string("cpu") : std::string(b);
}

InProcessServer StartInProcess(server::ServerOptions options) {
  options.listen_address = "127.0.0.1:0";
  options.backend = TestBackend();
  auto server = server::Server::BuildAndStart(options);
  EXPECT_TRUE(server.ok()) << server.status();
  InProcessServer out;
  if (!server.ok()) return out;
  out.server = *std::move(server);
  out.stub = MakeStub(out.server->address());
  return out;
}

std::string MakeTempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "optd-test-XXXXXX").string();
  char* dir = mkdtemp(tmpl.data());
  return dir == nullptr ? std::string() : std::string(dir);
}

namespace {

int ReadPortFile(const std::string& path) {
  std::ifstream in(path);
  int port = 0;
  if (in >> port) return port;
  return 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChildServer>> ChildServer::Start(
    std::vector<std::string> extra_args) {
  auto child = std::unique_ptr<ChildServer>(new ChildServer());
  child->dir_ = MakeTempDir();
  const std::string port_file = child->dir_ + "/port";
  const std::string metrics_port_file = child->dir_ + "/metrics_port";
  const char* binary = std::getenv("OPTD_SERVER_BINARY");
  std::vector<std::string> args = {binary != nullptr ? binary : OPTD_SERVER_BINARY,
                                   "--listen=127.0.0.1:0",
                                   "--metrics_listen=127.0.0.1:0",
                                   "--backend=" + TestBackend(),
                                   "--cpu_threads=2",
                                   "--port_file=" + port_file,
                                   "--metrics_port_file=" + metrics_port_file};
  for (auto& a : extra_args) args.push_back(std::move(a));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  child->pid_ = pid;
  for (int i = 0; i < 300; ++i) {  // up to 30 s on a loaded 2-core machine
    child->port_ = ReadPortFile(port_file);
    if (child->port_ > 0) break;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      child->pid_ = -1;
      return absl::InternalError(absl::StrCat("optd exited early with status ", status));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (child->port_ == 0) return absl::DeadlineExceededError("optd did not write its port file");
  child->metrics_port_ = ReadPortFile(metrics_port_file);
  return child;
}

ChildServer::~ChildServer() {
  if (pid_ > 0) Kill(SIGKILL);
}

int ChildServer::Kill(int sig) {
  if (pid_ <= 0) return -1;
  kill(pid_, sig);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

v1::TensorInfo Tensor(const std::string& name, v1::DType dtype, std::vector<int64_t> shape) {
  v1::TensorInfo t;
  t.set_name(name);
  t.set_dtype(dtype);
  for (int64_t d : shape) t.add_shape(d);
  return t;
}

static int64_t WireSize(v1::DType dtype) { return dtype == v1::FLOAT32 ? 4 : 2; }

absl::StatusOr<v1::UploadWeightsResponse> Upload(v1::Optimizer::Stub& stub,
                                                 const std::string& group,
                                                 const std::string& tensor, v1::DType dtype,
                                                 const Bytes& data, int64_t chunk_elements) {
  grpc::ClientContext ctx;
  v1::UploadWeightsResponse response;
  auto writer = stub.UploadWeights(&ctx, &response);
  const int64_t esize = WireSize(dtype);
  const int64_t numel = static_cast<int64_t>(data.size()) / esize;
  for (int64_t off = 0; off < numel; off += chunk_elements) {
    const int64_t n = std::min(chunk_elements, numel - off);
    v1::UploadWeightsRequest req;
    if (off == 0) req.set_group(group);
    req.mutable_chunk()->set_tensor(tensor);
    req.mutable_chunk()->set_offset(off);
    req.mutable_chunk()->set_dtype(dtype);
    req.mutable_chunk()->set_data(data.data() + off * esize, static_cast<size_t>(n * esize));
    if (!writer->Write(req)) break;
  }
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (!s.ok()) return FromGrpc(s);
  return response;
}

namespace {

struct ChunkRange {
  const Grad* grad = nullptr;
  int64_t offset = 0;
  int64_t n = 0;
};

// One stream of a step: begin, its chunks, commit; collects weights and StepDone.
// Weights arriving on every stream of a step land in one map.
struct SharedWeights {
  std::mutex mu;
  std::map<std::string, Bytes> weights;
};

StepResult RunStepStream(v1::Optimizer::Stub& stub, const v1::StepRequest& begin,
                         const std::vector<ChunkRange>& chunks, bool bad, bool silent,
                         bool late_commit, int64_t deadline_ms, SharedWeights* out) {
  StepResult result;
  grpc::ClientContext ctx;
  if (deadline_ms > 0) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
  }
  auto stream = stub.Step(&ctx);
  // A writer thread, so that weights streamed back while we send do not stall the stream.
  std::thread writer([&] {
    if (!stream->Write(begin)) return;
    if (silent) return;  // no chunks, no commit, no WritesDone: the deadline ends it
    if (bad) {
      v1::StepRequest req;
      req.mutable_gradient()->set_tensor(chunks.empty() ? "" : chunks[0].grad->tensor);
      req.mutable_gradient()->set_offset(int64_t{1} << 40);
      req.mutable_gradient()->set_dtype(v1::FLOAT32);
      req.mutable_gradient()->set_data(std::string(1024, '\0'));
      if (!stream->Write(req)) return;
    }
    for (const ChunkRange& c : chunks) {
      const int64_t esize = WireSize(c.grad->dtype);
      v1::StepRequest req;
      req.mutable_gradient()->set_tensor(c.grad->tensor);
      req.mutable_gradient()->set_offset(c.offset);
      req.mutable_gradient()->set_dtype(c.grad->dtype);
      req.mutable_gradient()->set_data(c.grad->data.data() + c.offset * esize,
                                       static_cast<size_t>(c.n * esize));
      if (!stream->Write(req)) return;
    }
    if (late_commit) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    v1::StepRequest commit;
    commit.mutable_commit();
    if (!stream->Write(commit)) return;
    stream->WritesDone();
  });
  v1::StepResponse response;
  bool got_done = false;
  while (stream->Read(&response)) {
    if (response.has_done()) {
      result.done = response.done();
      got_done = true;
      continue;
    }
    const v1::TensorChunk& c = response.weights();
    const int64_t esize = WireSize(c.dtype());
    std::lock_guard<std::mutex> lock(out->mu);
    Bytes& dst = out->weights[c.tensor()];
    const size_t end = static_cast<size_t>(c.offset() * esize) + c.data().size();
    if (dst.size() < end) dst.resize(end);
    std::memcpy(dst.data() + c.offset() * esize, c.data().data(), c.data().size());
  }
  writer.join();
  result.status = FromGrpc(stream->Finish());
  if (result.status.ok() && !got_done) {
    result.status = absl::InternalError("the stream ended without StepDone");
  }
  return result;
}

}  // namespace

StepResult RunStep(v1::Optimizer::Stub& stub, const std::string& group, int64_t step,
                   const std::vector<Grad>& grads, const StepOptions& options) {
  const int k = std::max(1, options.streams);
  std::vector<std::vector<ChunkRange>> per_stream(static_cast<size_t>(k));
  size_t j = 0;
  for (const Grad& g : grads) {
    const int64_t esize = WireSize(g.dtype);
    const int64_t numel = static_cast<int64_t>(g.data.size()) / esize;
    for (int64_t off = 0; off < numel; off += options.chunk_elements) {
      per_stream[j++ % static_cast<size_t>(k)].push_back(
          ChunkRange{&g, off, std::min(options.chunk_elements, numel - off)});
    }
  }
  std::vector<StepResult> results(static_cast<size_t>(k));
  SharedWeights weights;
  std::vector<std::thread> threads;
  for (int i = options.first_stream; i < k; ++i) {
    v1::StepRequest begin;
    begin.mutable_begin()->set_attempt(options.attempt);
    begin.mutable_begin()->set_group(group);
    begin.mutable_begin()->set_worker(options.worker);
    begin.mutable_begin()->set_step(step);
    begin.mutable_begin()->set_weights(i == options.weights_none_stream ? v1::NONE
                                                                       : options.weights);
    if (options.lr) begin.mutable_begin()->set_lr(*options.lr);
    if (options.base_version) begin.mutable_begin()->set_base_version(*options.base_version);
    if (k > 1) {
      begin.mutable_begin()->set_streams(k);
      begin.mutable_begin()->set_stream_index(i);
    }
    threads.emplace_back([&, i, begin] {
      results[static_cast<size_t>(i)] =
          RunStepStream(stub, begin, per_stream[static_cast<size_t>(i)], i == options.bad_stream,
                        i == options.silent_stream, i == options.late_commit_stream,
                        options.deadline_ms, &weights);
    });
  }
  for (auto& t : threads) t.join();
  StepResult result = std::move(results[0]);
  for (int i = 1; i < k; ++i) {
    StepResult& r = results[static_cast<size_t>(i)];
    if (result.status.ok() && !r.status.ok()) result.status = r.status;
    if (result.status.ok() && r.done.SerializeAsString() != result.done.SerializeAsString()) {
      result.status = absl::InternalError(absl::StrCat("stream ", i, " reported another StepDone"));
    }
  }
  result.weights = std::move(weights.weights);
  return result;
}

absl::StatusOr<std::map<std::string, Bytes>> Pull(v1::Optimizer::Stub& stub,
                                                  const std::string& group, int64_t* version) {
  grpc::ClientContext ctx;
  v1::PullWeightsRequest req;
  req.set_group(group);
  auto reader = stub.PullWeights(&ctx, req);
  std::map<std::string, Bytes> out;
  v1::WeightsMessage m;
  while (reader->Read(&m)) {
    const int64_t esize = WireSize(m.chunk().dtype());
    Bytes& dst = out[m.chunk().tensor()];
    const size_t end = static_cast<size_t>(m.chunk().offset() * esize) + m.chunk().data().size();
    if (dst.size() < end) dst.resize(end);
    std::memcpy(dst.data() + m.chunk().offset() * esize, m.chunk().data().data(),
                m.chunk().data().size());
    if (version != nullptr) *version = m.version();
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) return FromGrpc(s);
  return out;
}

absl::StatusOr<std::map<std::string, std::map<std::string, Bytes>>> Export(
    v1::Optimizer::Stub& stub, const std::string& group) {
  grpc::ClientContext ctx;
  v1::ExportStateRequest req;
  req.set_group(group);
  auto reader = stub.ExportState(&ctx, req);
  std::map<std::string, std::map<std::string, Bytes>> out;
  v1::StateChunk c;
  while (reader->Read(&c)) {
    const int64_t esize = c.type() == v1::STATE_ELEMENT_TYPE_UINT8   ? 1
                          : c.type() == v1::STATE_ELEMENT_TYPE_INT64 ? 8
                                                                     : 4;
    Bytes& dst = out[c.tensor()][c.key()];
    const size_t end = static_cast<size_t>(c.offset() * esize) + c.data().size();
    if (dst.size() < end) dst.resize(end);
    std::memcpy(dst.data() + c.offset() * esize, c.data().data(), c.data().size());
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) return FromGrpc(s);
  return out;
}

std::vector<float> RandomFloats(int64_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

Bytes AsBytes(const std::vector<float>& v) {
  Bytes b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

Bytes Bf16(const std::vector<float>& v) {
  Bytes out(v.size() * 2);
  server::NarrowFromFloat(v.data(), static_cast<int64_t>(v.size()), core::DType::kBFloat16,
                          out.data());
  return out;
}

void CreateMainAndClipGroups(v1::Optimizer::Stub& stub, int64_t w, int64_t b,
                             v1::DType b_dtype) {
  for (const char* name : {"main", "clip"}) {
    v1::CreateGroupRequest create;
    create.set_group(name);
    *create.add_tensors() = Tensor("w", v1::FLOAT32, {w});
    *create.add_tensors() = Tensor("b", b_dtype, {b});
    if (std::string(name) == "clip") create.mutable_hyperparameters()->set_percentile_clipping(10);
    grpc::ClientContext ctx;
    v1::GroupInfo info;
    ASSERT_TRUE(stub.CreateGroup(&ctx, create, &info).ok());
    ASSERT_TRUE(Upload(stub, name, "w", v1::FLOAT32, AsBytes(RandomFloats(w, 1))).ok());
    const std::vector<float> bias = RandomFloats(b, 2);
    ASSERT_TRUE(
        Upload(stub, name, "b", b_dtype, b_dtype == v1::BFLOAT16 ? Bf16(bias) : AsBytes(bias))
            .ok());
  }
}

std::vector<float> AsFloats(const Bytes& b) {
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  return server::HttpGetLoopback(port, path);
}

double MetricValue(const std::string& exposition, const std::string& metric,
                   const std::string& label_substring) {
  std::istringstream in(exposition);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line.rfind(metric, 0) != 0) continue;
    const char next = line.size() > metric.size() ? line[metric.size()] : '\0';
    if (next != '{' && next != ' ') continue;
    if (!label_substring.empty() && line.find(label_substring) == std::string::npos) continue;
    double v;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) return v;
  }
  return -1;
}

}  // namespace optd::testing
