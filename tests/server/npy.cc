#include "tests/server/npy.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace optd::testing {

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0) {
    return absl::DataLossError(absl::StrCat(path, " is not an .npy file"));
  }
  const int major = bytes[6];
  size_t header_len, pos;
  if (major == 1) {
    header_len = bytes[8] | (bytes[9] << 8);
    pos = 10;
  } else {
    header_len = bytes[8] | (bytes[9] << 8) | (bytes[10] << 16) | (size_t{bytes[11]} << 24);
    pos = 12;
  }
  const std::string header(reinterpret_cast<const char*>(bytes.data() + pos), header_len);
  NpyArray a;
  auto field = [&](const std::string& key) -> std::string {
    const size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) return "";
    size_t v = header.find(':', k) + 1;
    while (header[v] == ' ') ++v;
    if (header[v] == '\'') return header.substr(v + 1, header.find('\'', v + 1) - v - 1);
    if (header[v] == '(') return header.substr(v + 1, header.find(')', v) - v - 1);
    return header.substr(v, header.find_first_of(",}", v) - v);
  };
  a.descr = field("descr");
  if (field("fortran_order") != "False") {
    return absl::UnimplementedError(absl::StrCat(path, ": Fortran order"));
  }
  for (absl::string_view d : absl::StrSplit(field("shape"), ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &v)) {
      return absl::DataLossError(absl::StrCat(path, ": bad shape"));
    }
    a.shape.push_back(v);
  }
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(pos + header_len), bytes.end());
  return a;
}

}  // namespace optd::testing
