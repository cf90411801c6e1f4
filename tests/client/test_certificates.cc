#include "tests/client/test_certificates.h"

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace optd::testing {
namespace {

constexpr char kNewKey[] = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

absl::Status Run(const std::string& dir, const std::string& command) {
  const std::string line = absl::StrCat("cd '", dir, "' && ", command, " >/dev/null 2>&1");
  if (std::system(line.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("'", command, "' failed (is openssl installed?)"));
  }
  return absl::OkStatus();
}

absl::Status MakeCa(const std::string& dir, const std::string& name) {
  return Run(dir, absl::StrCat("openssl req -x509 ", kNewKey, " -keyout ", name, ".key -out ",
                               name, ".pem -days 2 -subj /CN=optd-test-", name));
}

// NAME.key and NAME.pem, signed by CA.
absl::Status MakeLeaf(const std::string& dir, const std::string& name, const std::string& ca,
                      const std::string& extensions) {
  ReplaceTextFile(dir + "/" + name + ".ext", extensions);
  if (absl::Status s = Run(dir, absl::StrCat("openssl req -new ", kNewKey, " -keyout ", name,
                                             ".key -out ", name, ".csr -subj /CN=", name));
      !s.ok()) {
    return s;
  }
  return Run(dir, absl::StrCat("openssl x509 -req -in ", name, ".csr -CA ", ca, ".pem -CAkey ",
                               ca, ".key -CAcreateserial -days 2 -out ", name, ".pem -extfile ",
                               name, ".ext"));
}

absl::StatusOr<const TestCertificates*> Make() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string templ = absl::StrCat(base != nullptr ? base : "/tmp", "/optd-certs-XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) return absl::InternalError("mkdtemp failed");
  auto* c = new TestCertificates();
  c->dir = buf.data();
  const std::string server_ext =
      "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
  const std::string client_ext = "extendedKeyUsage=clientAuth\n";
  for (absl::Status s : {MakeCa(c->dir, "ca"), MakeCa(c->dir, "ca2"),
                         MakeLeaf(c->dir, "server", "ca", server_ext),
                         MakeLeaf(c->dir, "client", "ca", client_ext),
                         MakeLeaf(c->dir, "server2", "ca2", server_ext),
                         MakeLeaf(c->dir, "client2", "ca2", client_ext)}) {
    if (!s.ok()) return s;
  }
  auto path = [c](const char* file) { return c->dir + "/" + file; };
  c->ca = path("ca.pem");
  c->server_cert = path("server.pem");
  c->server_key = path("server.key");
  c->client_cert = path("client.pem");
  c->client_key = path("client.key");
  c->ca2 = path("ca2.pem");
  c->server2_cert = path("server2.pem");
  c->server2_key = path("server2.key");
  c->client2_cert = path("client2.pem");
  c->client2_key = path("client2.key");
  return c;
}

}  // namespace

absl::StatusOr<const TestCertificates*> GetTestCertificates() {
  static const absl::StatusOr<const TestCertificates*>* const certs =
      new absl::StatusOr<const TestCertificates*>(Make());
  return *certs;
}

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void ReplaceTextFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace optd::testing
