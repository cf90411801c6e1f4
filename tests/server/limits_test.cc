// Admission limits through the real server (issue 9, "Bounds" and failures 3, 6, 7): each limit
// refused with the right code and a message naming it and its flag, and nothing allocated for the
// refused request (the engine's byte gauges stay put, RSS moves by less than a tolerance).
#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Resident memory of process `pid`.
int64_t RssBytes(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) != 0) continue;
    std::string digits;
    for (char c : line) {
      if (c >= '0' && c <= '9') digits += c;
    }
    int64_t kb = 0;
    if (absl::SimpleAtoi(digits, &kb)) return kb * 1024;
  }
  return -1;
}

// A refused request may leave a few of its receive buffers in the allocator's caches, not the
// gigabytes it asked for.
constexpr int64_t kRssTolerance = int64_t{64} << 20;

server::ServerOptions WithMetrics() {
  server::ServerOptions o;
  o.metrics_listen_address = "127.0.0.1:0";
  return o;
}

// Weight + state bytes the engine holds, from /metrics (the engine's own counters).
double EngineBytes(int metrics_port) {
  auto text = HttpGet(metrics_port, "/metrics");
  EXPECT_TRUE(text.ok()) << text.status();
  if (!text.ok()) return -1;
  double total = 0;
  for (const char* metric : {"optd_engine_weight_bytes", "optd_engine_state_bytes"}) {
    for (const char* where : {"location=\"host\"", "location=\"device\""}) {
      total += std::max(0.0, MetricValue(*text, metric, where));
    }
  }
  return total;
}
double EngineBytes(const InProcessServer& srv) { return EngineBytes(srv.server->metrics_port()); }

v1::CreateGroupRequest SmallGroup(const std::string& name) {
  v1::CreateGroupRequest r;
  r.set_group(name);
  *r.add_tensors() = Tensor("w", v1::FLOAT32, {300});
  return r;
}

absl::Status Create(v1::Optimizer::Stub& stub, const v1::CreateGroupRequest& r,
                    v1::GroupInfo* info = nullptr) {
  grpc::ClientContext ctx;
  v1::GroupInfo out;
  return FromGrpc(stub.CreateGroup(&ctx, r, info != nullptr ? info : &out));
}

void ExpectRefused(const absl::Status& s, absl::StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(needle));
}

// Every refusal below, and the memory it must not cost, against the optd binary (whose RSS is
// its own, not shared with this test's client).
TEST(LimitsTest, OversizedGroupsAreRefusedBeforeAnythingIsAllocated) {
  auto child = ChildServer::Start({});
  ASSERT_TRUE(child.ok()) << child.status();
  auto stub = MakeStub((*child)->address());
  ASSERT_TRUE(Create(*stub, SmallGroup("keep")).ok());

  // 2^42 elements (16 TiB of fp32): more than any machine's memory.
  v1::CreateGroupRequest huge = SmallGroup("huge");
  *huge.mutable_tensors(0) = Tensor("w", v1::FLOAT32, {int64_t{1} << 42});
  // A shape whose byte count overflows int64 is refused, not wrapped.
  v1::CreateGroupRequest wrap = SmallGroup("wrap");
  *wrap.mutable_tensors(0) = Tensor("w", v1::FLOAT32, {int64_t{1} << 31, int64_t{1} << 31});
  // num_workers = 2^28 used to cost 2.1 GB of step counters from a 30-byte request.
  v1::CreateGroupRequest workers = SmallGroup("workers");
  workers.set_num_workers(1 << 28);
  // 65537 one-element tensors (10^6 of them used to cost 660 MB).
  v1::CreateGroupRequest many = SmallGroup("many");
  many.clear_tensors();
  for (int i = 0; i <= server::Limits().max_tensors_per_group; ++i) {
    *many.add_tensors() = Tensor(absl::StrCat("t", i), v1::FLOAT32, {1});
  }
  // A 15 MiB name (it used to cost 263 MB).
  const v1::CreateGroupRequest long_name = SmallGroup(std::string(15 << 20, 'n'));

  const double engine_before = EngineBytes((*child)->metrics_port());
  const int64_t rss_before = RssBytes((*child)->pid());
  ASSERT_GT(engine_before, 0);
  ASSERT_GT(rss_before, 0);

  const absl::Status h = Create(*stub, huge);
  ExpectRefused(h, absl::StatusCode::kResourceExhausted, "memory");
  EXPECT_THAT(std::string(h.message()), HasSubstr("--memory_reserve_bytes"));
  EXPECT_THAT(std::string(h.message()), HasSubstr("group 'huge'"));
  ExpectRefused(Create(*stub, wrap), absl::StatusCode::kInvalidArgument, "overflow");
  ExpectRefused(Create(*stub, workers), absl::StatusCode::kInvalidArgument, "--max_workers");
  ExpectRefused(Create(*stub, many), absl::StatusCode::kInvalidArgument, "--max_tensors_per_group");
  const absl::Status n = Create(*stub, long_name);
  ExpectRefused(n, absl::StatusCode::kInvalidArgument, "--max_name_bytes");
  EXPECT_LT(n.message().size(), 1024u);  // a bounded prefix of the name, not 15 MiB of it

  EXPECT_EQ(EngineBytes((*child)->metrics_port()), engine_before);
  const int64_t rss_after = RssBytes((*child)->pid());
  EXPECT_LT(rss_after - rss_before, kRssTolerance) << rss_before << " -> " << rss_after;
  // The server still serves.
  v1::GroupInfo info;
  EXPECT_TRUE(Create(*stub, SmallGroup("after"), &info).ok());
  EXPECT_EQ(info.weight_bytes(), 1200);
}

TEST(LimitsTest, GroupCountAndBytesPerGroupAreBoundedByTheirFlags) {
  server::ServerOptions options = WithMetrics();
  options.limits.max_groups = 3;
  options.limits.max_group_bytes = 1 << 20;
  InProcessServer srv = StartInProcess(options);
  for (const char* name : {"a", "b", "c"}) ASSERT_TRUE(Create(*srv.stub, SmallGroup(name)).ok());
  const double engine_before = EngineBytes(srv);
  ExpectRefused(Create(*srv.stub, SmallGroup("d")), absl::StatusCode::kResourceExhausted,
                "--max_groups");
  EXPECT_EQ(EngineBytes(srv), engine_before);
  {
    grpc::ClientContext ctx;
    v1::DeleteGroupRequest del;
    del.set_group("a");
    v1::DeleteGroupResponse resp;
    ASSERT_TRUE(srv.stub->DeleteGroup(&ctx, del, &resp).ok());
  }
  EXPECT_TRUE(Create(*srv.stub, SmallGroup("d")).ok());

  ExpectRefused(Create(*srv.stub, SmallGroup("a")), absl::StatusCode::kResourceExhausted,
                "--max_groups");  // full again
  {
    grpc::ClientContext ctx;
    v1::DeleteGroupRequest del;
    del.set_group("b");
    v1::DeleteGroupResponse resp;
    ASSERT_TRUE(srv.stub->DeleteGroup(&ctx, del, &resp).ok());
  }
  // 2^18 fp32 elements: 1 MiB of weights plus states, past --max_group_bytes=1MiB.
  v1::CreateGroupRequest big = SmallGroup("big");
  *big.mutable_tensors(0) = Tensor("w", v1::FLOAT32, {1 << 18});
  ExpectRefused(Create(*srv.stub, big), absl::StatusCode::kInvalidArgument, "--max_group_bytes");
  *big.mutable_tensors(0) = Tensor("w", v1::FLOAT32, {1 << 16});
  EXPECT_TRUE(Create(*srv.stub, big).ok());
}

TEST(LimitsTest, NamesOutsideTheSafeAlphabetAreRefused) {
  InProcessServer srv = StartInProcess();
  const std::vector<std::pair<std::string, std::string>> bad = {
      {std::string("nul\0x", 5), "outside the name alphabet"},
      {"line\nbreak", "outside the name alphabet"},
      {"optd: stopped", "outside the name alphabet"},
      {"tab\there", "outside the name alphabet"},
      {"caf\xc3\xa9", "outside the name alphabet"},
      {"../up", "'..'"},
      {"a/../b", "'..'"},
      {"/abs", "must not start with '/'"},
      {"", "must not be empty"},
      {std::string(257, 'x'), "--max_name_bytes"},
  };
  for (const auto& [name, why] : bad) {
    const absl::Status g = Create(*srv.stub, SmallGroup(name));
    EXPECT_EQ(g.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(std::string(g.message()), HasSubstr(why)) << name;
    EXPECT_THAT(std::string(g.message()), Not(HasSubstr("\n")));
    v1::CreateGroupRequest t = SmallGroup("fine");
    t.mutable_tensors(0)->set_name(name);
    const absl::Status ts = Create(*srv.stub, t);
    EXPECT_EQ(ts.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(std::string(ts.message()), HasSubstr("tensors[0].name")) << ts;
  }
  // The alphabet as documented, '/' for hierarchy included.
  EXPECT_TRUE(Create(*srv.stub, SmallGroup("job-17/layer_0.attn")).ok());
  EXPECT_TRUE(Create(*srv.stub, SmallGroup(std::string(256, 'x'))).ok());
}

TEST(LimitsTest, ANameCannotForgeAServerLogLine) {
  InProcessServer srv = StartInProcess();
  ::testing::internal::CaptureStderr();
  grpc::ClientContext ctx;
  v1::GetGroupRequest req;
  req.set_group("x\noptd: stopped");
  v1::GroupInfo info;
  const absl::Status s = FromGrpc(srv.stub->GetGroup(&ctx, req, &info));
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(log, HasSubstr("GetGroup failed"));
  EXPECT_THAT(log, Not(HasSubstr("\noptd: stopped")));
  EXPECT_THAT(log, HasSubstr("x\\x0aoptd: stopped"));
}

TEST(LimitsTest, LearningRateAboveMaxLrIsRefused) {
  InProcessServer srv = StartInProcess();
  v1::CreateGroupRequest r = SmallGroup("lr");
  r.mutable_hyperparameters()->set_lr(1e30f);
  ExpectRefused(Create(*srv.stub, r), absl::StatusCode::kInvalidArgument, "--max_lr");
  ASSERT_TRUE(Create(*srv.stub, SmallGroup("lr")).ok());
  grpc::ClientContext ctx;
  v1::UpdateHyperparametersRequest up;
  up.set_group("lr");
  up.mutable_hyperparameters()->set_lr(1e30f);
  v1::GroupInfo info;
  ExpectRefused(FromGrpc(srv.stub->UpdateHyperparameters(&ctx, up, &info)),
                absl::StatusCode::kInvalidArgument, "--max_lr");
}

// Enabled once step_runner.cc's PlanFromBegin calls server::CheckLearningRate("begin.lr").
TEST(LimitsTest, DISABLED_StepLearningRateAboveMaxLrIsRefused) {
  InProcessServer srv = StartInProcess();
  ASSERT_TRUE(Create(*srv.stub, SmallGroup("s")).ok());
  ASSERT_TRUE(Upload(*srv.stub, "s", "w", v1::FLOAT32, AsBytes(RandomFloats(300, 1))).ok());
  StepOptions opts;
  opts.lr = 1e30f;
  StepResult r =
      RunStep(*srv.stub, "s", 1, {{"w", v1::FLOAT32, AsBytes(RandomFloats(300, 2))}}, opts);
  ExpectRefused(r.status, absl::StatusCode::kInvalidArgument, "--max_lr");
}

TEST(LimitsTest, TensorsListedTwiceAreRefused) {
  InProcessServer srv = StartInProcess(WithMetrics());
  ASSERT_TRUE(Create(*srv.stub, SmallGroup("d")).ok());
  ASSERT_TRUE(Upload(*srv.stub, "d", "w", v1::FLOAT32, AsBytes(RandomFloats(300, 1))).ok());
  const double engine_before = EngineBytes(srv);
  {
    grpc::ClientContext ctx;
    v1::PullWeightsRequest req;
    req.set_group("d");
    for (int i = 0; i < 1000; ++i) req.add_tensors("w");
    auto reader = srv.stub->PullWeights(&ctx, req);
    v1::WeightsMessage m;
    int messages = 0;
    while (reader->Read(&m)) ++messages;
    ExpectRefused(FromGrpc(reader->Finish()), absl::StatusCode::kInvalidArgument, "listed twice");
    EXPECT_EQ(messages, 0);
  }
  {
    grpc::ClientContext ctx;
    v1::ExportStateRequest req;
    req.set_group("d");
    req.add_tensors("w");
    req.add_tensors("w");
    auto reader = srv.stub->ExportState(&ctx, req);
    v1::StateChunk c;
    int messages = 0;
    while (reader->Read(&c)) ++messages;
    ExpectRefused(FromGrpc(reader->Finish()), absl::StatusCode::kInvalidArgument, "listed twice");
    EXPECT_EQ(messages, 0);
  }
  EXPECT_EQ(EngineBytes(srv), engine_before);
}

// A Subscribe stream that has started (its first version arrived), and its context to end it.
struct OpenSubscription {
  std::unique_ptr<grpc::ClientContext> ctx = std::make_unique<grpc::ClientContext>();
  std::unique_ptr<grpc::ClientReader<v1::WeightsMessage>> reader;
};

OpenSubscription Subscribe(v1::Optimizer::Stub& stub, const std::string& group) {
  OpenSubscription s;
  v1::SubscribeRequest req;
  req.set_group(group);
  req.set_send_current(true);
  s.reader = stub.Subscribe(s.ctx.get(), req);
  v1::WeightsMessage m;
  EXPECT_TRUE(s.reader->Read(&m));
  return s;
}

absl::Status PullStatus(v1::Optimizer::Stub& stub, const std::string& group) {
  auto pulled = Pull(stub, group);
  return pulled.status();
}

TEST(LimitsTest, StreamsBeyondMaxStreamsAreRefusedUntilOneEnds) {
  server::ServerOptions options;
  options.limits.max_streams = 2;
  InProcessServer srv = StartInProcess(options);
  ASSERT_TRUE(Create(*srv.stub, SmallGroup("g")).ok());
  ASSERT_TRUE(Upload(*srv.stub, "g", "w", v1::FLOAT32, AsBytes(RandomFloats(300, 1))).ok());
  OpenSubscription a = Subscribe(*srv.stub, "g");
  OpenSubscription b = Subscribe(*srv.stub, "g");
  ExpectRefused(PullStatus(*srv.stub, "g"), absl::StatusCode::kResourceExhausted, "--max_streams");
  const StepResult r =
      RunStep(*srv.stub, "g", 1, {{"w", v1::FLOAT32, AsBytes(RandomFloats(300, 2))}});
  ExpectRefused(r.status, absl::StatusCode::kResourceExhausted, "--max_streams");
  // Unary calls are not streams.
  EXPECT_TRUE(Create(*srv.stub, SmallGroup("h")).ok());

  a.ctx->TryCancel();
  a.reader->Finish();
  // The place frees when the subscriber's handler has noticed the cancel (it polls).
  absl::Status pulled;
  for (int i = 0; i < 200; ++i) {
    pulled = PullStatus(*srv.stub, "g");
    if (pulled.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(pulled.ok()) << pulled;
  b.ctx->TryCancel();
  b.reader->Finish();
}

TEST(LimitsTest, StreamsPerPeerAddressAreBounded) {
  server::ServerOptions options;
  options.limits.max_streams_per_peer = 1;
  InProcessServer srv = StartInProcess(options);
  ASSERT_TRUE(Create(*srv.stub, SmallGroup("g")).ok());
  ASSERT_TRUE(Upload(*srv.stub, "g", "w", v1::FLOAT32, AsBytes(RandomFloats(300, 1))).ok());
  OpenSubscription a = Subscribe(*srv.stub, "g");
  // Another connection from the same address counts too.
  auto other = MakeStub(srv.server->address());
  ExpectRefused(PullStatus(*other, "g"), absl::StatusCode::kResourceExhausted,
                "--max_streams_per_peer");
  a.ctx->TryCancel();
  a.reader->Finish();
}

std::vector<v1::GroupInfo> ListAll(v1::Optimizer::Stub& stub, int page_size,
                                   std::vector<int>* page_sizes) {
  std::vector<v1::GroupInfo> all;
  v1::ListGroupsRequest req;
  req.set_page_size(page_size);
  do {
    grpc::ClientContext ctx;
    v1::ListGroupsResponse resp;
    const grpc::Status s = stub.ListGroups(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (!s.ok()) break;
    page_sizes->push_back(resp.groups_size());
    for (const auto& g : resp.groups()) all.push_back(g);
    req.set_page_token(resp.next_page_token());
  } while (!req.page_token().empty());
  return all;
}

TEST(LimitsTest, ListGroupsPaginatesInNameOrder) {
  server::ServerOptions options;
  options.limits.max_list_page_size = 2000;
  InProcessServer srv = StartInProcess(options);
  constexpr int kGroups = 2500;
  for (int i = 0; i < kGroups; ++i) {
    ASSERT_TRUE(Create(*srv.stub, SmallGroup(absl::StrCat("g", 100000 + i))).ok()) << i;
  }
  std::vector<int> pages;
  std::vector<v1::GroupInfo> all = ListAll(*srv.stub, 0, &pages);  // the default page: 1000
  EXPECT_EQ(pages, (std::vector<int>{1000, 1000, 500}));
  ASSERT_EQ(all.size(), static_cast<size_t>(kGroups));
  for (int i = 0; i < kGroups; ++i) EXPECT_EQ(all[i].group(), absl::StrCat("g", 100000 + i));

  pages.clear();
  EXPECT_EQ(ListAll(*srv.stub, 5000, &pages).size(), static_cast<size_t>(kGroups));
  EXPECT_EQ(pages, (std::vector<int>{2000, 500}));  // lowered to --max_list_page_size

  // Groups deleted between pages do not shift the next page.
  grpc::ClientContext ctx;
  v1::ListGroupsRequest first;
  first.set_page_size(10);
  v1::ListGroupsResponse page;
  ASSERT_TRUE(srv.stub->ListGroups(&ctx, first, &page).ok());
  EXPECT_EQ(page.next_page_token(), "g100009");
  for (const char* name : {"g100000", "g100005", "g100010"}) {
    grpc::ClientContext dctx;
    v1::DeleteGroupRequest del;
    del.set_group(name);
    v1::DeleteGroupResponse resp;
    ASSERT_TRUE(srv.stub->DeleteGroup(&dctx, del, &resp).ok());
  }
  grpc::ClientContext ctx2;
  v1::ListGroupsRequest next = first;
  next.set_page_token(page.next_page_token());
  v1::ListGroupsResponse page2;
  ASSERT_TRUE(srv.stub->ListGroups(&ctx2, next, &page2).ok());
  ASSERT_EQ(page2.groups_size(), 10);
  EXPECT_EQ(page2.groups(0).group(), "g100011");

  grpc::ClientContext ctx3;
  v1::ListGroupsRequest negative;
  negative.set_page_size(-1);
  v1::ListGroupsResponse none;
  EXPECT_EQ(srv.stub->ListGroups(&ctx3, negative, &none).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(LimitsTest, ListGroupsPagesStayUnderTheMessageLimit) {
  server::ServerOptions options;
  options.max_message_bytes = 1 << 20;
  options.chunk_bytes = 256 << 10;
  InProcessServer srv = StartInProcess(options);
  // Ten groups of about 250 KB of description each: four fit a 1 MiB message.
  for (int g = 0; g < 10; ++g) {
    v1::CreateGroupRequest r;
    r.set_group(absl::StrCat("wide", g));
    for (int t = 0; t < 1000; ++t) {
      *r.add_tensors() = Tensor(absl::StrCat(std::string(230, 't'), t), v1::FLOAT32, {1});
    }
    ASSERT_TRUE(Create(*srv.stub, r).ok()) << g;
  }
  std::vector<int> pages;
  EXPECT_EQ(ListAll(*srv.stub, 100, &pages).size(), 10u);
  EXPECT_GT(pages.size(), 2u);
  for (int n : pages) EXPECT_LE(n, 4);
}

}  // namespace
}  // namespace optd::testing
