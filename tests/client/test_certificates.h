// Certificates for the TLS tests, made at run time by the openssl command-line tool (installed
// by deploy/install-deps.sh): nothing secret or expiring is stored in the repository.
// Thread safety: GetTestCertificates may be called from any thread; the files never change.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace optd::testing {

// Paths of PEM files. Server certificates name DNS:localhost and IP:127.0.0.1.
struct TestCertificates {
  std::string dir;
  std::string ca;  // CA that signed server and client
  std::string server_cert, server_key;
  std::string client_cert, client_key;
  // A second, unrelated CA with a server and a client certificate of its own.
  std::string ca2;
  std::string server2_cert, server2_key;
  std::string client2_cert, client2_key;
};

// Makes the certificates once per process, in a fresh directory under $TEST_TMPDIR or /tmp.
// InternalError naming the openssl command that failed.
absl::StatusOr<const TestCertificates*> GetTestCertificates();

// The whole content of a file ("" when it cannot be read).
std::string ReadTextFile(const std::string& path);
// Writes `text` beside `path` and renames it over `path` (a watcher never sees half a file).
void ReplaceTextFile(const std::string& path, const std::string& text);

}  // namespace optd::testing
