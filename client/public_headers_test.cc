// The public headers carry no gRPC or protobuf type: including all of them must not pull in
// either library (a trainer's build sees only Abseil and the client's own structs).
#include "optd/client/client.h"
#include "optd/client/colocated.h"
#include "optd/client/sharded_client.h"
#include "optd/client/sharding.h"
#include "optd/client/types.h"

#if defined(GRPCPP_SUPPORT_CONFIG_H) || defined(GRPC_GRPC_H) || \
    defined(GRPCPP_IMPL_CODEGEN_CONFIG_H)
#error "a public optd client header includes gRPC"
#endif
#if defined(GOOGLE_PROTOBUF_VERSION) || defined(GOOGLE_PROTOBUF_COMMON_H__)
#error "a public optd client header includes protobuf"
#endif

#include "gtest/gtest.h"

namespace optd::client {
namespace {

TEST(PublicHeadersTest, OneDTypeNumberingEqualToTheWire) {
  // optd.v1.DType and the C ABI's OPTD_DTYPE_* use these values.
  EXPECT_EQ(static_cast<int>(DType::kFloat32), 1);
  EXPECT_EQ(static_cast<int>(DType::kFloat16), 2);
  EXPECT_EQ(static_cast<int>(DType::kBFloat16), 3);
  EXPECT_EQ(StateElementSize(StateElementType::kUint8), 1);
  EXPECT_EQ(StateElementSize(StateElementType::kFloat32), 4);
  EXPECT_EQ(StateElementSize(StateElementType::kInt64), 8);
}

}  // namespace
}  // namespace optd::client
