// The C++ client's TLS and token options (ClientOptions::tls, ::token) against the optd binary
// serving mutual TLS and bearer tokens on 127.0.0.1: every kind of call carries them, and the
// server's refusals reach the caller with their codes.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "optd/client/client.h"
#include "tests/client/server_process.h"
#include "tests/client/test_certificates.h"

namespace optd::client {
namespace {

using testing::ServerProcess;

constexpr char kAdmin[] = "client-admin-0123456789abcdef";
constexpr char kTrain[] = "client-train-0123456789abcdef";
constexpr int64_t kN = 3000;

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

class ClientSecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string binary = testing::ServerBinary();
    if (binary.empty()) GTEST_SKIP() << "OPTD_SERVER_BIN is not set (ctest sets it)";
    auto certs = testing::GetTestCertificates();
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *certs;
    dir_ = testing::MakeTempDir("optd-client-security");
    testing::ReplaceTextFile(dir_ + "/tokens", absl::StrCat(kAdmin, " admin run.\n", kTrain,
                                                            " train run.\n"));
    auto s = ServerProcess::Start(binary, dir_ + "/server",
                                  {"--tls_cert=" + certs_->server_cert,
                                   "--tls_key=" + certs_->server_key,
                                   "--tls_client_ca=" + certs_->ca,
                                   "--token_file=" + dir_ + "/tokens"});
    ASSERT_TRUE(s.ok()) << s.status();
    server_.reset(*s);
  }

  // Mutual TLS: the CA and key as paths, the certificate as PEM text (both forms are accepted).
  ClientOptions Secure(const std::string& token) const {
    ClientOptions o;
    o.tls.root_ca = certs_->ca;
    o.tls.client_cert = testing::ReadTextFile(certs_->client_cert);
    o.tls.client_key = certs_->client_key;
    o.token = token;
    return o;
  }

  std::unique_ptr<Client> Connect(const ClientOptions& options) {
    auto c = Client::Create(server_->target(), options);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  const testing::TestCertificates* certs_ = nullptr;
  std::string dir_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(ClientSecurityTest, EveryCallCarriesTlsAndToken) {
  ClientOptions o = Secure(kAdmin);
  o.streams = 2;  // two connections, each with its own TLS session
  o.chunk_bytes = 4096;
  auto c = Connect(o);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->CreateGroup("run.g", {{"w", DType::kFloat32, {kN}}}).ok());
  std::vector<float> w = Random(kN, 1);
  ASSERT_TRUE(c->UploadWeights("run.g", {{"w", DType::kFloat32, w.data(), kN}}).ok());
  Hyperparameters h;
  h.lr = 0.01f;
  ASSERT_TRUE(c->UpdateHyperparameters("run.g", h).ok());
  std::vector<float> g = Random(kN, 2);
  auto r = c->Step("run.g", 1, {{"w", DType::kFloat32, g.data(), kN}},
                   {{"w", DType::kFloat32, w.data(), kN}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 1);
  std::vector<float> pulled(kN);
  auto v = c->PullWeights("run.g", {{"w", DType::kFloat32, pulled.data(), kN}});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(pulled, w);
  auto sub = c->Subscribe("run.g", /*send_current=*/true);
  std::vector<float> seen(kN);
  auto sv = sub->Next({{"w", DType::kFloat32, seen.data(), kN}});
  ASSERT_TRUE(sv.ok()) << sv.status();
  EXPECT_EQ(seen, w);
  sub->Cancel();
  auto state = c->ExportState("run.g");
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_TRUE(c->ImportState("run.g", *state).ok());
  auto saved = c->SaveCheckpoint("run.ck");
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(saved->groups, std::vector<std::string>{"run.g"});
  auto listed = c->ListGroups();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 1u);
  EXPECT_TRUE(c->DeleteGroup("run.g").ok());
}

TEST_F(ClientSecurityTest, RefusalsKeepTheirCodes) {
  auto admin = Connect(Secure(kAdmin));
  ASSERT_NE(admin, nullptr);
  ASSERT_TRUE(admin->CreateGroup("run.g", {{"w", DType::kFloat32, {kN}}}).ok());
  std::vector<float> w = Random(kN, 1);
  ASSERT_TRUE(admin->UploadWeights("run.g", {{"w", DType::kFloat32, w.data(), kN}}).ok());

  auto train = Connect(Secure(kTrain));
  ASSERT_NE(train, nullptr);
  std::vector<float> g = Random(kN, 2);
  EXPECT_TRUE(train->Step("run.g", 1, {{"w", DType::kFloat32, g.data(), kN}}, {}).ok());
  auto denied = train->DeleteGroup("run.g");
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied) << denied;
  EXPECT_NE(denied.message().find("role train"), std::string::npos) << denied;
  EXPECT_EQ(train->UploadWeights("run.g", {{"w", DType::kFloat32, w.data(), kN}}).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(train->GetGroup("other.g").status().code(), absl::StatusCode::kPermissionDenied);

  auto anonymous = Connect(Secure(""));
  ASSERT_NE(anonymous, nullptr);
  EXPECT_EQ(anonymous->GetGroup("run.g").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(anonymous->Step("run.g", 2, {{"w", DType::kFloat32, g.data(), kN}}, {})
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);

  ClientOptions plain;
  plain.token = kAdmin;
  auto plaintext = Connect(plain);
  ASSERT_NE(plaintext, nullptr);
  EXPECT_EQ(plaintext->GetGroup("run.g").status().code(), absl::StatusCode::kUnavailable);
  ClientOptions no_client_cert = Secure(kAdmin);
  no_client_cert.tls.client_cert.clear();
  no_client_cert.tls.client_key.clear();
  auto one_sided = Connect(no_client_cert);
  ASSERT_NE(one_sided, nullptr);
  EXPECT_EQ(one_sided->GetGroup("run.g").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientSecurityTest, ServerNameOverride) {
  // The certificate names localhost and 127.0.0.1; the override replaces the target's host.
  ClientOptions o = Secure(kAdmin);
  o.tls.server_name = "localhost";
  auto named = Connect(o);
  ASSERT_NE(named, nullptr);
  EXPECT_TRUE(named->ListGroups().ok());
  o.tls.server_name = "optd.example.com";
  auto wrong = Connect(o);
  ASSERT_NE(wrong, nullptr);
  EXPECT_EQ(wrong->ListGroups().status().code(), absl::StatusCode::kUnavailable);
}

TEST(ClientSecurityOptionsTest, BadOptionsFailCreate) {
  ClientOptions o;
  o.tls.root_ca = "/nonexistent/ca.pem";
  auto c = Client::Create("127.0.0.1:1", o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("tls.root_ca"), std::string::npos) << c.status();

  o = {};
  o.tls.client_cert = "-----BEGIN CERTIFICATE-----\n...";
  c = Client::Create("127.0.0.1:1", o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("client_key"), std::string::npos) << c.status();

  o = {};
  o.tls.server_name = "localhost";  // without TLS
  EXPECT_EQ(Client::Create("127.0.0.1:1", o).status().code(),
            absl::StatusCode::kInvalidArgument);

  o = {};
  o.token = "has a space";
  c = Client::Create("127.0.0.1:1", o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.status().message().find("has a space"), std::string::npos) << c.status();
}

}  // namespace
}  // namespace optd::client
