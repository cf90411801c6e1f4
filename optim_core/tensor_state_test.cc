#include "optd/core/tensor_state.h"

#include <string>

#include "gtest/gtest.h"

namespace optd::core {
namespace {

TensorState EightBit(int64_t numel, int64_t blocks) {
  TensorState s;
  s.state1.resize(numel);
  s.state2.resize(numel);
  s.absmax1.resize(blocks);
  s.absmax2.resize(blocks);
  return s;
}

void ExpectRejected(const TensorState& s, int64_t numel, bool clipping, const std::string& msg) {
  const absl::Status st = ValidateTensorState(s, numel, clipping);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.message()).find(msg), std::string::npos) << st.message();
}

TEST(TensorStateTest, EightBitShapes) {
  EXPECT_TRUE(ValidateTensorState(EightBit(10000, 40), 10000, false).ok());
  EXPECT_TRUE(ValidateTensorState(EightBit(256, 1), 256, false).ok());
  ExpectRejected(EightBit(10000, 3), 10000, false, "absmax1 has 3 entries, expected 40");
  ExpectRejected(EightBit(9999, 40), 10000, false, "state1 has 9999 entries, expected 10000");
  TensorState s = EightBit(10000, 40);
  s.absmax2.resize(39);
  ExpectRejected(s, 10000, false, "absmax2 has 39 entries, expected 40");
  s = EightBit(10000, 40);
  s.state1_f32.resize(3);
  ExpectRejected(s, 10000, false, "state1_f32");
}

TEST(TensorStateTest, ThirtyTwoBitShapes) {
  TensorState s;
  s.eight_bit = false;
  s.state1_f32.resize(3000);
  s.state2_f32.resize(3000);
  EXPECT_TRUE(ValidateTensorState(s, 3000, false).ok());
  s.state2_f32.resize(2999);
  ExpectRejected(s, 3000, false, "state2_f32 has 2999 entries, expected 3000");
}

TEST(TensorStateTest, GnormVecPresentExactlyWhenClipping) {
  TensorState s = EightBit(512, 2);
  ExpectRejected(s, 512, true, "gnorm_vec has 0 entries, expected 100");
  s.gnorm_vec.resize(100);
  EXPECT_TRUE(ValidateTensorState(s, 512, true).ok());
  ExpectRejected(s, 512, false, "gnorm_vec has 100 entries, expected 0");
}

TEST(TensorStateTest, RejectsNegativeStep) {
  TensorState s = EightBit(256, 1);
  s.step = -1;
  ExpectRejected(s, 256, false, "step");
}

}  // namespace
}  // namespace optd::core
