#include "tools/golden_case.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "internal/float_convert.h"
#include "optd/core/state_layout.h"
#include "tools/json.h"
#include "tools/npy.h"

namespace optd::tools {
namespace {

namespace fs = std::filesystem;
using core::DType;

absl::StatusOr<std::vector<float>> LoadFloat(const GoldenCase& c, const std::string& stem) {
  const std::string path = (fs::path(c.dir) / (stem + ".npy")).string();
  absl::StatusOr<NpyArray> a = ReadNpy(path);
  if (!a.ok()) return a.status();
  return NpyToFloat(*a, path);
}

absl::StatusOr<std::vector<uint8_t>> LoadU8(const GoldenCase& c, const std::string& stem) {
  const std::string path = (fs::path(c.dir) / (stem + ".npy")).string();
  absl::StatusOr<NpyArray> a = ReadNpy(path);
  if (!a.ok()) return a.status();
  return NpyToUint8(*a, path);
}

std::vector<uint16_t> To16(const std::vector<float>& v, DType dtype) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    out[i] = dtype == DType::kFloat16 ? core::internal::FloatToHalf(v[i])
                                      : core::internal::FloatToBFloat16(v[i]);
  }
  return out;
}

// Appends `value` to `out`, or returns its error.
template <typename T>
absl::Status Append(std::vector<T>& out, absl::StatusOr<T> value) {
  if (!value.ok()) return value.status();
  out.push_back(*std::move(value));
  return absl::OkStatus();
}

absl::Status CheckCount(const GoldenCase& c, const std::string& stem, size_t have,
                        int64_t numel) {
  if (static_cast<int64_t>(have) != numel) {
    return absl::InvalidArgumentError(absl::StrCat(c.dir, "/", stem, ".npy has ", have,
                                                   " elements, the manifest's shape ", numel));
  }
  return absl::OkStatus();
}

absl::StatusOr<CaseData> LoadAllArrays(const GoldenCase& c) {
  CaseData d;
  int64_t numel = 1;
  for (int64_t s : c.shape) numel *= s;
  d.eight_bit = core::UsesEightBitStates(numel, c.options);
  d.clipping = c.options.percentile_clipping < 100;
  const bool half = c.dtype != DType::kFloat32;
  // Step 0: the initial parameter and the initial (zero) state.
  if (absl::Status s = Append(d.param, LoadFloat(c, "param_0")); !s.ok()) return s;
  if (absl::Status s = CheckCount(c, "param_0", d.param[0].size(), numel); !s.ok()) return s;
  d.grad.emplace_back();
  d.state1.emplace_back(d.eight_bit ? numel : 0, 0);
  d.state2.emplace_back(d.eight_bit ? numel : 0, 0);
  const int64_t blocks = d.eight_bit ? core::NumBlocks(numel) : 0;
  d.absmax1.emplace_back(blocks, 0.0f);
  d.absmax2.emplace_back(blocks, 0.0f);
  d.state1_f32.emplace_back(d.eight_bit ? 0 : numel, 0.0f);
  d.state2_f32.emplace_back(d.eight_bit ? 0 : numel, 0.0f);
  d.gnorm_vec.emplace_back(d.clipping ? core::kGnormHistory : 0, 0.0f);
  for (int k = 1; k <= c.steps; ++k) {
    const std::string n = absl::StrCat(k);
    absl::Status s = Append(d.param, LoadFloat(c, "param_" + n));
    if (s.ok()) s = CheckCount(c, "param_" + n, d.param[k].size(), numel);
    if (s.ok()) s = Append(d.grad, LoadFloat(c, "grad_" + n));
    if (s.ok()) s = CheckCount(c, "grad_" + n, d.grad[k].size(), numel);
    if (s.ok() && d.eight_bit) {
      s = Append(d.state1, LoadU8(c, "state1_" + n));
      if (s.ok()) s = Append(d.state2, LoadU8(c, "state2_" + n));
      if (s.ok()) s = Append(d.absmax1, LoadFloat(c, "absmax1_" + n));
      if (s.ok()) s = Append(d.absmax2, LoadFloat(c, "absmax2_" + n));
      d.state1_f32.emplace_back();
      d.state2_f32.emplace_back();
    } else if (s.ok()) {
      s = Append(d.state1_f32, LoadFloat(c, "state1_" + n));
      if (s.ok()) s = Append(d.state2_f32, LoadFloat(c, "state2_" + n));
      d.state1.emplace_back();
      d.state2.emplace_back();
      d.absmax1.emplace_back();
      d.absmax2.emplace_back();
    }
    if (s.ok() && d.clipping) {
      s = Append(d.gnorm_vec, LoadFloat(c, "gnorm_vec_" + n));
    } else if (s.ok()) {
      d.gnorm_vec.emplace_back();
    }
    if (!s.ok()) return s;
  }
  if (half) {
    for (const std::vector<float>& p : d.param) d.param16.push_back(To16(p, c.dtype));
    for (const std::vector<float>& g : d.grad) d.grad16.push_back(To16(g, c.dtype));
  }
  return d;
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<GoldenCase> CaseFromManifest(const JsonValue& e, const std::string& dir,
                                            const std::string& manifest) {
  GoldenCase c;
  c.dir = dir;
  auto field = [&](const char* key) { return e.Find(key); };
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(manifest, ": case \"", c.name, "\": ", what));
  };
  const JsonValue* name = field("name");
  if (name == nullptr || name->kind != JsonValue::Kind::kString) return bad("no string 'name'");
  c.name = name->string;
  const JsonValue* dtype = field("dtype");
  if (dtype == nullptr || dtype->kind != JsonValue::Kind::kString) return bad("no 'dtype'");
  absl::StatusOr<DType> dt = core::ParseDType(dtype->string);
  if (!dt.ok()) return bad(std::string(dt.status().message()));
  c.dtype = *dt;
  const JsonValue* shape = field("shape");
  if (shape == nullptr || shape->kind != JsonValue::Kind::kArray) return bad("no 'shape' array");
  for (const JsonValue& d : shape->array) c.shape.push_back(static_cast<int64_t>(d.number));
  const JsonValue* steps = field("steps");
  if (steps == nullptr || steps->kind != JsonValue::Kind::kNumber || steps->number < 1) {
    return bad("'steps' must be a number >= 1");
  }
  c.steps = static_cast<int>(steps->number);
  auto number = [&](const char* key, double fallback) {
    const JsonValue* v = field(key);
    return v != nullptr && v->kind == JsonValue::Kind::kNumber ? v->number : fallback;
  };
  c.options.lr = static_cast<float>(number("lr", c.options.lr));
  c.options.eps = static_cast<float>(number("eps", c.options.eps));
  c.options.weight_decay = static_cast<float>(number("wd", c.options.weight_decay));
  c.options.percentile_clipping = static_cast<int>(number("pclip", 100));
  c.options.min_8bit_size = static_cast<int64_t>(number("min_8bit_size", 4096));
  if (const JsonValue* betas = field("betas"); betas != nullptr) {
    if (betas->kind != JsonValue::Kind::kArray || betas->array.size() != 2) {
      return bad("'betas' must be an array of two numbers");
    }
    c.options.beta1 = static_cast<float>(betas->array[0].number);
    c.options.beta2 = static_cast<float>(betas->array[1].number);
  }
  if (absl::Status s = core::ValidateOptions(c.options); !s.ok()) {
    return bad(std::string(s.message()));
  }
  return c;
}

absl::StatusOr<JsonValue> LoadManifest(const std::string& manifest) {
  absl::StatusOr<std::string> text = ReadText(manifest);
  if (!text.ok()) return text.status();
  absl::StatusOr<JsonValue> json = ParseJson(*text);
  if (!json.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(manifest, ": ", json.status().message()));
  }
  if (json->kind != JsonValue::Kind::kArray) {
    return absl::InvalidArgumentError(absl::StrCat(manifest, ": expected an array of cases"));
  }
  return json;
}

}  // namespace

absl::StatusOr<std::vector<GoldenCase>> LoadCases(const std::string& path) {
  std::error_code ec;
  const fs::path dir = fs::path(path).lexically_normal();
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": not a directory"));
  }
  std::vector<GoldenCase> out;
  if (fs::exists(dir / "manifest.json", ec)) {
    const std::string manifest = (dir / "manifest.json").string();
    absl::StatusOr<JsonValue> json = LoadManifest(manifest);
    if (!json.ok()) return json.status();
    for (const JsonValue& e : json->array) {
      const JsonValue* name = e.Find("name");
      const std::string sub = name != nullptr ? name->string : "";
      absl::StatusOr<GoldenCase> c = CaseFromManifest(e, (dir / sub).string(), manifest);
      if (!c.ok()) return c.status();
      out.push_back(*std::move(c));
    }
    return out;
  }
  fs::path case_dir = dir;
  if (case_dir.filename().empty()) case_dir = case_dir.parent_path();
  const std::string name = case_dir.filename().string();
  const std::string manifest = (case_dir.parent_path() / "manifest.json").string();
  absl::StatusOr<JsonValue> json = LoadManifest(manifest);
  if (!json.ok()) return json.status();
  for (const JsonValue& e : json->array) {
    const JsonValue* n = e.Find("name");
    if (n != nullptr && n->string == name) {
      absl::StatusOr<GoldenCase> c = CaseFromManifest(e, case_dir.string(), manifest);
      if (!c.ok()) return c.status();
      out.push_back(*std::move(c));
      return out;
    }
  }
  return absl::NotFoundError(absl::StrCat(manifest, ": no case named \"", name, "\""));
}

absl::StatusOr<CaseData> LoadCaseData(const GoldenCase& c) { return LoadAllArrays(c); }

}  // namespace optd::tools
