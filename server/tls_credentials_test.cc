#include "server/tls_credentials.h"

#include <string>

#include "gtest/gtest.h"

namespace optd::server {
namespace {

TEST(TlsCredentialsTest, LoopbackAddresses) {
  for (const char* a : {"127.0.0.1:50051", "127.0.0.1:0", "127.1.2.3:1", "localhost:50051",
                        "LOCALHOST:1", "[::1]:50051", "::1", "ipv4:127.0.0.1:5",
                        "[::ffff:127.0.0.1]:5", "unix:/tmp/optd.sock", "unix-abstract:optd"}) {
    EXPECT_TRUE(IsLoopbackAddress(a)) << a;
  }
  for (const char* a : {"0.0.0.0:50051", "[::]:50051", ":50051", "10.0.0.1:50051",
                        "192.168.1.2:1", "optd.example.com:50051", "[2001:db8::1]:1",
                        "128.0.0.1:1", "localhost.example.com:1", ""}) {
    EXPECT_FALSE(IsLoopbackAddress(a)) << a;
  }
}

TEST(TlsCredentialsTest, PlaintextOnlyOnLoopbackOrWhenAllowed) {
  EXPECT_TRUE(MakeServerCredentials({}, "127.0.0.1:0", false).ok());
  EXPECT_TRUE(MakeServerCredentials({}, "[::1]:0", false).ok());
  auto refused = MakeServerCredentials({}, "0.0.0.0:50051", false);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(refused.status().message());
  for (const char* named : {"--listen=0.0.0.0:50051", "--tls_cert", "--allow_insecure"}) {
    EXPECT_NE(message.find(named), std::string::npos) << message;
  }
  EXPECT_TRUE(MakeServerCredentials({}, "0.0.0.0:50051", true).ok());
}

TEST(TlsCredentialsTest, KeyOrClientCaWithoutCertificateIsRefused) {
  TlsFileOptions tls;
  tls.key_file = "/nonexistent/key.pem";
  EXPECT_EQ(MakeServerCredentials(tls, "127.0.0.1:0", false).status().code(),
            absl::StatusCode::kInvalidArgument);
  tls = {};
  tls.client_ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(MakeServerCredentials(tls, "127.0.0.1:0", false).status().code(),
            absl::StatusCode::kInvalidArgument);
  tls = {};
  tls.cert_file = "/nonexistent/cert.pem";
  tls.key_file = "/nonexistent/key.pem";
  auto s = MakeServerCredentials(tls, "127.0.0.1:0", false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("--tls_cert=/nonexistent/cert.pem"),
            std::string::npos);
}

}  // namespace
}  // namespace optd::server
