#include "server/auth_tokens.h"

#include <string>

#include "gtest/gtest.h"

namespace optd::server {
namespace {

TEST(TokenTableTest, ParsesRolesPrefixesCommentsAndBlankLines) {
  auto table = TokenTable::Parse(
      "# comment\n"
      "\n"
      "  aaaaaaaaaaaaaaaa train team-a. team-c.\n"
      "bbbbbbbbbbbbbbbb\tadmin\tteam-b.*\n"
      "cccccccccccccccc admin *\n");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ((*table)->size(), 3u);

  auto a = (*table)->Find("aaaaaaaaaaaaaaaa");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->role, Role::kTrain);
  EXPECT_EQ(a->line, 3);
  EXPECT_TRUE(a->Covers("team-a.x"));
  EXPECT_TRUE(a->Covers("team-c."));
  EXPECT_FALSE(a->Covers("team-b.x"));
  EXPECT_FALSE(a->Covers("team-a"));  // a prefix, not a name: "team-a" lacks the dot
  EXPECT_FALSE(a->CoversAll());

  auto b = (*table)->Find("bbbbbbbbbbbbbbbb");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->role, Role::kAdmin);
  EXPECT_TRUE(b->Covers("team-b.x"));  // the trailing '*' is dropped
  EXPECT_FALSE(b->Covers("team-a.x"));

  auto c = (*table)->Find("cccccccccccccccc");
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->CoversAll());
  EXPECT_TRUE(c->Covers("anything"));
}

TEST(TokenTableTest, FindsOnlyExactTokens) {
  auto table = TokenTable::Parse("aaaaaaaaaaaaaaaa train *\n");
  ASSERT_TRUE(table.ok());
  EXPECT_EQ((*table)->Find(""), nullptr);
  EXPECT_EQ((*table)->Find("aaaaaaaaaaaaaaa"), nullptr);    // one short
  EXPECT_EQ((*table)->Find("aaaaaaaaaaaaaaaaa"), nullptr);  // one long
  EXPECT_EQ((*table)->Find("aaaaaaaaaaaaaaab"), nullptr);   // last byte differs
  EXPECT_EQ((*table)->Find("Aaaaaaaaaaaaaaaa"), nullptr);   // first byte differs
  EXPECT_NE((*table)->Find("aaaaaaaaaaaaaaaa"), nullptr);
}

TEST(TokenTableTest, RejectsMalformedFilesNamingTheLineNotTheToken) {
  const std::string secret = "ssssssssssssssss";
  const struct {
    std::string text;
    std::string expect;
  } cases[] = {
      {"", "no token"},
      {"# only a comment\n", "no token"},
      {secret + " train\n", "line 1"},                            // no prefix
      {"\n" + secret + " trainer team-a.\n", "line 2"},            // unknown role
      {"short train team-a.\n", "16 to 512"},                      // too short
      {secret + " train team-*-a.\n", "may only end"},             // '*' inside
      {secret + " train a.\n" + secret + " admin b.\n", "line 1"},  // duplicate token
      {std::string("tok\x01") + secret + " train a.\n", "visible ASCII"},
  };
  for (const auto& c : cases) {
    auto table = TokenTable::Parse(c.text);
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(table.status().message());
    EXPECT_NE(message.find(c.expect), std::string::npos) << message;
    EXPECT_EQ(message.find(secret), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace optd::server
