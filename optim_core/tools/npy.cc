#include "tools/npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "internal/float_convert.h"

namespace optd::tools {
namespace {

// The value of `key` in the header's Python dict literal, up to the next top-level comma.
absl::StatusOr<std::string> HeaderValue(absl::string_view header, absl::string_view key,
                                        const std::string& name) {
  const std::string quoted = absl::StrCat("'", key, "'");
  size_t pos = header.find(quoted);
  if (pos == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": header has no ", quoted));
  }
  pos = header.find(':', pos + quoted.size());
  if (pos == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": header ", quoted, " has no value"));
  }
  ++pos;
  int depth = 0;
  size_t end = pos;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    if ((c == ',' || c == '}') && depth == 0) break;
  }
  return std::string(absl::StripAsciiWhitespace(header.substr(pos, end - pos)));
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int NpyArray::element_size() const {
  if (descr == "<f4") return 4;
  if (descr == "<f2") return 2;
  return 1;
}

absl::StatusOr<NpyArray> ParseNpy(const std::string& contents, const std::string& name) {
  static constexpr char kMagic[] = "\x93NUMPY";
  if (contents.size() < 10 || std::memcmp(contents.data(), kMagic, 6) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not a .npy file (bad magic)"));
  }
  const int major = static_cast<uint8_t>(contents[6]);
  size_t header_len = 0;
  size_t header_start = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(contents[8]) | (static_cast<uint8_t>(contents[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (contents.size() < 12) return absl::InvalidArgumentError(absl::StrCat(name, ": truncated"));
    header_len = 0;
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(contents[8 + i]);
    header_start = 12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(name, ": unsupported .npy version ", major));
  }
  if (contents.size() < header_start + header_len) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": header is truncated"));
  }
  const absl::string_view header(contents.data() + header_start, header_len);
  NpyArray a;
  absl::StatusOr<std::string> descr = HeaderValue(header, "descr", name);
  if (!descr.ok()) return descr.status();
  a.descr = std::string(absl::StripSuffix(absl::StripPrefix(*descr, "'"), "'"));
  if (a.descr != "<f4" && a.descr != "<f2" && a.descr != "|u1" && a.descr != "<u1") {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": descr ", a.descr, " is not supported (need <f4, <f2 or |u1)"));
  }
  if (a.descr == "<u1") a.descr = "|u1";
  absl::StatusOr<std::string> fortran = HeaderValue(header, "fortran_order", name);
  if (!fortran.ok()) return fortran.status();
  if (*fortran != "False") {
    return absl::InvalidArgumentError(absl::StrCat(name, ": fortran_order must be False"));
  }
  absl::StatusOr<std::string> shape = HeaderValue(header, "shape", name);
  if (!shape.ok()) return shape.status();
  absl::string_view dims = absl::StripSuffix(absl::StripPrefix(*shape, "("), ")");
  for (absl::string_view d : absl::StrSplit(dims, ',', absl::SkipWhitespace())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &v) || v < 0) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": bad shape ", *shape));
    }
    a.shape.push_back(v);
  }
  const size_t body = header_start + header_len;
  const int64_t want = a.numel() * a.element_size();
  if (static_cast<int64_t>(contents.size() - body) != want) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": body has ", contents.size() - body,
                                                   " bytes, shape ", *shape, " needs ", want));
  }
  a.bytes.assign(contents.begin() + body, contents.end());
  return a;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ParseNpy(ss.str(), path);
}

absl::StatusOr<std::vector<float>> NpyToFloat(const NpyArray& a, const std::string& name) {
  std::vector<float> out(a.numel());
  if (a.descr == "<f4") {
    if (!out.empty()) std::memcpy(out.data(), a.bytes.data(), out.size() * 4);
  } else if (a.descr == "<f2") {
    for (size_t i = 0; i < out.size(); ++i) {
      const uint16_t h = static_cast<uint16_t>(a.bytes[2 * i] | (a.bytes[2 * i + 1] << 8));
      out[i] = core::internal::HalfToFloat(h);
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected float32 or float16 elements, got ", a.descr));
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> NpyToUint8(const NpyArray& a, const std::string& name) {
  if (a.descr != "|u1") {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected uint8 elements, got ", a.descr));
  }
  return a.bytes;
}

}  // namespace optd::tools
