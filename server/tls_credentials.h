// The credentials of the gRPC port: TLS or mutual TLS from PEM files that are watched for
// changes, or plaintext where that is safe or was asked for.
//
// Note [Certificate reload]
// gRPC's FileWatcherCertificateProvider re-reads the files every `refresh` and hands a changed
// key and certificate (and client CA bundle) to new TLS handshakes; connections already open
// keep the credentials they were made with. It reads the key and the certificate together, but
// two files cannot be replaced at one instant: replace them by renaming a directory or
// switching a symlink (as Kubernetes does for mounted Secrets and cert-manager does), or else a
// pair that does not match may be read; gRPC then keeps the previous pair. The files are checked
// once here at start (that they parse and that the key matches the certificate), so that a
// wrong path or pair fails the start with a message naming the flag instead of every handshake.
#pragma once

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"

namespace optd::server {

struct TlsFileOptions {
  std::string cert_file;       // PEM certificate chain of the server; empty = no TLS
  std::string key_file;        // PEM private key of cert_file
  std::string client_ca_file;  // PEM CA bundle that must have signed client certificates (mTLS)
  absl::Duration refresh = absl::Seconds(60);  // Note [Certificate reload]; at least 1 s
};

// True for addresses only this machine can reach: 127.0.0.0/8, ::1, "localhost", unix sockets.
// "0.0.0.0", "[::]", an empty host and any other name or address are not.
bool IsLoopbackAddress(absl::string_view listen_address);

// TLS credentials when tls.cert_file is set (mutual TLS with tls.client_ca_file), else
// plaintext, which is refused (FailedPrecondition naming --listen, --tls_cert and
// --allow_insecure) unless `listen_address` is a loopback address or `allow_insecure`.
// InvalidArgument naming the flag for files that are missing, unreadable or do not match.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFileOptions& tls, absl::string_view listen_address, bool allow_insecure);

}  // namespace optd::server
