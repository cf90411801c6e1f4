#include "tools/npy.h"

#include <cstring>
#include <string>

#include "gtest/gtest.h"

namespace optd::tools {
namespace {

// A version 1.0 .npy file with the given header dict and body.
std::string NpyFile(const std::string& dict, const std::string& body) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  return out + header + body;
}

std::string FloatBytes(std::initializer_list<float> v) {
  std::string s;
  for (float f : v) s.append(reinterpret_cast<const char*>(&f), 4);
  return s;
}

TEST(NpyTest, ParsesFloat32Matrix) {
  const std::string file = NpyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                                   FloatBytes({1, 2, 3, 4, 5, -6.5f}));
  absl::StatusOr<NpyArray> a = ParseNpy(file, "m.npy");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->numel(), 6);
  absl::StatusOr<std::vector<float>> f = NpyToFloat(*a, "m.npy");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)[5], -6.5f);
  EXPECT_FALSE(NpyToUint8(*a, "m.npy").ok());
}

TEST(NpyTest, ParsesFloat16AndUint8AndScalars) {
  const std::string half = NpyFile("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
                                   std::string("\x00\x3c\x00\xc0", 4));  // 1.0, -2.0
  absl::StatusOr<NpyArray> a = ParseNpy(half, "h.npy");
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<std::vector<float>> f = NpyToFloat(*a, "h.npy");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*f, (std::vector<float>{1.0f, -2.0f}));
  const std::string u8 =
      NpyFile("{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", "\x01\x02\xff");
  absl::StatusOr<NpyArray> b = ParseNpy(u8, "u.npy");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*NpyToUint8(*b, "u.npy"), (std::vector<uint8_t>{1, 2, 255}));
  const std::string scalar =
      NpyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", FloatBytes({3}));
  absl::StatusOr<NpyArray> c = ParseNpy(scalar, "s.npy");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->numel(), 1);
}

TEST(NpyTest, RejectsWhatItCannotRead) {
  auto expect_error = [](const std::string& file, const std::string& needle) {
    absl::StatusOr<NpyArray> a = ParseNpy(file, "x.npy");
    ASSERT_FALSE(a.ok());
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(a.status().message()).find(needle), std::string::npos)
        << a.status().message();
  };
  expect_error("not numpy at all", "bad magic");
  expect_error(NpyFile("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
                       FloatBytes({1})),
               "descr >f4");
  expect_error(NpyFile("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
                       std::string(8, '\0')),
               "descr <f8");
  expect_error(NpyFile("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
                       FloatBytes({1})),
               "fortran_order");
  expect_error(NpyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
                       FloatBytes({1})),
               "body has 4 bytes");
  expect_error(NpyFile("{'descr': '<f4', 'fortran_order': False, }", FloatBytes({1})),
               "'shape'");
  EXPECT_EQ(ReadNpy("/nonexistent/file.npy").status().code(), absl::StatusCode::kNotFound);
}

TEST(NpyTest, ReadsAGoldenFile) {
  absl::StatusOr<NpyArray> a = ReadNpy(std::string(OPTD_GOLDEN_DIR) + "/fp32_tail_10000/qmap1.npy");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->descr, "<f4");
  EXPECT_EQ(a->shape, (std::vector<int64_t>{256}));
}

}  // namespace
}  // namespace optd::tools
