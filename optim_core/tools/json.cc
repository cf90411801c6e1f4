#include "tools/json.h"

#include <cctype>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace optd::tools {
namespace {

class Parser {
 public:
  explicit Parser(const std::string& text) : s_(text) {}

  absl::StatusOr<JsonValue> ParseDocument() {
    JsonValue v;
    if (absl::Status st = Value(v, 0); !st.ok()) return st;
    SkipSpace();
    if (pos_ != s_.size()) return Error("trailing characters");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 64;

  absl::Status Error(const char* what) const {
    return absl::InvalidArgumentError(absl::StrCat("JSON: ", what, " at byte ", pos_));
  }
  void SkipSpace() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool Consume(char c) {
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool ConsumeWord(const char* w) {
    const size_t n = std::char_traits<char>::length(w);
    if (s_.compare(pos_, n, w) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }

  absl::Status String(std::string& out) {
    if (!Consume('"')) return Error("expected a string");
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c == '\\') {
        if (pos_ >= s_.size()) return Error("unterminated escape");
        const char e = s_[pos_++];
        switch (e) {
          case 'n': c = '\n'; break;
          case 't': c = '\t'; break;
          case 'r': c = '\r'; break;
          case 'b': c = '\b'; break;
          case 'f': c = '\f'; break;
          case 'u': {
            if (pos_ + 4 > s_.size()) return Error("short \\u escape");
            const long code = std::strtol(s_.substr(pos_, 4).c_str(), nullptr, 16);
            pos_ += 4;
            c = code < 128 ? static_cast<char>(code) : '?';
            break;
          }
          default: c = e;
        }
      }
      out.push_back(c);
    }
    if (pos_ >= s_.size()) return Error("unterminated string");
    ++pos_;
    return absl::OkStatus();
  }

  absl::Status Value(JsonValue& v, int depth) {
    if (depth > kMaxDepth) return Error("nesting too deep");
    SkipSpace();
    if (pos_ >= s_.size()) return Error("unexpected end");
    const char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      v.kind = JsonValue::Kind::kObject;
      if (Consume('}')) return absl::OkStatus();
      do {
        std::pair<std::string, JsonValue> member;
        if (absl::Status st = String(member.first); !st.ok()) return st;
        if (!Consume(':')) return Error("expected ':'");
        if (absl::Status st = Value(member.second, depth + 1); !st.ok()) return st;
        v.object.push_back(std::move(member));
      } while (Consume(','));
      if (!Consume('}')) return Error("expected '}'");
      return absl::OkStatus();
    }
    if (c == '[') {
      ++pos_;
      v.kind = JsonValue::Kind::kArray;
      if (Consume(']')) return absl::OkStatus();
      do {
        v.array.emplace_back();
        if (absl::Status st = Value(v.array.back(), depth + 1); !st.ok()) return st;
      } while (Consume(','));
      if (!Consume(']')) return Error("expected ']'");
      return absl::OkStatus();
    }
    if (c == '"') {
      v.kind = JsonValue::Kind::kString;
      return String(v.string);
    }
    if (ConsumeWord("true")) {
      v.kind = JsonValue::Kind::kBool;
      v.boolean = true;
      return absl::OkStatus();
    }
    if (ConsumeWord("false")) {
      v.kind = JsonValue::Kind::kBool;
      return absl::OkStatus();
    }
    if (ConsumeWord("null")) return absl::OkStatus();
    const char* begin = s_.c_str() + pos_;
    char* end = nullptr;
    v.number = std::strtod(begin, &end);
    if (end == begin) return Error("unexpected character");
    v.kind = JsonValue::Kind::kNumber;
    pos_ += end - begin;
    return absl::OkStatus();
  }

  const std::string& s_;
  size_t pos_ = 0;
};

}  // namespace

const JsonValue* JsonValue::Find(const std::string& key) const {
  for (const auto& [k, v] : object) {
    if (k == key) return &v;
  }
  return nullptr;
}

absl::StatusOr<JsonValue> ParseJson(const std::string& text) { return Parser(text).ParseDocument(); }

}  // namespace optd::tools
