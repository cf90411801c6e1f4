#include "server/auth_tokens.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace optd::server {
namespace {

bool VisibleAscii(absl::string_view s) {
  for (char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

absl::Status LineError(int line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("token file line ", line, ": ", what));
}

}  // namespace

absl::string_view RoleName(Role role) { return role == Role::kAdmin ? "admin" : "train"; }

bool TokenGrant::Covers(absl::string_view group) const {
  for (const std::string& p : prefixes) {
    if (absl::StartsWith(group, p)) return true;
  }
  return false;
}

bool TokenGrant::CoversAll() const {
  for (const std::string& p : prefixes) {
    if (p.empty()) return true;
  }
  return false;
}

TokenTable::Digest TokenTable::Hash(absl::string_view token) {
  Digest d{};
  unsigned int n = 0;
  // SHA-256 of a few hundred bytes cannot fail short of memory exhaustion; an all-zero digest
  // then matches no entry (entries are hashed the same way at load and compared in full).
  if (EVP_Digest(token.data(), token.size(), d.data(), &n, EVP_sha256(), nullptr) != 1 ||
      n != d.size()) {
    d.fill(0);
  }
  return d;
}

absl::StatusOr<std::shared_ptr<const TokenTable>> TokenTable::Parse(absl::string_view text) {
  auto table = std::make_shared<TokenTable>();
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() < 3) {
      return LineError(line_number, "expected '<token> <role> <prefix> [<prefix> ...]'");
    }
    const absl::string_view token = fields[0];
    if (token.size() < kMinTokenLength || token.size() > kMaxTokenLength) {
      return LineError(line_number, absl::StrCat("the token must have ", kMinTokenLength, " to ",
                                                  kMaxTokenLength, " characters"));
    }
    if (!VisibleAscii(token)) {
      return LineError(line_number, "the token may hold only visible ASCII characters");
    }
    auto grant = std::make_shared<TokenGrant>();
    grant->line = line_number;
    if (fields[1] == "train") {
      grant->role = Role::kTrain;
    } else if (fields[1] == "admin") {
      grant->role = Role::kAdmin;
    } else {
      return LineError(line_number, "the second field (role) must be train or admin");
    }
    for (size_t i = 2; i < fields.size(); ++i) {
      absl::string_view prefix = fields[i];
      if (absl::EndsWith(prefix, "*")) prefix.remove_suffix(1);
      if (absl::StrContains(prefix, '*')) {
        return LineError(line_number, absl::StrCat("prefix ", i - 1, ": '*' may only end a prefix"));
      }
      grant->prefixes.emplace_back(prefix);
    }
    const Digest digest = Hash(token);
    for (const Entry& e : table->entries_) {
      if (e.digest == digest) {
        return LineError(line_number,
                         absl::StrCat("the same token as line ", e.grant->line));
      }
    }
    table->entries_.push_back(Entry{digest, std::move(grant)});
  }
  if (table->entries_.empty()) {
    return absl::InvalidArgumentError("token file holds no token (nobody could call the server)");
  }
  return std::shared_ptr<const TokenTable>(std::move(table));
}

std::shared_ptr<const TokenGrant> TokenTable::Find(absl::string_view token) const {
  const Digest digest = Hash(token);
  const Entry* found = nullptr;
  for (const Entry& e : entries_) {
    // No early exit, neither inside a comparison nor at a match.
    const bool equal = CRYPTO_memcmp(e.digest.data(), digest.data(), digest.size()) == 0;
    if (equal) found = &e;
  }
  return found != nullptr ? found->grant : nullptr;
}

}  // namespace optd::server
