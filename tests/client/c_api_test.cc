// liboptd_client_c (the C ABI) against a real optd server process on loopback. This test links
// only the shared library, as ctypes does: never optd_client as well (see client/CMakeLists.txt).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "optd_client_c.h"
#include "tests/client/c_api_c_caller.h"
#include "tests/client/server_process.h"
#include "tests/client/test_certificates.h"

namespace optd {
namespace {

using testing::ServerProcess;

constexpr int kNotFound = 5;          // grpc::StatusCode::NOT_FOUND
constexpr int kInvalidArgument = 3;   // grpc::StatusCode::INVALID_ARGUMENT
constexpr int kUnavailable = 14;      // grpc::StatusCode::UNAVAILABLE
constexpr int kPermissionDenied = 7;  // grpc::StatusCode::PERMISSION_DENIED
constexpr int kUnauthenticated = 16;  // grpc::StatusCode::UNAUTHENTICATED

std::vector<float> Random(size_t n, uint32_t seed, float mean = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(mean, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

uint16_t ToBFloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);
}
float FromBFloat16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct ClientDeleter {
  void operator()(optd_client* c) const { optd_client_destroy(c); }
};
using ClientHandle = std::unique_ptr<optd_client, ClientDeleter>;

class CApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string binary = testing::ServerBinary();
    if (binary.empty()) GTEST_SKIP() << "OPTD_SERVER_BIN is not set (ctest sets it)";
    auto s = ServerProcess::Start(binary, testing::MakeTempDir("optd-c-api-test"));
    ASSERT_TRUE(s.ok()) << s.status();
    server_.reset(*s);
  }
  ClientHandle Connect(int64_t chunk_bytes = 0) {
    optd_client_options options{};
    options.struct_size = sizeof options;
    options.chunk_bytes = chunk_bytes;
    optd_client* c = nullptr;
    EXPECT_EQ(optd_client_create(server_->target().c_str(), &options, &c), OPTD_OK)
        << optd_last_error();
    return ClientHandle(c);
  }

  std::unique_ptr<ServerProcess> server_;
};

TEST_F(CApiTest, UploadStepPullFp32AndBf16) {
  EXPECT_EQ(optd_abi_version(), OPTD_ABI_VERSION);
  ClientHandle c = Connect(/*chunk_bytes=*/4096);  // several chunks per tensor
  ASSERT_NE(c, nullptr);
  const int64_t a_shape[] = {37, 29};  // 1073 elements: odd, not block-aligned
  const int64_t b_shape[] = {2100};
  const optd_tensor_spec specs[] = {{"a", OPTD_DTYPE_FLOAT32, a_shape, 2},
                                    {"b", OPTD_DTYPE_BFLOAT16, b_shape, 1}};
  optd_group_options gopts{};
  gopts.struct_size = sizeof gopts;
  gopts.has_lr = 1;
  gopts.lr = 0.05f;
  gopts.has_weight_decay = 1;
  gopts.weight_decay = 0.0f;
  ASSERT_EQ(optd_client_create_group(c.get(), "g", specs, 2, &gopts), OPTD_OK)
      << optd_last_error();

  const int64_t na = 1073, nb = 2100;
  std::vector<float> a = Random(na, 1);
  std::vector<uint16_t> b(nb);
  const std::vector<float> bf = Random(nb, 2);
  for (int64_t i = 0; i < nb; ++i) b[i] = ToBFloat16(bf[i]);
  const std::vector<float> a0 = a;
  const std::vector<uint16_t> b0 = b;
  const optd_buffer weights[] = {{"a", OPTD_DTYPE_FLOAT32, a.data(), na},
                                 {"b", OPTD_DTYPE_BFLOAT16, b.data(), nb}};
  int64_t written = 0;
  ASSERT_EQ(optd_client_upload_weights(c.get(), "g", weights, 2, &written), OPTD_OK)
      << optd_last_error();
  EXPECT_EQ(written, na + nb);

  for (int64_t k = 1; k <= 3; ++k) {
    // Positive gradients: AdamW's first steps move every weight down by about lr.
    std::vector<float> ga = Random(na, 10 + k, 5.0f);
    std::vector<uint16_t> gb(nb);
    const std::vector<float> gbf = Random(nb, 20 + k);
    for (int64_t i = 0; i < nb; ++i) gb[i] = ToBFloat16(std::abs(gbf[i]) + 1);
    for (float& x : ga) x = std::abs(x) + 1;
    const optd_buffer grads[] = {{"a", OPTD_DTYPE_FLOAT32, ga.data(), na},
                                 {"b", OPTD_DTYPE_BFLOAT16, gb.data(), nb}};
    optd_step_result r{};
    ASSERT_EQ(optd_client_step(c.get(), "g", k, grads, 2, weights, 2, nullptr, &r), OPTD_OK)
        << optd_last_error();
    EXPECT_EQ(r.step, k);
    EXPECT_EQ(r.version, k);
    EXPECT_EQ(r.duplicate, 0);
    EXPECT_EQ(r.nonfinite_gradient_elements, 0);
    EXPECT_EQ(r.weight_elements_received, na + nb);
    EXPECT_STREQ(optd_last_error(), "");
  }
  for (int64_t i = 0; i < na; ++i) ASSERT_LT(a[i], a0[i]) << "a[" << i << "]";
  for (int64_t i = 0; i < nb; ++i) {
    ASSERT_LT(FromBFloat16(b[i]), FromBFloat16(b0[i])) << "b[" << i << "]";
  }

  // Pull gives exactly what the last step returned.
  std::vector<float> pa(na, 0.0f);
  std::vector<uint16_t> pb(nb, 0);
  const optd_buffer pulled[] = {{"a", OPTD_DTYPE_FLOAT32, pa.data(), na},
                                {"b", OPTD_DTYPE_BFLOAT16, pb.data(), nb}};
  int64_t version = -1;
  ASSERT_EQ(optd_client_pull_weights(c.get(), "g", pulled, 2, &version), OPTD_OK)
      << optd_last_error();
  EXPECT_EQ(version, 3);
  EXPECT_EQ(pa, a);
  EXPECT_EQ(pb, b);

  // A retry of step 3, with options and no weights back: acknowledged, not applied.
  optd_step_options so{};
  so.struct_size = sizeof so;
  so.weights = OPTD_WEIGHTS_NONE;
  std::vector<float> g(na, 1.0f);
  const optd_buffer grad = {"a", OPTD_DTYPE_FLOAT32, g.data(), na};
  optd_step_result dup{};
  ASSERT_EQ(optd_client_step(c.get(), "g", 3, &grad, 1, nullptr, 0, &so, &dup), OPTD_OK)
      << optd_last_error();
  EXPECT_EQ(dup.duplicate, 1);
  EXPECT_EQ(dup.weight_elements_received, 0);

  ASSERT_EQ(optd_client_delete_group(c.get(), "g"), OPTD_OK) << optd_last_error();
  EXPECT_EQ(optd_client_pull_weights(c.get(), "g", pulled, 2, nullptr), kNotFound);
}

TEST_F(CApiTest, ErrorsCarryTheCodeAndMessage) {
  ClientHandle c = Connect();
  ASSERT_NE(c, nullptr);
  std::vector<float> g(300, 1.0f);
  const optd_buffer grad = {"t", OPTD_DTYPE_FLOAT32, g.data(), 300};
  optd_step_result r{};
  EXPECT_EQ(optd_client_step(c.get(), "no-such-group", 1, &grad, 1, nullptr, 0, nullptr, &r),
            kNotFound);
  const std::string message = optd_last_error();
  EXPECT_NE(message.find("no-such-group"), std::string::npos) << message;
  EXPECT_NE(message.find(server_->target()), std::string::npos) << message;

  // The last error belongs to the thread that failed.
  std::string other_thread = "unset";
  std::thread([&] { other_thread = optd_last_error(); }).join();
  EXPECT_EQ(other_thread, "");
  EXPECT_EQ(std::string(optd_last_error()), message);

  // Bad arguments are caught before anything is sent.
  const optd_buffer bad_dtype = {"t", 7, g.data(), 300};
  EXPECT_EQ(optd_client_upload_weights(c.get(), "g", &bad_dtype, 1, nullptr), kInvalidArgument);
  EXPECT_NE(std::string(optd_last_error()).find("dtype"), std::string::npos)
      << optd_last_error();
  optd_step_options stale{};  // struct_size left 0
  EXPECT_EQ(optd_client_step(c.get(), "g", 1, &grad, 1, nullptr, 0, &stale, &r),
            kInvalidArgument);
  EXPECT_NE(std::string(optd_last_error()).find("struct_size"), std::string::npos)
      << optd_last_error();
  const optd_buffer null_name = {nullptr, OPTD_DTYPE_FLOAT32, g.data(), 300};
  EXPECT_EQ(optd_client_pull_weights(c.get(), "g", &null_name, 1, nullptr), kInvalidArgument);
  EXPECT_EQ(optd_client_step(nullptr, "g", 1, &grad, 1, nullptr, 0, nullptr, &r),
            kInvalidArgument);

  // A success clears the thread's last error.
  const int64_t shape[] = {300};
  const optd_tensor_spec spec = {"t", OPTD_DTYPE_FLOAT32, shape, 1};
  ASSERT_EQ(optd_client_create_group(c.get(), "g", &spec, 1, nullptr), OPTD_OK)
      << optd_last_error();
  EXPECT_STREQ(optd_last_error(), "");

  optd_client* unreachable = nullptr;
  ASSERT_EQ(optd_client_create("127.0.0.1:1", nullptr, &unreachable), OPTD_OK);
  ClientHandle owner(unreachable);
  EXPECT_EQ(optd_client_pull_weights(unreachable, "g", &grad, 1, nullptr), kUnavailable);
  EXPECT_NE(std::string(optd_last_error()), "");
}

TEST_F(CApiTest, PlainCCaller) {
  const int64_t n = 3000;
  std::vector<float> w = Random(n, 5), g = Random(n, 6), pulled(n, 0.0f);
  const std::vector<float> w0 = w;
  EXPECT_EQ(optd_c_round_trip(server_->target().c_str(), "c", w.data(), g.data(), pulled.data(),
                              n),
            0);
  EXPECT_NE(w, w0);
  EXPECT_EQ(pulled, w);
}

// TLS and token fields at the end of optd_client_options, against a server with mutual TLS
// and bearer tokens.
TEST(CApiSecurityTest, TlsAndTokenFields) {
  const std::string binary = testing::ServerBinary();
  if (binary.empty()) GTEST_SKIP() << "OPTD_SERVER_BIN is not set (ctest sets it)";
  auto certs = testing::GetTestCertificates();
  ASSERT_TRUE(certs.ok()) << certs.status();
  const std::string dir = testing::MakeTempDir("optd-c-api-security");
  testing::ReplaceTextFile(dir + "/tokens", "c-admin-0123456789abcdef admin c.\n"
                                            "c-train-0123456789abcdef train c.\n");
  auto started = ServerProcess::Start(binary, dir + "/server",
                                      {"--tls_cert=" + (*certs)->server_cert,
                                       "--tls_key=" + (*certs)->server_key,
                                       "--tls_client_ca=" + (*certs)->ca,
                                       "--token_file=" + dir + "/tokens"});
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<ServerProcess> server(*started);
  EXPECT_EQ(optd_client_options_size(), sizeof(optd_client_options));

  const std::string client_cert = testing::ReadTextFile((*certs)->client_cert);  // PEM text
  auto connect = [&](const char* token, bool tls) {
    optd_client_options o{};
    o.struct_size = sizeof o;
    if (tls) {
      o.tls_root_ca = (*certs)->ca.c_str();  // a path
      o.tls_client_cert = client_cert.c_str();
      o.tls_client_key = (*certs)->client_key.c_str();
      o.tls_server_name = "localhost";
    }
    o.token = token;
    optd_client* c = nullptr;
    EXPECT_EQ(optd_client_create(server->target().c_str(), &o, &c), OPTD_OK) << optd_last_error();
    return ClientHandle(c);
  };
  ClientHandle admin = connect("c-admin-0123456789abcdef", true);
  ASSERT_NE(admin, nullptr);
  const int64_t shape[] = {1000};
  const optd_tensor_spec spec = {"w", OPTD_DTYPE_FLOAT32, shape, 1};
  ASSERT_EQ(optd_client_create_group(admin.get(), "c.g", &spec, 1, nullptr), OPTD_OK)
      << optd_last_error();
  std::vector<float> w = Random(1000, 1), g = Random(1000, 2);
  const optd_buffer weights = {"w", OPTD_DTYPE_FLOAT32, w.data(), 1000};
  const optd_buffer grad = {"w", OPTD_DTYPE_FLOAT32, g.data(), 1000};
  ASSERT_EQ(optd_client_upload_weights(admin.get(), "c.g", &weights, 1, nullptr), OPTD_OK)
      << optd_last_error();

  ClientHandle train = connect("c-train-0123456789abcdef", true);
  optd_step_result r{};
  ASSERT_EQ(optd_client_step(train.get(), "c.g", 1, &grad, 1, &weights, 1, nullptr, &r), OPTD_OK)
      << optd_last_error();
  EXPECT_EQ(r.version, 1);
  EXPECT_EQ(optd_client_delete_group(train.get(), "c.g"), kPermissionDenied);
  EXPECT_NE(std::string(optd_last_error()).find("role train"), std::string::npos)
      << optd_last_error();

  ClientHandle anonymous = connect(nullptr, true);
  EXPECT_EQ(optd_client_pull_weights(anonymous.get(), "c.g", &weights, 1, nullptr),
            kUnauthenticated);
  ClientHandle plaintext = connect("c-admin-0123456789abcdef", false);
  EXPECT_EQ(optd_client_pull_weights(plaintext.get(), "c.g", &weights, 1, nullptr), kUnavailable);

  // A caller built against the first optd_client_options (no security fields) still connects:
  // plaintext, no token.
  optd_client_options old{};
  old.struct_size = static_cast<uint32_t>(offsetof(optd_client_options, tls));
  optd_client* c = nullptr;
  ASSERT_EQ(optd_client_create(server->target().c_str(), &old, &c), OPTD_OK) << optd_last_error();
  ClientHandle old_client(c);
  EXPECT_EQ(optd_client_pull_weights(c, "c.g", &weights, 1, nullptr), kUnavailable);
  old.struct_size = static_cast<uint32_t>(offsetof(optd_client_options, tls)) - 1;
  EXPECT_EQ(optd_client_create(server->target().c_str(), &old, &c), kInvalidArgument);
}

}  // namespace
}  // namespace optd
