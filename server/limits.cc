#include "server/limits.h"

#include <cmath>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "optd/core/dtype.h"
#include "optd/core/options.h"
#include "optd/core/state_layout.h"

namespace optd::server {
namespace {

absl::string_view View(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool SafeChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-' || c == '/';
}

// a + b and a * b, false on int64 overflow (inputs are >= 0).
bool Add(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }
bool Mul(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

namespace {

// Control characters and non-ASCII bytes as \xHH; with `backslash`, '\' as "\\" too.
std::string Escaped(std::string_view text, size_t max_bytes, bool backslash) {
  const bool cut = text.size() > max_bytes;
  std::string out;
  for (char c : cut ? text.substr(0, max_bytes) : text) {
    const auto u = static_cast<unsigned char>(c);
    if (backslash && c == '\\') {
      out += "\\\\";
    } else if (u >= 0x20 && u < 0x7f) {
      out += c;
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(u, absl::kZeroPad2));
    }
  }
  if (cut) absl::StrAppend(&out, "...(", text.size(), " bytes)");
  return out;
}

}  // namespace

std::string PrintableName(std::string_view name, size_t max_bytes) {
  return Escaped(name, max_bytes, /*backslash=*/true);
}

// Backslashes stay: a message may already hold escaped names, and only raw control bytes can
// break a log line.
std::string LogSafe(std::string_view message) { return Escaped(message, 2048, false); }

absl::Status CheckName(std::string_view name, std::string_view field, const Limits& limits) {
  const absl::string_view f = View(field);
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(f, " must not be empty"));
  if (name.size() > static_cast<size_t>(limits.max_name_bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(f, " '", PrintableName(name), "' is ",
                                                   name.size(), " bytes, more than the limit of ",
                                                   limits.max_name_bytes, " (--max_name_bytes)"));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    if (!SafeChar(name[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          f, " '", PrintableName(name), "' has byte ", i, " ('", PrintableName(name.substr(i, 1)),
          "') outside the name alphabet [A-Za-z0-9._/-] (docs/limits.md)"));
    }
  }
  if (name.front() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(f, " '", PrintableName(name), "' must not start with '/'"));
  }
  if (name.find("..") != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(f, " '", PrintableName(name), "' must not contain '..'"));
  }
  return absl::OkStatus();
}

std::optional<GroupBytes> CountGroupBytes(const core::GroupSpec& spec) {
  GroupBytes total;
  for (const core::TensorSpec& t : spec.tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || !Mul(n, d, &n)) return std::nullopt;
    }
    int64_t weights = 0;
    if (!Mul(n, static_cast<int64_t>(core::DTypeSize(t.dtype)), &weights) ||
        !Add(total.weights, weights, &total.weights)) {
      return std::nullopt;
    }
    int64_t states = 0;
    if (core::UsesEightBitStates(n, spec.options)) {
      // Two 1-byte codes per element and two fp32 scales per block of 256.
      if (!Mul(n, 2, &states) || !Add(states, 8 * core::NumBlocks(n), &states)) {
        return std::nullopt;
      }
    } else if (!Mul(n, 8, &states)) {  // fp32 m and v
      return std::nullopt;
    }
    if (spec.options.percentile_clipping < 100 && !Add(states, 4 * core::kGnormHistory, &states)) {
      return std::nullopt;
    }
    if (!Add(total.states, states, &total.states)) return std::nullopt;
  }
  return total;
}

absl::Status ValidateLimits(const Limits& l) {
  auto positive = [](int64_t v, const char* flag) {
    return v >= 1 ? absl::OkStatus()
                  : absl::InvalidArgumentError(absl::StrCat("--", flag, " must be >= 1, got ", v));
  };
  for (absl::Status s :
       {positive(l.max_groups, "max_groups"),
        positive(l.max_tensors_per_group, "max_tensors_per_group"),
        positive(l.max_name_bytes, "max_name_bytes"), positive(l.max_workers, "max_workers"),
        positive(l.default_list_page_size, "default_list_page_size"),
        positive(l.max_list_page_size, "max_list_page_size"),
        positive(l.max_streams, "max_streams"),
        positive(l.max_regions_per_client, "max_regions_per_client"),
        positive(l.max_region_bytes, "max_region_bytes"),
        positive(l.max_region_total_bytes, "max_region_total_bytes")}) {
    if (!s.ok()) return s;
  }
  if (l.max_group_bytes < 0 || l.memory_reserve_bytes < 0 || l.max_streams_per_peer < 0 ||
      l.max_regions < 0) {
    return absl::InvalidArgumentError(
        "--max_group_bytes, --memory_reserve_bytes, --max_streams_per_peer and --max_regions "
        "must be >= 0");
  }
  if (!(l.max_lr > 0.0f) || !std::isfinite(l.max_lr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_lr must be finite and > 0, got ", l.max_lr));
  }
  return absl::OkStatus();
}

absl::Status CheckNumWorkers(int64_t num_workers, const Limits& limits) {
  if (num_workers < 1 || num_workers > limits.max_workers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_workers must be in [1, ", limits.max_workers, "] (--max_workers), got ", num_workers));
  }
  return absl::OkStatus();
}

absl::Status CheckLearningRate(float lr, std::string_view field, const Limits& limits) {
  // Written so that NaN fails too.
  if (!(lr > 0.0f && lr <= limits.max_lr) || !std::isfinite(lr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(View(field), " must be in (0, ", limits.max_lr, "] (--max_lr), got ", lr));
  }
  return absl::OkStatus();
}

absl::Status CheckGroupSpec(const std::string& group, const core::GroupSpec& spec,
                            const Limits& limits) {
  if (absl::Status s = CheckName(group, "group", limits); !s.ok()) return s;
  if (spec.tensors.size() > static_cast<size_t>(limits.max_tensors_per_group)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "group '", group, "' has ", spec.tensors.size(), " tensors, more than the limit of ",
        limits.max_tensors_per_group, " (--max_tensors_per_group)"));
  }
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    if (absl::Status s =
            CheckName(spec.tensors[i].name, absl::StrCat("tensors[", i, "].name"), limits);
        !s.ok()) {
      return s;
    }
  }
  // Names are known to be safe to print now; the engine's rules (dims, dtypes, duplicate names,
  // hyperparameters) come before the byte count, which assumes them.
  if (absl::Status s = core::ValidateGroupSpec(spec); !s.ok()) return s;
  if (absl::Status s = CheckLearningRate(spec.options.lr, "hyperparameters.lr", limits); !s.ok()) {
    return s;
  }
  const std::optional<GroupBytes> bytes = CountGroupBytes(spec);
  if (!bytes.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("group '", group, "': its weight and state bytes overflow a 64-bit count"));
  }
  if (limits.max_group_bytes > 0 && (bytes->weights > limits.max_group_bytes ||
                                     bytes->states > limits.max_group_bytes - bytes->weights)) {
    return absl::InvalidArgumentError(
        absl::StrCat("group '", group, "' needs ", bytes->weights, " weight bytes + ",
                     bytes->states, " state bytes, more than the limit of ", limits.max_group_bytes,
                     " bytes per group (--max_group_bytes)"));
  }
  return absl::OkStatus();
}

absl::Status CheckTensorList(const google::protobuf::RepeatedPtrField<std::string>& names,
                             const Limits& limits) {
  if (names.size() > limits.max_tensors_per_group) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensors lists ", names.size(), " names, more than a group may hold (",
                     limits.max_tensors_per_group, ", --max_tensors_per_group)"));
  }
  std::unordered_set<std::string_view> seen;
  seen.reserve(static_cast<size_t>(names.size()));
  for (const std::string& name : names) {
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensors: '", PrintableName(name),
                                                     "' is listed twice; list each tensor once"));
    }
  }
  return absl::OkStatus();
}

}  // namespace optd::server
