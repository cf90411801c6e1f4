// A minimal JSON reader for the golden data's manifest.json (objects, arrays, numbers,
// strings, booleans, null). Not a general-purpose library: no \u escapes beyond ASCII.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace optd::tools {

struct JsonValue {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<JsonValue> array;
  std::vector<std::pair<std::string, JsonValue>> object;

  // The member `key` of an object, or null when absent (or not an object).
  const JsonValue* Find(const std::string& key) const;
};

// InvalidArgument with the byte offset of the first error.
absl::StatusOr<JsonValue> ParseJson(const std::string& text);

}  // namespace optd::tools
