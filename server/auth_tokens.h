// Bearer tokens of the optd server: the token file's format, and a table that finds a presented
// token's grant in constant time.
//
// Note [Token file]
// One credential per line; blank lines and lines whose first non-blank character is '#' are
// ignored. Fields are separated by spaces or tabs:
//
//   <token> <role> <prefix> [<prefix> ...]
//
//   token   16 to 512 visible ASCII characters (0x21..0x7e), unique in the file. Generate it
//           with e.g. `openssl rand -hex 32`.
//   role    `train` or `admin` (docs/security.md lists what each may call).
//   prefix  the token may act on groups whose names begin with one of its prefixes. A trailing
//           '*' is allowed and means the same ("team-a.*" = "team-a."); '*' alone means every
//           group. Any other '*' is an error (prefixes are not globs).
//
// Any malformed line makes the whole file invalid (InvalidArgument naming the line number, never
// the line: it holds a secret): a typo must not silently drop a credential.
//
// Note [Constant-time token lookup]
// The table keeps only the SHA-256 digests of the tokens. A presented token is hashed once and
// its digest compared with every entry's digest, all 32 bytes each, without stopping at the first
// difference or the first match; so the time a lookup takes depends on the number of tokens, not
// on how much of a real token a guess got right. Keeping digests also keeps the tokens
// themselves out of the server's memory after loading.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace optd::server {

enum class Role { kTrain, kAdmin };

// "train" or "admin".
absl::string_view RoleName(Role role);

// What one token may do. Immutable once loaded.
struct TokenGrant {
  Role role = Role::kTrain;
  // Group-name prefixes; "" matches every group.
  std::vector<std::string> prefixes;
  int line = 0;  // in the token file, for the server's log

  // True when `group` begins with one of the prefixes.
  bool Covers(absl::string_view group) const;
  // True when the grant covers every group (a prefix "").
  bool CoversAll() const;
};

// Thread safety: immutable after Parse; Find may run on many threads at once.
class TokenTable {
 public:
  static constexpr size_t kMinTokenLength = 16;
  static constexpr size_t kMaxTokenLength = 512;

  // Parses a token file's text (Note [Token file]). InvalidArgument naming the line on errors;
  // an empty table is an error too (nobody could call the server).
  static absl::StatusOr<std::shared_ptr<const TokenTable>> Parse(absl::string_view text);

  // The grant of `token`, or nullptr when no entry has it (Note [Constant-time token lookup]).
  std::shared_ptr<const TokenGrant> Find(absl::string_view token) const;

  size_t size() const { return entries_.size(); }

 private:
  using Digest = std::array<uint8_t, 32>;
  struct Entry {
    Digest digest;
    std::shared_ptr<const TokenGrant> grant;
  };
  static Digest Hash(absl::string_view token);

  std::vector<Entry> entries_;
};

}  // namespace optd::server
