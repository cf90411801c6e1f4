// Security of the gRPC port against real servers on 127.0.0.1 (docs/security.md): TLS and mutual
// TLS with certificates made by openssl at run time (tests/client/test_certificates.h),
// certificate reload, bearer tokens with
// roles and group prefixes on every method (unary and streamed), their failure metric, token
// file reload, reflection off by default, and the optd binary's flags.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/client_interceptor.h"
#include "gtest/gtest.h"
#include "tests/client/test_certificates.h"
#include "tests/server/server_test_util.h"

namespace optd::testing {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kN = 1000;  // elements of the test tensor

// Tokens of the test token file (Note [Token file] in server/auth_tokens.h).
constexpr char kTrainA[] = "train-a-0123456789abcdef";
constexpr char kAdminA[] = "admin-a-0123456789abcdef";
constexpr char kTrainB[] = "train-b-0123456789abcdef";
constexpr char kAdminAll[] = "admin-all-0123456789abcdef";
constexpr char kTokenFile[] =
    "# test tokens\n"
    "train-a-0123456789abcdef  train  team-a.\n"
    "admin-a-0123456789abcdef  admin  team-a.*\n"
    "\n"
    "train-b-0123456789abcdef\ttrain\tteam-b.\n"
    "admin-all-0123456789abcdef admin *\n";

std::string ReadFile(const std::string& path) { return ReadTextFile(path); }
void WriteFile(const std::string& path, const std::string& text) { ReplaceTextFile(path, text); }

const TestCertificates& Certs() {
  auto certs = GetTestCertificates();
  if (!certs.ok()) {
    ADD_FAILURE() << certs.status();
    static const TestCertificates* const none = new TestCertificates();
    return *none;
  }
  return **certs;
}

std::shared_ptr<grpc::ChannelCredentials> Tls(const std::string& root_ca,
                                              const std::string& cert = "",
                                              const std::string& key = "") {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = ReadFile(root_ca);
  if (!cert.empty()) o.pem_cert_chain = ReadFile(cert);
  if (!key.empty()) o.pem_private_key = ReadFile(key);
  return grpc::SslCredentials(o);
}

// Adds "authorization: Bearer <token>" to every call of a channel (so that the shared test
// helpers, which make their own ClientContext, carry the token too).
class TokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(const std::string& value) : value_(value) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", value_});
    }
    methods->Proceed();
  }

 private:
  const std::string value_;
};

class TokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(std::string value) : value_(std::move(value)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new TokenInterceptor(value_);
  }

 private:
  const std::string value_;
};

std::shared_ptr<grpc::Channel> Channel(const std::string& address,
                                       std::shared_ptr<grpc::ChannelCredentials> credentials,
                                       const std::string& authorization = "") {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> hooks;
  if (!authorization.empty()) {
    hooks.push_back(std::make_unique<TokenInterceptorFactory>(authorization));
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, std::move(credentials),
                                                                 args, std::move(hooks));
}

std::unique_ptr<v1::Optimizer::Stub> Stub(const std::string& address,
                                          std::shared_ptr<grpc::ChannelCredentials> credentials,
                                          const std::string& token = "") {
  return v1::Optimizer::NewStub(
      Channel(address, std::move(credentials), token.empty() ? "" : "Bearer " + token));
}

std::unique_ptr<v1::Optimizer::Stub> Plain(const std::string& address,
                                           const std::string& token = "") {
  return Stub(address, grpc::InsecureChannelCredentials(), token);
}

absl::Status ListGroups(v1::Optimizer::Stub& stub, std::vector<std::string>* names = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::ListGroupsResponse resp;
  grpc::Status s = stub.ListGroups(&ctx, v1::ListGroupsRequest(), &resp);
  if (names != nullptr) {
    names->clear();
    for (const auto& g : resp.groups()) names->push_back(g.group());
  }
  return FromGrpc(s);
}

absl::Status CreateGroup(v1::Optimizer::Stub& stub, const std::string& group) {
  grpc::ClientContext ctx;
  v1::CreateGroupRequest req;
  req.set_group(group);
  *req.add_tensors() = Tensor("w", v1::FLOAT32, {kN});
  v1::GroupInfo info;
  return FromGrpc(stub.CreateGroup(&ctx, req, &info));
}

absl::Status GetGroup(v1::Optimizer::Stub& stub, const std::string& group) {
  grpc::ClientContext ctx;
  v1::GetGroupRequest req;
  req.set_group(group);
  v1::GroupInfo info;
  return FromGrpc(stub.GetGroup(&ctx, req, &info));
}

absl::Status DeleteGroup(v1::Optimizer::Stub& stub, const std::string& group) {
  grpc::ClientContext ctx;
  v1::DeleteGroupRequest req;
  req.set_group(group);
  v1::DeleteGroupResponse resp;
  return FromGrpc(stub.DeleteGroup(&ctx, req, &resp));
}

absl::Status SetLr(v1::Optimizer::Stub& stub, const std::string& group, float lr) {
  grpc::ClientContext ctx;
  v1::UpdateHyperparametersRequest req;
  req.set_group(group);
  req.mutable_hyperparameters()->set_lr(lr);
  v1::GroupInfo info;
  return FromGrpc(stub.UpdateHyperparameters(&ctx, req, &info));
}

absl::Status UploadW(v1::Optimizer::Stub& stub, const std::string& group) {
  return Upload(stub, group, "w", v1::FLOAT32, AsBytes(RandomFloats(kN, 1))).status();
}

StepResult StepW(v1::Optimizer::Stub& stub, const std::string& group, int64_t step) {
  return RunStep(stub, group, step, {{"w", v1::FLOAT32, AsBytes(RandomFloats(kN, 10 + step))}});
}

absl::Status Import(v1::Optimizer::Stub& stub, const std::string& group) {
  grpc::ClientContext ctx;
  v1::ImportStateResponse resp;
  auto writer = stub.ImportState(&ctx, &resp);
  v1::StateChunk c;
  c.set_group(group);
  c.set_tensor("w");
  c.set_key("step");
  c.set_type(v1::STATE_ELEMENT_TYPE_INT64);
  const int64_t step = 1;
  c.set_data(std::string(reinterpret_cast<const char*>(&step), sizeof(step)));
  writer->Write(c);
  writer->WritesDone();
  return FromGrpc(writer->Finish());
}

absl::Status Save(v1::Optimizer::Stub& stub, const std::string& name,
                  const std::vector<std::string>& groups, std::vector<std::string>* saved) {
  grpc::ClientContext ctx;
  v1::SaveCheckpointRequest req;
  req.set_name(name);
  for (const auto& g : groups) req.add_groups(g);
  v1::SaveCheckpointResponse resp;
  grpc::Status s = stub.SaveCheckpoint(&ctx, req, &resp);
  if (saved != nullptr) saved->assign(resp.groups().begin(), resp.groups().end());
  return FromGrpc(s);
}

absl::Status Restore(v1::Optimizer::Stub& stub, const std::string& name,
                     const std::vector<std::string>& groups) {
  grpc::ClientContext ctx;
  v1::RestoreCheckpointRequest req;
  req.set_name(name);
  for (const auto& g : groups) req.add_groups(g);
  v1::RestoreCheckpointResponse resp;
  return FromGrpc(stub.RestoreCheckpoint(&ctx, req, &resp));
}

// Exports the group's state and imports it back, message for message.
absl::Status ExportImport(v1::Optimizer::Stub& stub, const std::string& group) {
  std::vector<v1::StateChunk> chunks;
  {
    grpc::ClientContext ctx;
    v1::ExportStateRequest req;
    req.set_group(group);
    auto reader = stub.ExportState(&ctx, req);
    v1::StateChunk c;
    while (reader->Read(&c)) chunks.push_back(c);
    if (absl::Status s = FromGrpc(reader->Finish()); !s.ok()) return s;
  }
  grpc::ClientContext ctx;
  v1::ImportStateResponse resp;
  auto writer = stub.ImportState(&ctx, &resp);
  for (auto& c : chunks) {
    c.set_group(group);
    if (!writer->Write(c)) break;
  }
  writer->WritesDone();
  absl::Status s = FromGrpc(writer->Finish());
  if (s.ok() && resp.tensors() != 1) return absl::InternalError("expected 1 tensor imported");
  return s;
}

// Reads the first message of a Subscribe stream (the current version, with send_current).
absl::Status SubscribeFirst(v1::Optimizer::Stub& stub, const std::string& group) {
  grpc::ClientContext ctx;
  v1::SubscribeRequest req;
  req.set_group(group);
  req.set_send_current(true);
  auto reader = stub.Subscribe(&ctx, req);
  v1::WeightsMessage m;
  if (reader->Read(&m)) {
    ctx.TryCancel();
    reader->Finish().ok();
    return absl::OkStatus();
  }
  return FromGrpc(reader->Finish());
}

// Calls until `call` succeeds or 60 s have passed (files are re-read every second here).
template <typename Call>
absl::Status EventuallyOk(Call call) {
  absl::Status s;
  for (int i = 0; i < 600; ++i) {
    s = call();
    if (s.ok()) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return s;
}

server::ServerOptions TlsOptions() {
  server::ServerOptions o;
  o.tls_cert_file = Certs().server_cert;
  o.tls_key_file = Certs().server_key;
  return o;
}

// ---------------------------------------------------------------------------------------------
// TLS

TEST(SecurityTest, TlsServesTrustedClients) {
  InProcessServer srv = StartInProcess(TlsOptions());
  ASSERT_NE(srv.server, nullptr);
  auto stub = Stub(srv.server->address(), Tls(Certs().ca));
  ASSERT_TRUE(CreateGroup(*stub, "g").ok());
  ASSERT_TRUE(UploadW(*stub, "g").ok());
  StepResult r = StepW(*stub, "g", 1);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.done.version(), 1);
  EXPECT_EQ(r.weights["w"].size(), static_cast<size_t>(kN * 4));
  auto pulled = Pull(*stub, "g");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ((*pulled)["w"], r.weights["w"]);
}

TEST(SecurityTest, TlsRefusesPlaintextAndUntrustedClients) {
  InProcessServer srv = StartInProcess(TlsOptions());
  ASSERT_NE(srv.server, nullptr);
  absl::Status plain = ListGroups(*Plain(srv.server->address()));
  EXPECT_EQ(plain.code(), absl::StatusCode::kUnavailable) << plain;
  // A client that trusts another CA does not accept the server's certificate.
  absl::Status untrusted = ListGroups(*Stub(srv.server->address(), Tls(Certs().ca2)));
  EXPECT_EQ(untrusted.code(), absl::StatusCode::kUnavailable) << untrusted;
  EXPECT_TRUE(ListGroups(*Stub(srv.server->address(), Tls(Certs().ca))).ok());
}

TEST(SecurityTest, MutualTlsNeedsAClientCertificateFromTheClientCa) {
  server::ServerOptions o = TlsOptions();
  o.tls_client_ca_file = Certs().ca;
  InProcessServer srv = StartInProcess(o);
  ASSERT_NE(srv.server, nullptr);
  const std::string address = srv.server->address();
  absl::Status none = ListGroups(*Stub(address, Tls(Certs().ca)));
  EXPECT_EQ(none.code(), absl::StatusCode::kUnavailable) << none;
  absl::Status foreign =
      ListGroups(*Stub(address, Tls(Certs().ca, Certs().client2_cert, Certs().client2_key)));
  EXPECT_EQ(foreign.code(), absl::StatusCode::kUnavailable) << foreign;
  absl::Status plain = ListGroups(*Plain(address));
  EXPECT_EQ(plain.code(), absl::StatusCode::kUnavailable) << plain;
  auto stub = Stub(address, Tls(Certs().ca, Certs().client_cert, Certs().client_key));
  ASSERT_TRUE(CreateGroup(*stub, "g").ok());
  ASSERT_TRUE(UploadW(*stub, "g").ok());
  EXPECT_TRUE(StepW(*stub, "g", 1).status.ok());
}

TEST(SecurityTest, CertificateFilesAreReloadedWhenTheyChange) {
  const std::string dir = MakeTempDir();
  server::ServerOptions o;
  o.tls_cert_file = dir + "/cert.pem";
  o.tls_key_file = dir + "/key.pem";
  o.credential_refresh = absl::Seconds(1);
  WriteFile(o.tls_cert_file, ReadFile(Certs().server_cert));
  WriteFile(o.tls_key_file, ReadFile(Certs().server_key));
  InProcessServer srv = StartInProcess(o);
  ASSERT_NE(srv.server, nullptr);
  const std::string address = srv.server->address();
  ASSERT_TRUE(ListGroups(*Stub(address, Tls(Certs().ca))).ok());
  ASSERT_FALSE(ListGroups(*Stub(address, Tls(Certs().ca2))).ok());

  // The key first: until the certificate follows, the pair does not match and the server keeps
  // the old one.
  WriteFile(o.tls_key_file, ReadFile(Certs().server2_key));
  WriteFile(o.tls_cert_file, ReadFile(Certs().server2_cert));
  // Each attempt on a fresh channel: a new connection makes a new handshake.
  absl::Status s = EventuallyOk([&] { return ListGroups(*Stub(address, Tls(Certs().ca2))); });
  EXPECT_TRUE(s.ok()) << "the server never presented the new certificate: " << s;
  EXPECT_FALSE(ListGroups(*Stub(address, Tls(Certs().ca))).ok());
}

TEST(SecurityTest, BadTlsFilesFailTheStartNamingTheFlag) {
  server::ServerOptions o = TlsOptions();
  o.listen_address = "127.0.0.1:0";
  o.backend = TestBackend();
  o.tls_key_file = Certs().server2_key;  // not the key of server.pem
  auto s = server::Server::BuildAndStart(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("--tls_key"));

  o = TlsOptions();
  o.backend = TestBackend();
  o.tls_cert_file = Certs().dir + "/missing.pem";
  s = server::Server::BuildAndStart(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("--tls_cert"));
}

// ---------------------------------------------------------------------------------------------
// Tokens

class TokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    WriteFile(dir_ + "/tokens", kTokenFile);
    server::ServerOptions o;
    o.token_file = dir_ + "/tokens";
    o.checkpoint_dir = dir_ + "/checkpoints";
    o.metrics_listen_address = "127.0.0.1:0";
    o.credential_refresh = absl::Seconds(1);
    srv_ = StartInProcess(o);
    ASSERT_NE(srv_.server, nullptr);
    address_ = srv_.server->address();
    admin_all_ = Plain(address_, kAdminAll);
    // One group per team, weights uploaded.
    for (const char* g : {"team-a.g", "team-b.g"}) {
      ASSERT_TRUE(CreateGroup(*admin_all_, g).ok());
      ASSERT_TRUE(UploadW(*admin_all_, g).ok());
    }
  }

  double Failures(const std::string& reason) {
    auto text = HttpGet(srv_.server->metrics_port(), "/metrics");
    EXPECT_TRUE(text.ok()) << text.status();
    return MetricValue(text.ok() ? *text : "", "optd_auth_failures_total",
                       absl::StrCat("reason=\"", reason, "\""));
  }

  std::string dir_;
  InProcessServer srv_;
  std::string address_;
  std::unique_ptr<v1::Optimizer::Stub> admin_all_;
};

TEST_F(TokenTest, MissingOrWrongTokenIsUnauthenticatedOnEveryPath) {
  for (const std::string token : {"", "not-a-token-0123456789"}) {
    SCOPED_TRACE(token.empty() ? "no token" : "wrong token");
    auto stub = Plain(address_, token);
    EXPECT_EQ(ListGroups(*stub).code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(GetGroup(*stub, "team-a.g").code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(CreateGroup(*stub, "team-a.new").code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(DeleteGroup(*stub, "team-a.g").code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(StepW(*stub, "team-a.g", 1).status.code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(UploadW(*stub, "team-a.g").code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(Pull(*stub, "team-a.g").status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(SubscribeFirst(*stub, "team-a.g").code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(Export(*stub, "team-a.g").status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(Import(*stub, "team-a.g").code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(Save(*stub, "team-a.ck", {}, nullptr).code(), absl::StatusCode::kUnauthenticated);
  }
  EXPECT_EQ(Failures("missing_token"), 11);
  EXPECT_EQ(Failures("unknown_token"), 11);
  EXPECT_EQ(Failures("wrong_role"), 0);
  EXPECT_EQ(Failures("out_of_scope"), 0);
  // Nothing happened: the group is there, at version 0.
  int64_t version = -1;
  ASSERT_TRUE(Pull(*admin_all_, "team-a.g", &version).ok());
  EXPECT_EQ(version, 0);
}

TEST_F(TokenTest, TrainTokenStepsPullsSubscribesAndExportsItsGroups) {
  auto train = Plain(address_, kTrainA);
  StepResult r = StepW(*train, "team-a.g", 1);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.done.version(), 1);
  EXPECT_TRUE(Pull(*train, "team-a.g").ok());
  EXPECT_TRUE(SubscribeFirst(*train, "team-a.g").ok());
  EXPECT_TRUE(GetGroup(*train, "team-a.g").ok());
  EXPECT_TRUE(Export(*train, "team-a.g").ok());
  std::vector<std::string> names;
  ASSERT_TRUE(ListGroups(*train, &names).ok());
  EXPECT_EQ(names, std::vector<std::string>{"team-a.g"});
  ASSERT_TRUE(ListGroups(*admin_all_, &names).ok());
  EXPECT_EQ(names.size(), 2u);
  EXPECT_EQ(Failures("wrong_role") + Failures("out_of_scope"), 0);
}

TEST_F(TokenTest, TrainTokenCannotAdminister) {
  auto train = Plain(address_, kTrainA);
  const std::vector<std::pair<const char*, absl::Status>> refused = {
      {"CreateGroup", CreateGroup(*train, "team-a.new")},
      {"DeleteGroup", DeleteGroup(*train, "team-a.g")},
      {"UploadWeights", UploadW(*train, "team-a.g")},
      {"UpdateHyperparameters", SetLr(*train, "team-a.g", 1e6f)},
      {"ImportState", Import(*train, "team-a.g")},
      {"SaveCheckpoint", Save(*train, "team-a.ck", {"team-a.g"}, nullptr)},
      {"RestoreCheckpoint", Restore(*train, "team-a.ck", {"team-a.g"})},
  };
  for (const auto& [method, status] : refused) {
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << method << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(method));
    EXPECT_THAT(std::string(status.message()), HasSubstr("role train"));
  }
  EXPECT_EQ(Failures("wrong_role"), 7);
  // Nothing changed: same group, no new one, lr untouched, weights still the uploaded ones.
  std::vector<std::string> names;
  ASSERT_TRUE(ListGroups(*admin_all_, &names).ok());
  EXPECT_EQ(names, (std::vector<std::string>{"team-a.g", "team-b.g"}));
  auto w = Pull(*admin_all_, "team-a.g");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ((*w)["w"], AsBytes(RandomFloats(kN, 1)));
}

TEST_F(TokenTest, TokensStayInsideTheirPrefixes) {
  auto train_a = Plain(address_, kTrainA);
  auto admin_a = Plain(address_, kAdminA);
  StepResult r = StepW(*train_a, "team-b.g", 1);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kPermissionDenied) << r.status;
  EXPECT_THAT(std::string(r.status.message()), HasSubstr("'team-b.g'"));
  EXPECT_THAT(std::string(r.status.message()), HasSubstr("train"));
  EXPECT_EQ(Pull(*train_a, "team-b.g").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(SubscribeFirst(*train_a, "team-b.g").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Export(*train_a, "team-b.g").status().code(), absl::StatusCode::kPermissionDenied);
  // Outside the prefixes, existence is not revealed either.
  EXPECT_EQ(GetGroup(*train_a, "team-b.nothing").code(), absl::StatusCode::kPermissionDenied);

  absl::Status del = DeleteGroup(*admin_a, "team-b.g");
  EXPECT_EQ(del.code(), absl::StatusCode::kPermissionDenied) << del;
  EXPECT_THAT(std::string(del.message()), HasSubstr("'team-b.g'"));
  EXPECT_THAT(std::string(del.message()), HasSubstr("admin"));
  EXPECT_EQ(CreateGroup(*admin_a, "team-b.new").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(UploadW(*admin_a, "team-b.g").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Import(*admin_a, "team-b.g").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(SetLr(*admin_a, "team-b.g", 1e6f).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Failures("out_of_scope"), 10);

  // team-b's group is untouched and still usable by team-b.
  auto train_b = Plain(address_, kTrainB);
  r = StepW(*train_b, "team-b.g", 1);
  EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.done.version(), 1);
}

TEST_F(TokenTest, AdminTokenAdministersItsPrefix) {
  auto admin_a = Plain(address_, kAdminA);
  ASSERT_TRUE(CreateGroup(*admin_a, "team-a.new").ok());
  ASSERT_TRUE(UploadW(*admin_a, "team-a.new").ok());
  EXPECT_TRUE(SetLr(*admin_a, "team-a.new", 0.01f).ok());
  EXPECT_TRUE(StepW(*admin_a, "team-a.new", 1).status.ok());
  EXPECT_TRUE(ExportImport(*admin_a, "team-a.new").ok());

  // SaveCheckpoint without a list saves the groups the token covers, and only those.
  std::vector<std::string> saved;
  ASSERT_TRUE(Save(*admin_a, "team-a.ck", {}, &saved).ok());
  EXPECT_EQ(saved, (std::vector<std::string>{"team-a.g", "team-a.new"}));
  // Checkpoint names are scoped like groups.
  EXPECT_EQ(Save(*admin_a, "team-b.ck", {"team-a.g"}, nullptr).code(),
            absl::StatusCode::kPermissionDenied);
  // Restoring "whatever the file holds" needs a token of every group; a list in scope is fine.
  EXPECT_EQ(Restore(*admin_a, "team-a.ck", {}).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Restore(*admin_a, "team-a.ck", {"team-b.g"}).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(Restore(*admin_a, "team-a.ck", {"team-a.new"}).ok());
  EXPECT_TRUE(Restore(*admin_all_, "team-a.ck", {}).ok());

  EXPECT_TRUE(DeleteGroup(*admin_a, "team-a.new").ok());
  EXPECT_EQ(GetGroup(*admin_a, "team-a.new").code(), absl::StatusCode::kNotFound);
}

TEST_F(TokenTest, TokenFileIsReloadedWhenItChanges) {
  constexpr char kNew[] = "new-train-a-0123456789abcdef";
  WriteFile(dir_ + "/tokens", absl::StrCat(kAdminAll, " admin *\n", kNew, " train team-a.\n"));
  absl::Status s = EventuallyOk([&] { return ListGroups(*Plain(address_, kNew)); });
  EXPECT_TRUE(s.ok()) << "the new token was never accepted: " << s;
  EXPECT_EQ(ListGroups(*Plain(address_, kTrainA)).code(), absl::StatusCode::kUnauthenticated);

  // A file that no longer parses is ignored: the tokens stay as they were.
  WriteFile(dir_ + "/tokens", "short train team-a.\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // two refreshes
  EXPECT_TRUE(ListGroups(*Plain(address_, kNew)).ok());
}

TEST(SecurityTest, TokensOverTls) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/tokens", kTokenFile);
  server::ServerOptions o = TlsOptions();
  o.token_file = dir + "/tokens";
  InProcessServer srv = StartInProcess(o);
  ASSERT_NE(srv.server, nullptr);
  const std::string address = srv.server->address();
  auto admin = Stub(address, Tls(Certs().ca), kAdminA);
  ASSERT_TRUE(CreateGroup(*admin, "team-a.g").ok());
  ASSERT_TRUE(UploadW(*admin, "team-a.g").ok());
  auto train = Stub(address, Tls(Certs().ca), kTrainA);
  EXPECT_TRUE(StepW(*train, "team-a.g", 1).status.ok());
  EXPECT_EQ(ListGroups(*Stub(address, Tls(Certs().ca))).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(DeleteGroup(*train, "team-a.g").code(), absl::StatusCode::kPermissionDenied);
}

TEST(SecurityTest, BadTokenFileFailsTheStart) {
  const std::string dir = MakeTempDir();
  server::ServerOptions o;
  o.backend = TestBackend();
  o.token_file = dir + "/tokens";
  WriteFile(o.token_file, "# nothing but a comment\n");
  auto s = server::Server::BuildAndStart(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("--token_file"));
  WriteFile(o.token_file, std::string(kTrainA) + " trainer team-a.\n");
  s = server::Server::BuildAndStart(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("line 1"));
  // The message never echoes a token.
  EXPECT_THAT(std::string(s.status().message()), ::testing::Not(HasSubstr(kTrainA)));
}

// ---------------------------------------------------------------------------------------------
// Reflection

// The names of the services that reflection lists, or the call's status.
absl::StatusOr<std::string> ReflectionList(const std::string& address) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  auto await = [&cq] {
    void* tag;
    bool ok;
    cq.Next(&tag, &ok);
  };
  auto call = generic.PrepareCall(
      &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  await();
  grpc::Slice list_services(std::string("\x3a\x00", 2));  // list_services: ""
  call->Write(grpc::ByteBuffer(&list_services, 1), reinterpret_cast<void*>(2));
  await();
  call->WritesDone(reinterpret_cast<void*>(3));
  await();
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  await();
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  await();
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
  if (!status.ok()) return FromGrpc(status);
  std::vector<grpc::Slice> slices;
  (void)response.Dump(&slices);
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

TEST(SecurityTest, ReflectionIsOffByDefault) {
  InProcessServer off = StartInProcess();
  ASSERT_NE(off.server, nullptr);
  auto listed = ReflectionList(off.server->address());
  EXPECT_EQ(listed.status().code(), absl::StatusCode::kUnimplemented) << listed.status();

  server::ServerOptions o;
  o.reflection = true;
  InProcessServer on = StartInProcess(o);
  ASSERT_NE(on.server, nullptr);
  listed = ReflectionList(on.server->address());
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_THAT(*listed, HasSubstr("optd.v1.Optimizer"));
  // A server built after one with reflection still has none (the option is per server).
  InProcessServer after = StartInProcess();
  ASSERT_NE(after.server, nullptr);
  EXPECT_EQ(ReflectionList(after.server->address()).status().code(),
            absl::StatusCode::kUnimplemented);
}

// ---------------------------------------------------------------------------------------------
// The optd binary

TEST(SecurityTest, BinaryServesTlsAndTokensFromFlags) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/tokens", kTokenFile);
  auto child = ChildServer::Start({"--tls_cert=" + Certs().server_cert,
                                   "--tls_key=" + Certs().server_key,
                                   "--tls_client_ca=" + Certs().ca,
                                   "--token_file=" + dir + "/tokens"});
  ASSERT_TRUE(child.ok()) << child.status();
  const std::string address = (*child)->address();
  auto mtls = [&] { return Tls(Certs().ca, Certs().client_cert, Certs().client_key); };
  auto admin = Stub(address, mtls(), kAdminA);
  ASSERT_TRUE(CreateGroup(*admin, "team-a.g").ok());
  ASSERT_TRUE(UploadW(*admin, "team-a.g").ok());
  EXPECT_TRUE(StepW(*Stub(address, mtls(), kTrainA), "team-a.g", 1).status.ok());
  EXPECT_EQ(ListGroups(*Stub(address, mtls())).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ListGroups(*Stub(address, Tls(Certs().ca), kAdminA)).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(ListGroups(*Plain(address, kAdminA)).code(), absl::StatusCode::kUnavailable);
  auto metrics = HttpGet((*child)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(MetricValue(*metrics, "optd_auth_failures_total", "reason=\"missing_token\""), 1);
  EXPECT_EQ((*child)->Kill(SIGTERM), 0);
}

TEST(SecurityTest, BinaryRefusesBadCredentialFlags) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/tokens", "not a token file\n");
  auto child = ChildServer::Start({"--token_file=" + dir + "/tokens"});
  ASSERT_FALSE(child.ok());
  EXPECT_THAT(std::string(child.status().message()), HasSubstr("exited early"));
  child = ChildServer::Start({"--tls_key=" + Certs().server_key});
  EXPECT_FALSE(child.ok());
}

}  // namespace
}  // namespace optd::testing
