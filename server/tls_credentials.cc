#include "server/tls_credentials.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace optd::server {
namespace {

// The host part of "host:port", "[v6]:port" or a bare host; brackets removed.
absl::string_view HostOf(absl::string_view address) {
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find(']');
    return close == absl::string_view::npos ? address.substr(1) : address.substr(1, close - 1);
  }
  const size_t colon = address.rfind(':');
  if (colon != absl::string_view::npos && address.find(':') == colon) {
    return address.substr(0, colon);
  }
  return address;  // no port, or a bare IPv6 address
}

absl::StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, " cannot be read"));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The last OpenSSL error as text (and the queue cleared), for messages.
std::string OpenSslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "no PEM data";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof(buf));
  return buf;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

BioPtr MemoryBio(const std::string& text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

absl::StatusOr<X509Ptr> FirstCertificate(const std::string& flag, const std::string& path,
                                         const std::string& pem) {
  BioPtr bio = MemoryBio(pem);
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(flag, "=", path,
                                                   " holds no PEM certificate: ", OpenSslError()));
  }
  return cert;
}

// Note [Certificate reload]: the start-up check of the files.
absl::Status CheckFiles(const TlsFileOptions& tls) {
  if (tls.key_file.empty()) return absl::InvalidArgumentError("--tls_cert needs --tls_key");
  auto cert_pem = ReadPem("--tls_cert", tls.cert_file);
  if (!cert_pem.ok()) return cert_pem.status();
  auto key_pem = ReadPem("--tls_key", tls.key_file);
  if (!key_pem.ok()) return key_pem.status();
  auto cert = FirstCertificate("--tls_cert", tls.cert_file, *cert_pem);
  if (!cert.ok()) return cert.status();
  BioPtr key_bio = MemoryBio(*key_pem);
  KeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls_key=", tls.key_file, " holds no unencrypted PEM private key: ", OpenSslError()));
  }
  if (X509_check_private_key(cert->get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("--tls_key=", tls.key_file,
                                                   " is not the key of --tls_cert=", tls.cert_file));
  }
  if (!tls.client_ca_file.empty()) {
    auto ca_pem = ReadPem("--tls_client_ca", tls.client_ca_file);
    if (!ca_pem.ok()) return ca_pem.status();
    if (auto ca = FirstCertificate("--tls_client_ca", tls.client_ca_file, *ca_pem); !ca.ok()) {
      return ca.status();
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool IsLoopbackAddress(absl::string_view listen_address) {
  if (absl::StartsWith(listen_address, "unix:") ||
      absl::StartsWith(listen_address, "unix-abstract:")) {
    return true;
  }
  for (absl::string_view scheme : {"ipv4:", "ipv6:", "dns:"}) {
    if (absl::StartsWith(listen_address, scheme)) listen_address.remove_prefix(scheme.size());
  }
  const std::string host(HostOf(listen_address));
  if (absl::AsciiStrToLower(host) == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFileOptions& tls, absl::string_view listen_address, bool allow_insecure) {
  if (tls.cert_file.empty()) {
    if (!tls.key_file.empty() || !tls.client_ca_file.empty()) {
      return absl::InvalidArgumentError("--tls_key and --tls_client_ca need --tls_cert");
    }
    if (!IsLoopbackAddress(listen_address) && !allow_insecure) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--listen=", listen_address,
          " is reachable from other machines and would serve plaintext: give --tls_cert and "
          "--tls_key (and --tls_client_ca for mutual TLS), or --allow_insecure if the network "
          "is trusted (docs/security.md)"));
    }
    if (!IsLoopbackAddress(listen_address)) {
      std::fprintf(stderr,
                   "optd: WARNING: serving plaintext on %.*s (--allow_insecure): anyone on the "
                   "network can read and forge calls, tokens included\n",
                   static_cast<int>(listen_address.size()), listen_address.data());
    }
    return grpc::InsecureServerCredentials();
  }
  if (absl::Status s = CheckFiles(tls); !s.ok()) return s;
  const unsigned int refresh = static_cast<unsigned int>(
      std::max<int64_t>(1, absl::ToInt64Seconds(tls.refresh)));
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls.key_file, tls.cert_file, tls.client_ca_file, refresh);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!tls.client_ca_file.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace optd::server
