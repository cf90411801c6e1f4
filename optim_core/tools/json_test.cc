#include "tools/json.h"

#include <string>

#include "gtest/gtest.h"

namespace optd::tools {
namespace {

TEST(JsonTest, ParsesTheManifestShapes) {
  absl::StatusOr<JsonValue> v = ParseJson(R"([
    {"name": "a\"b", "shape": [512, 384], "lr": 2e-4, "betas": [0.9, 0.95],
     "outliers": true, "zeros": false, "note": null}
  ])");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->kind, JsonValue::Kind::kArray);
  const JsonValue& c = v->array.at(0);
  EXPECT_EQ(c.Find("name")->string, "a\"b");
  EXPECT_EQ(c.Find("shape")->array.at(1).number, 384);
  EXPECT_DOUBLE_EQ(c.Find("lr")->number, 2e-4);
  EXPECT_TRUE(c.Find("outliers")->boolean);
  EXPECT_FALSE(c.Find("zeros")->boolean);
  EXPECT_EQ(c.Find("note")->kind, JsonValue::Kind::kNull);
  EXPECT_EQ(c.Find("missing"), nullptr);
}

TEST(JsonTest, ReportsErrorsWithTheOffset) {
  for (const char* bad : {"[1, 2", "{\"a\" 1}", "[1,]x", "\"unterminated", "{} trailing"}) {
    absl::StatusOr<JsonValue> v = ParseJson(bad);
    ASSERT_FALSE(v.ok()) << bad;
    EXPECT_NE(std::string(v.status().message()).find("at byte"), std::string::npos);
  }
}

}  // namespace
}  // namespace optd::tools
