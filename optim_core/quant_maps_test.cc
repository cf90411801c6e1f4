#include "optd/core/quant_maps.h"

#include <cmath>
#include <cstring>

#include "gtest/gtest.h"
#include "internal/sha256.h"

namespace optd::core {
namespace {

// The 1024 little-endian bytes of a table (x86 is little-endian; spelled out anyway).
std::string TableDigest(const float* table) {
  uint8_t bytes[1024];
  for (int i = 0; i < 256; ++i) {
    uint32_t u;
    std::memcpy(&u, &table[i], 4);
    for (int b = 0; b < 4; ++b) bytes[4 * i + b] = static_cast<uint8_t>(u >> (8 * b));
  }
  return internal::Sha256Hex(bytes, sizeof(bytes));
}

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(internal::Sha256Hex("", 0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(internal::Sha256Hex("abc", 3),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char* two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(internal::Sha256Hex(two_blocks, std::strlen(two_blocks)),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(QuantMapsTest, DigestsMatchTheSpec) {
  EXPECT_EQ(TableDigest(kSignedQuantMap),
            "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c");
  EXPECT_EQ(TableDigest(kUnsignedQuantMap),
            "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398");
}

TEST(QuantMapsTest, ShapeAsDocumented) {
  for (int i = 1; i < 256; ++i) {
    EXPECT_LT(kSignedQuantMap[i - 1], kSignedQuantMap[i]) << i;
    EXPECT_LT(kUnsignedQuantMap[i - 1], kUnsignedQuantMap[i]) << i;
  }
  EXPECT_EQ(kSignedQuantMap[127], 0.0f);
  EXPECT_FALSE(std::signbit(kSignedQuantMap[127]));
  EXPECT_LT(kSignedQuantMap[126], 0.0f);
  EXPECT_GT(kSignedQuantMap[128], 0.0f);
  EXPECT_FLOAT_EQ(kSignedQuantMap[0], -0.99296874f);
  EXPECT_EQ(kSignedQuantMap[255], 1.0f);
  EXPECT_EQ(kUnsignedQuantMap[0], 0.0f);
  EXPECT_FLOAT_EQ(kUnsignedQuantMap[1], 3.25e-7f);
  EXPECT_EQ(kUnsignedQuantMap[255], 1.0f);
}

}  // namespace
}  // namespace optd::core
