#include "client/internal/channel_credentials.h"

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace optd::client::internal {
namespace {

// `value` itself when it is PEM text, else the contents of the file it names.
absl::StatusOr<std::string> PemOrFile(const std::string& value, const char* field) {
  if (value.empty() || absl::StrContains(value, "-----BEGIN")) return value;
  std::ifstream in(value, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(field, ": cannot read ", value));
  std::ostringstream text;
  text << in.rdbuf();
  if (!absl::StrContains(text.str(), "-----BEGIN")) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", value, " holds no PEM data"));
  }
  return text.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& tls, grpc::ChannelArguments* args) {
  const bool on = tls.enabled || !tls.root_ca.empty() || !tls.client_cert.empty() ||
                  !tls.client_key.empty();
  if (!on) {
    if (!tls.server_name.empty()) {
      return absl::InvalidArgumentError("tls.server_name: set, but TLS is not enabled");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (tls.client_cert.empty() != tls.client_key.empty()) {
    return absl::InvalidArgumentError(
        "tls.client_cert and tls.client_key: mutual TLS needs both (or neither)");
  }
  grpc::SslCredentialsOptions ssl;
  auto root = PemOrFile(tls.root_ca, "tls.root_ca");
  if (!root.ok()) return root.status();
  auto cert = PemOrFile(tls.client_cert, "tls.client_cert");
  if (!cert.ok()) return cert.status();
  auto key = PemOrFile(tls.client_key, "tls.client_key");
  if (!key.ok()) return key.status();
  ssl.pem_root_certs = *std::move(root);
  ssl.pem_cert_chain = *std::move(cert);
  ssl.pem_private_key = *std::move(key);
  if (!tls.server_name.empty()) args->SetSslTargetNameOverride(tls.server_name);
  return grpc::SslCredentials(ssl);
}

absl::StatusOr<std::string> AuthorizationValue(const std::string& token) {
  if (token.empty()) return std::string();
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError("token: only visible ASCII characters are allowed");
    }
  }
  return absl::StrCat("Bearer ", token);
}

}  // namespace optd::client::internal
