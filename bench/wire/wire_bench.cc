// Wire benchmark: the C++ client (optd::client::Client) against a real optd server on loopback,
// beside plain loopback TCP over the same number of connections, measured in the same run.
//
//   wire_bench [--layout=default|tinyllama|tiny] [--streams=1,2,4,8] [--repeats=3]
//              [--backend=cpu|cuda] [--server=PATH] [--server_args=--a=1,--b=2]
//              [--tcp_mib=1024] [--json=PATH]
//
// Note [What the wire benchmark reports]
// For each K (streams per call, ClientOptions.streams; K parallel TCP connections):
// - TCP ceiling (see Note [What the TCP ceiling measures] in tcp_loopback.h): one way, and
//   both ways at once (a Step moves gradients up and weights down at the same time).
// - UploadWeights (payload up) and PullWeights (payload down) against one-way TCP.
// - Step, weights UPDATED: gradient bytes up plus weight bytes down over the call's wall time,
//   against two-way TCP. This includes the server's apply (journal + optimizer update).
// - Step, weights NONE: gradient bytes up, against one-way TCP; includes the apply too.
// - Step minus apply: the wire time of a step, Step UPDATED's time minus the server's apply
//   time, against two-way TCP. The apply time is the server's own figure where /metrics has
//   optd_step_apply_seconds (mean over the timed steps); otherwise it is estimated as
//   t(Step NONE) - t(UploadWeights): both move the same bytes up, the step adds the apply.
//   That holds where the server gathers a step's gradients and applies at the commit; where it
//   applies while chunks arrive, the apply hides under the transfer and the estimate is too
//   large. The row is then reported as failed when the remainder is shorter than the slower
//   of the two one-way calls (upload, pull), which no two-way transfer can beat.
// Times are medians of --repeats calls after one untimed warm-up step per K (a fresh group per
// K, so a failed K-stream step cannot spoil the next K). CPU s/GB is CPU seconds over payload
// bytes: the client's (this process, getrusage) and the server's (/proc/<pid>/stat).
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/wire/layout.h"
#include "bench/wire/server_child.h"
#include "bench/wire/tcp_loopback.h"
#include "absl/strings/match.h"
#include "optd/client/client.h"
#include "server/metrics_http_get.h"

ABSL_FLAG(std::string, layout, "default",
          "default (16 bf16 tensors, 256 MiB), tinyllama (201 bf16 tensors, 1.1 B params) or "
          "tiny (tinyllama / 16 per dimension)");
ABSL_FLAG(std::string, streams, "1,2,4,8", "K values: streams per call and TCP connections");
ABSL_FLAG(int, repeats, 3, "timed calls per figure; the median is reported");
ABSL_FLAG(std::string, backend, "cpu", "the server's --backend (cpu or cuda)");
ABSL_FLAG(std::string, server, OPTD_SERVER_BINARY, "the optd binary");
ABSL_FLAG(std::string, server_args, "", "extra server flags, comma-separated");
ABSL_FLAG(int64_t, chunk_bytes, int64_t{4} << 20, "payload bytes per message, both sides");
ABSL_FLAG(int, tcp_mib, 1024, "bytes each direction of the TCP ceiling moves, MiB (cold)");
ABSL_FLAG(bool, skip_client, false, "measure the TCP ceiling only");
ABSL_FLAG(std::string, json, "", "also write the figures as JSON to this file");

namespace {

using Clock = std::chrono::steady_clock;
// A histogram of the server's apply time per step (journal + update, no I/O), where the server
// exports one; the benchmark estimates it otherwise.
constexpr char kApplyMetric[] = "optd_step_apply_seconds_sum";
namespace oc = optd::client;
using optd::bench::Layout;
using optd::bench::TcpLoopback;
using optd::bench::TcpPattern;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// Sets ClientOptions.streams where the client has it; without it only K = 1 can run.
template <typename Options>
bool SetStreams(Options& options, int k) {
  if constexpr (requires { options.streams = k; }) {
    options.streams = k;
    return true;
  } else {
    return k == 1;
  }
}

struct Row {
  std::string op;         // upload, pull, step, step_none, step_wire
  std::string label;      // as printed
  int k = 1;
  TcpPattern pattern = TcpPattern::kOneWay;
  double gbps = 0;
  double seconds = 0;      // median seconds of one call
  double tcp_gbps = 0;
  double client_cpu = -1;  // s/GB
  double server_cpu = -1;  // s/GB
  std::string error;       // set when the figure could not be taken
};

struct TcpRow {
  int k = 1;
  double one_way = 0, two_way = 0;
  std::string error;
};

// The client's buffers: weights (upload source, pull and step destination) and gradients, one
// contiguous bf16 allocation each, viewed per tensor.
class Buffers {
 public:
  explicit Buffers(const Layout& layout)
      : weights_(static_cast<size_t>(layout.numel())), grads_(weights_.size()) {
    optd::bench::FillBf16(weights_.data(), layout.numel(), 0.02f, 1);
    optd::bench::FillBf16(grads_.data(), layout.numel(), 1e-3f, 2);
    int64_t off = 0;
    for (const auto& t : layout.tensors) {
      const int64_t n = t.numel();
      weights_in_.push_back({t.name, oc::DType::kBFloat16, weights_.data() + off, n});
      weights_out_.push_back({t.name, oc::DType::kBFloat16, weights_.data() + off, n});
      grads_in_.push_back({t.name, oc::DType::kBFloat16, grads_.data() + off, n});
      specs_.push_back({t.name, oc::DType::kBFloat16, t.shape});
      off += n;
    }
  }
  const std::vector<oc::ConstBuffer>& weights_in() const { return weights_in_; }
  const std::vector<oc::MutableBuffer>& weights_out() const { return weights_out_; }
  const std::vector<oc::ConstBuffer>& grads() const { return grads_in_; }
  const std::vector<oc::TensorSpec>& specs() const { return specs_; }

 private:
  std::vector<uint16_t> weights_, grads_;
  std::vector<oc::ConstBuffer> weights_in_, grads_in_;
  std::vector<oc::MutableBuffer> weights_out_;
  std::vector<oc::TensorSpec> specs_;
};

// Times `repeats` calls of `fn` (which returns payload bytes or an error) and fills `row`.
template <typename Fn>
void Time(Row& row, int repeats, const optd::bench::ServerChild& server, Fn fn) {
  std::vector<double> seconds;
  double bytes = 0;
  const double client0 = ProcessCpuSeconds(), server0 = server.CpuSeconds();
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = Clock::now();
    absl::StatusOr<double> b = fn();
    const auto t1 = Clock::now();
    if (!b.ok()) {
      row.error = std::string(b.status().message());
      return;
    }
    bytes = *b;
    seconds.push_back(Seconds(t0, t1));
  }
  const double gb = bytes * repeats / 1e9;
  row.client_cpu = (ProcessCpuSeconds() - client0) / gb;
  row.server_cpu = (server.CpuSeconds() - server0) / gb;
  row.seconds = Median(seconds);
  row.gbps = bytes / row.seconds / 1e9;
}

// The sum of every series of `name` on the server's /metrics (e.g. a histogram's `_sum` over
// all groups), or -1 when the server does not export it.
double MetricSum(const optd::bench::ServerChild& server, const std::string& name) {
  auto body = optd::server::HttpGetLoopback(server.metrics_port(), "/metrics");
  if (!body.ok()) return -1;
  double sum = 0;
  bool found = false;
  for (absl::string_view line : absl::StrSplit(*body, '\n')) {
    if (!absl::StartsWith(line, name) || line.size() <= name.size() ||
        (line[name.size()] != '{' && line[name.size()] != ' ')) {
      continue;
    }
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) {
      sum += v;
      found = true;
    }
  }
  return found ? sum : -1;
}

// All client rows for one K, on a fresh group.
std::vector<Row> ClientRows(int k, const Layout& layout, Buffers& buf,
                            const optd::bench::ServerChild& server, const TcpRow& tcp) {
  const int repeats = absl::GetFlag(FLAGS_repeats);
  std::vector<Row> rows;
  auto add = [&](const char* op, const char* label, TcpPattern pattern) {
    Row r;
    r.op = op;
    r.label = label;
    r.k = k;
    r.pattern = pattern;
    r.tcp_gbps = pattern == TcpPattern::kTwoWay ? tcp.two_way : tcp.one_way;
    rows.push_back(std::move(r));
  };
  add("upload", "UploadWeights (up)", TcpPattern::kOneWay);
  add("pull", "PullWeights (down)", TcpPattern::kOneWay);
  add("step", "Step, weights UPDATED (up + down, incl. apply)", TcpPattern::kTwoWay);
  add("step_none", "Step, weights NONE (up, incl. apply)", TcpPattern::kOneWay);
  add("step_wire", "Step UPDATED minus apply", TcpPattern::kTwoWay);
  auto fail_all = [&](const std::string& why) {
    for (Row& r : rows) {
      if (r.error.empty() && r.gbps == 0) r.error = why;
    }
    return rows;
  };
  oc::ClientOptions options;
  options.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  if (!SetStreams(options, k)) return fail_all("this client has no ClientOptions.streams");
  auto client = oc::Client::Create(server.target(), options);
  if (!client.ok()) return fail_all(std::string(client.status().message()));
  oc::Client& c = **client;
  const std::string group = absl::StrCat("wire-k", k);
  if (auto r = c.CreateGroup(group, buf.specs()); !r.ok()) {
    return fail_all(absl::StrCat("CreateGroup: ", r.status().message()));
  }
  const double bytes = static_cast<double>(layout.bytes());
  int64_t step = 0;
  // Warm-up (untimed): weights in, one step (the engine allocates and touches its states), so
  // the timed calls see a steady server.
  if (auto r = c.UploadWeights(group, buf.weights_in()); !r.ok()) {
    return fail_all(absl::StrCat("UploadWeights: ", r.status().message()));
  }
  if (auto r = c.Step(group, ++step, buf.grads(), buf.weights_out()); !r.ok()) {
    fail_all(absl::StrCat("warm-up Step: ", r.status().message()));
    rows[0].error.clear();
    rows[1].error.clear();  // upload and pull still run
  }
  Time(rows[0], repeats, server, [&]() -> absl::StatusOr<double> {
    auto r = c.UploadWeights(group, buf.weights_in());
    if (!r.ok()) return r.status();
    return bytes;
  });
  Time(rows[1], repeats, server, [&]() -> absl::StatusOr<double> {
    auto r = c.PullWeights(group, buf.weights_out());
    if (!r.ok()) return r.status();
    return bytes;
  });
  // The server's own apply time, where it exports one (see Note [What the wire benchmark
  // reports]).
  const double apply0 = MetricSum(server, kApplyMetric);
  if (rows[2].error.empty()) {
    Time(rows[2], repeats, server, [&]() -> absl::StatusOr<double> {
      auto r = c.Step(group, ++step, buf.grads(), buf.weights_out());
      if (!r.ok()) return r.status();
      if (r->weight_elements_received != layout.numel()) {
        return absl::InternalError(absl::StrCat("Step returned ", r->weight_elements_received,
                                                " of ", layout.numel(), " weights"));
      }
      return 2 * bytes;
    });
  }
  const double apply1 = MetricSum(server, kApplyMetric);
  if (rows[2].error.empty()) {
    oc::StepOptions none;
    none.weights = oc::WeightsReturn::kNone;
    Time(rows[3], repeats, server, [&]() -> absl::StatusOr<double> {
      auto r = c.Step(group, ++step, buf.grads(), {}, none);
      if (!r.ok()) return r.status();
      return bytes;
    });
  }
  Row& wire = rows[4];
  if (!rows[2].error.empty() || !rows[3].error.empty() || !rows[0].error.empty() ||
      !rows[1].error.empty()) {
    wire.error = "needs the upload, pull and both step rows";
  } else {
    const double t_step = rows[2].seconds, t_none = rows[3].seconds, t_up = rows[0].seconds,
                 t_pull = rows[1].seconds;
    double apply = 0;
    if (apply0 >= 0 && apply1 >= 0) {
      apply = (apply1 - apply0) / repeats;  // a mean, beside the other rows' medians
      wire.label = absl::StrCat("Step UPDATED minus the server's apply (", kApplyMetric, ")");
    } else {
      apply = std::max(0.0, t_none - t_up);
      wire.label = "Step UPDATED minus apply estimated as t(Step NONE) - t(Upload)";
    }
    std::printf("  K=%d: t(Upload) %.1f ms, t(Pull) %.1f ms, t(Step UPDATED) %.1f ms, "
                "t(Step NONE) %.1f ms, apply %.1f ms (%s)\n",
                k, 1e3 * t_up, 1e3 * t_pull, 1e3 * t_step, 1e3 * t_none, 1e3 * apply,
                apply0 >= 0 ? "server metric" : "estimate");
    // Gradients up and weights down cannot together take less than the slower of the two
    // one-way calls: an apply figure that says so overlapped the transfer.
    if (t_step - apply < std::max(t_up, t_pull)) {
      wire.error = "apply overlaps the transfer (Step minus apply < the slower one-way call)";
    } else {
      wire.seconds = t_step - apply;
      wire.gbps = 2 * bytes / 1e9 / wire.seconds;
    }
  }
  if (auto s = c.DeleteGroup(group); !s.ok()) {
    std::fprintf(stderr, "DeleteGroup %s: %s\n", group.c_str(), s.ToString().c_str());
  }
  return rows;
}

TcpRow MeasureTcp(TcpLoopback& tcp, int k, int repeats) {
  TcpRow row;
  row.k = k;
  for (TcpPattern p : {TcpPattern::kOneWay, TcpPattern::kTwoWay}) {
    std::vector<double> v;
    for (int i = 0; i < repeats; ++i) {
      auto g = tcp.Measure(k, p);
      if (!g.ok()) {
        row.error = std::string(g.status().message());
        return row;
      }
      v.push_back(*g);
    }
    (p == TcpPattern::kOneWay ? row.one_way : row.two_way) = Median(v);
  }
  return row;
}

std::string Figure(double v, const std::string& error) {
  if (!error.empty()) return "failed";
  char b[32];
  std::snprintf(b, sizeof(b), "%.2f", v);
  return b;
}

void WriteJson(const std::string& path, const Layout& layout, const std::vector<TcpRow>& tcp,
               const std::vector<Row>& rows) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    return;
  }
  auto quoted = [](const std::string& s) {
    std::string q = "\"";
    for (char ch : s) {
      if (ch == '"' || ch == '\\') q += '\\';
      q += (ch == '\n' ? ' ' : ch);
    }
    return q + "\"";
  };
  std::fprintf(f, "{\"layout\": %s, \"tensors\": %zu, \"bytes\": %lld, \"backend\": %s,\n",
               quoted(layout.name).c_str(), layout.tensors.size(),
               static_cast<long long>(layout.bytes()),
               quoted(absl::GetFlag(FLAGS_backend)).c_str());
  std::fprintf(f, " \"tcp\": [");
  for (size_t i = 0; i < tcp.size(); ++i) {
    std::fprintf(f,
                 "%s\n  {\"k\": %d, \"one_way_gbps\": %.4f, \"two_way_gbps\": %.4f, "
                 "\"error\": %s}",
                 i ? "," : "", tcp[i].k, tcp[i].one_way, tcp[i].two_way,
                 quoted(tcp[i].error).c_str());
  }
  std::fprintf(f, "],\n \"client\": [");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::fprintf(f,
                 "%s\n  {\"op\": %s, \"k\": %d, \"gbps\": %.4f, \"tcp_gbps\": %.4f, "
                 "\"client_cpu_s_per_gb\": %.4f, \"server_cpu_s_per_gb\": %.4f, \"error\": %s}",
                 i ? "," : "", quoted(r.op).c_str(), r.k, r.gbps, r.tcp_gbps, r.client_cpu,
                 r.server_cpu, quoted(r.error).c_str());
  }
  std::fprintf(f, "]}\n");
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto layout = optd::bench::MakeLayout(absl::GetFlag(FLAGS_layout));
  if (!layout.ok()) {
    std::fprintf(stderr, "%s\n", layout.status().ToString().c_str());
    return 2;
  }
  std::vector<int> ks;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_streams), ',', absl::SkipEmpty())) {
    int k = 0;
    if (!absl::SimpleAtoi(s, &k) || k < 1) {
      std::fprintf(stderr, "--streams: '%s' is not a positive integer\n", std::string(s).c_str());
      return 2;
    }
    ks.push_back(k);
  }
  const int repeats = std::max(1, absl::GetFlag(FLAGS_repeats));
  const bool with_client = !absl::GetFlag(FLAGS_skip_client);
  const std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::printf("wire_bench: %s, %ld cores, layout %s (%zu bf16 tensors, %.1f M params, %.0f MiB "
              "per direction), server --backend=%s, %lld KiB messages, median of %d\n",
              date, sysconf(_SC_NPROCESSORS_ONLN), layout->name.c_str(), layout->tensors.size(),
              layout->numel() / 1e6, layout->bytes() / 1048576.0,
              absl::GetFlag(FLAGS_backend).c_str(),
              static_cast<long long>(absl::GetFlag(FLAGS_chunk_bytes) >> 10), repeats);
  std::fflush(stdout);

  std::unique_ptr<optd::bench::ServerChild> server;
  std::unique_ptr<Buffers> buffers;
  if (with_client) {
    std::vector<std::string> args = {
        "--backend=" + absl::GetFlag(FLAGS_backend), "--max_message_bytes=67108864",
        absl::StrCat("--chunk_bytes=", absl::GetFlag(FLAGS_chunk_bytes))};
    for (absl::string_view a :
         absl::StrSplit(absl::GetFlag(FLAGS_server_args), ',', absl::SkipEmpty())) {
      args.emplace_back(a);
    }
    auto s = optd::bench::ServerChild::Start(absl::GetFlag(FLAGS_server), args);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
      return 1;
    }
    server = std::move(*s);
    buffers = std::make_unique<Buffers>(*layout);
  }
  TcpLoopback tcp(static_cast<size_t>(absl::GetFlag(FLAGS_tcp_mib)) << 20);
  std::vector<TcpRow> tcp_rows;
  std::vector<Row> rows;
  for (int k : ks) {
    // The ceiling for K right before the client's K rows, so both see the same machine load.
    tcp_rows.push_back(MeasureTcp(tcp, k, repeats));
    std::printf("K=%d: TCP one way %s GB/s, both ways %s GB/s\n", k,
                Figure(tcp_rows.back().one_way, tcp_rows.back().error).c_str(),
                Figure(tcp_rows.back().two_way, tcp_rows.back().error).c_str());
    std::fflush(stdout);
    if (!with_client) continue;
    for (Row& r : ClientRows(k, *layout, *buffers, *server, tcp_rows.back())) {
      std::printf("  %s: %s GB/s%s%s\n", r.label.c_str(), Figure(r.gbps, r.error).c_str(),
                  r.error.empty() ? "" : " - ", r.error.c_str());
      rows.push_back(std::move(r));
    }
    std::fflush(stdout);
  }

  std::printf("\n## Plain loopback TCP, %d MiB per direction from a cold buffer, 1 MiB writes "
              "(GB/s = 1e9 B/s, both directions summed)\n\n"
              "| K connections | one way | both ways at once |\n|---|---|---|\n",
              absl::GetFlag(FLAGS_tcp_mib));
  for (const TcpRow& t : tcp_rows) {
    std::printf("| %d | %s | %s |\n", t.k, Figure(t.one_way, t.error).c_str(),
                Figure(t.two_way, t.error).c_str());
  }
  if (with_client) {
    std::printf("\n## C++ client vs TCP, layout %s (%.0f MiB of bf16 each way), --backend=%s\n\n"
                "| operation | K | payload GB/s | TCP GB/s (same K, same directions) | ratio | "
                "client CPU s/GB | server CPU s/GB |\n|---|---|---|---|---|---|---|\n",
                layout->name.c_str(), layout->bytes() / 1048576.0,
                absl::GetFlag(FLAGS_backend).c_str());
    for (const Row& r : rows) {
      const bool derived = r.op == "step_wire";
      std::printf("| %s | %d | %s | %.2f (%s) | %s | %s | %s |\n", r.label.c_str(), r.k,
                  Figure(r.gbps, r.error).c_str(), r.tcp_gbps,
                  r.pattern == TcpPattern::kTwoWay ? "both ways" : "one way",
                  Figure(r.gbps / r.tcp_gbps, r.error).c_str(),
                  derived ? "-" : Figure(r.client_cpu, r.error).c_str(),
                  derived ? "-" : Figure(r.server_cpu, r.error).c_str());
    }
    std::printf("\nStep minus apply: t(Step UPDATED) minus the server's apply time: its "
                "optd_step_apply_seconds where /metrics has it, else t(Step NONE) - "
                "t(UploadWeights) (the same bytes up; the step adds the apply), which holds where "
                "the server applies after gathering a step's gradients.\n");
    std::string last;  // a reason once per K, not once per row
    for (const Row& r : rows) {
      const std::string reason = absl::StrCat(r.k, r.error);
      if (!r.error.empty() && reason != last) {
        std::printf("failed, K=%d, %s (and the same below): %s\n", r.k, r.op.c_str(),
                    r.error.c_str());
      }
      last = reason;
    }
  }
  if (!absl::GetFlag(FLAGS_json).empty()) {
    WriteJson(absl::GetFlag(FLAGS_json), *layout, tcp_rows, rows);
  }
  return 0;
}
