#include "tools/conformance.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "internal/float_convert.h"
#include "tools/json.h"
#include "tools/npy.h"

namespace optd::tools {
namespace {

namespace fs = std::filesystem;
using core::DType;

// Everything of one case, loaded once and shared by both modes.
struct CaseData {
  bool eight_bit = true;
  bool clipping = false;
  std::vector<std::vector<float>> param;        // [0..T], widened
  std::vector<std::vector<uint16_t>> param16;   // [0..T], fp16/bf16 bits (16-bit cases)
  std::vector<std::vector<float>> grad;         // [1..T] at index k, widened
  std::vector<std::vector<uint16_t>> grad16;
  std::vector<std::vector<uint8_t>> state1, state2;          // 8-bit
  std::vector<std::vector<float>> absmax1, absmax2;
  std::vector<std::vector<float>> state1_f32, state2_f32;    // 32-bit path
  std::vector<std::vector<float>> gnorm_vec;
};

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

absl::StatusOr<CaseData> LoadData(const GoldenCase& c) {
  CaseData d;
  int64_t numel = 1;
  for (int64_t s : c.shape) numel *= s;
  d.eight_bit = numel >= c.options.min_8bit_size;
  d.clipping = c.options.percentile_clipping < 100;
  const bool half = c.dtype != DType::kFloat32;
  // Step 0: the initial parameter and the initial (zero) state.
  if (absl::Status s = Append(d.param, LoadFloat(c, "param_0")); !s.ok()) return s;
  if (absl::Status s = CheckCount(c, "param_0", d.param[0].size(), numel); !s.ok()) return s;
  d.grad.emplace_back();
  d.state1.emplace_back(d.eight_bit ? numel : 0, 0);
  d.state2.emplace_back(d.eight_bit ? numel : 0, 0);
  const int64_t blocks = d.eight_bit ? (numel + core::kBlockSize - 1) / core::kBlockSize : 0;
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

core::ConstTensorView ParamView(const GoldenCase& c, const CaseData& d, int k) {
  if (c.dtype == DType::kFloat32) {
    return {d.param[k].data(), c.dtype, static_cast<int64_t>(d.param[k].size())};
  }
  return {d.param16[k].data(), c.dtype, static_cast<int64_t>(d.param16[k].size())};
}

core::ConstTensorView GradView(const GoldenCase& c, const CaseData& d, int k) {
  if (c.dtype == DType::kFloat32) {
    return {d.grad[k].data(), c.dtype, static_cast<int64_t>(d.grad[k].size())};
  }
  return {d.grad16[k].data(), c.dtype, static_cast<int64_t>(d.grad16[k].size())};
}

absl::StatusOr<std::vector<float>> ReadParamFloat(core::ParamGroup& g, const GoldenCase& c,
                                                  int64_t numel) {
  std::vector<float> out(numel);
  if (c.dtype == DType::kFloat32) {
    if (absl::Status s = g.ReadParam(0, 0, {out.data(), c.dtype, numel}); !s.ok()) return s;
    return out;
  }
  std::vector<uint16_t> bits(numel);
  if (absl::Status s = g.ReadParam(0, 0, {bits.data(), c.dtype, numel}); !s.ok()) return s;
  for (int64_t i = 0; i < numel; ++i) {
    out[i] = c.dtype == DType::kFloat16 ? core::internal::HalfToFloat(bits[i])
                                        : core::internal::BFloat16ToFloat(bits[i]);
  }
  return out;
}

double NormDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    s += d * d;
  }
  return std::sqrt(s);
}

double Norm(const std::vector<float>& a) {
  double s = 0;
  for (float x : a) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

// Relative norm error; both zero counts as exact, a non-finite value as infinitely wrong.
double RelNorm(const std::vector<float>& got, const std::vector<float>& want) {
  const double diff = NormDiff(got, want);
  if (!std::isfinite(diff)) return INFINITY;
  const double den = Norm(want);
  if (den == 0) return diff == 0 ? 0 : INFINITY;
  return diff / den;
}

// Worst per-element relative error.
double MaxRel(const std::vector<float>& got, const std::vector<float>& want) {
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!std::isfinite(d)) return INFINITY;
    if (d == 0) continue;
    const double den = std::fabs(static_cast<double>(want[i]));
    worst = std::max(worst, den == 0 ? INFINITY : d / den);
  }
  return worst;
}

struct CodeStats {
  double identical = 1.0;
  int max_distance = 0;
};

CodeStats CompareCodes(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want) {
  CodeStats s;
  if (want.empty()) return s;
  int64_t same = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const int d = std::abs(static_cast<int>(got[i]) - static_cast<int>(want[i]));
    s.max_distance = std::max(s.max_distance, std::min(d, 256 - d));
    same += d == 0;
  }
  s.identical = static_cast<double>(same) / want.size();
  return s;
}

core::TensorState ReferenceState(const CaseData& d, int k) {
  core::TensorState s;
  s.step = k;
  s.eight_bit = d.eight_bit;
  s.state1 = d.state1[k];
  s.state2 = d.state2[k];
  s.absmax1 = d.absmax1[k];
  s.absmax2 = d.absmax2[k];
  s.state1_f32 = d.state1_f32[k];
  s.state2_f32 = d.state2_f32[k];
  s.gnorm_vec = d.gnorm_vec[k];
  return s;
}

absl::StatusOr<std::unique_ptr<core::ParamGroup>> NewGroup(core::Engine& engine,
                                                           const GoldenCase& c) {
  core::GroupSpec spec;
  spec.options = c.options;
  spec.tensors.push_back({c.name, c.dtype, c.shape});
  return engine.CreateGroup(spec);
}

std::string Verdict(bool pass) { return pass ? "PASS" : "FAIL"; }

absl::StatusOr<CaseResult> RunTeacher(core::Engine& engine, const GoldenCase& c,
                                      const CaseData& d, const Tolerances& tol) {
  absl::StatusOr<std::unique_ptr<core::ParamGroup>> group = NewGroup(engine, c);
  if (!group.ok()) return group.status();
  core::ParamGroup& g = **group;
  const int64_t numel = static_cast<int64_t>(d.param[0].size());
  CodeStats worst1, worst2;
  double absmax_rel = 0, param_metric = 0, state_rel = 0, gnorm_rel = 0;
  for (int k = 1; k <= c.steps; ++k) {
    if (absl::Status s = g.ImportState(0, ReferenceState(d, k - 1)); !s.ok()) return s;
    if (absl::Status s = g.WriteParam(0, 0, ParamView(c, d, k - 1)); !s.ok()) return s;
    const core::TensorGradient grad{0, GradView(c, d, k)};
    if (absl::Status s = g.Step({&grad, 1}, {}); !s.ok()) return s;
    absl::StatusOr<core::TensorState> st = g.ExportState(0);
    if (!st.ok()) return st.status();
    if (st->step != k) {
      return absl::InternalError(absl::StrCat("step counter is ", st->step, " after step ", k));
    }
    absl::StatusOr<std::vector<float>> p = ReadParamFloat(g, c, numel);
    if (!p.ok()) return p.status();
    const double den = NormDiff(d.param[k], d.param[k - 1]);
    const double num = NormDiff(*p, d.param[k]);
    param_metric = std::max(param_metric, den == 0 ? (num == 0 ? 0 : INFINITY) : num / den);
    if (std::isnan(num)) param_metric = INFINITY;
    if (d.eight_bit) {
      const CodeStats c1 = CompareCodes(st->state1, d.state1[k]);
      const CodeStats c2 = CompareCodes(st->state2, d.state2[k]);
      worst1.identical = std::min(worst1.identical, c1.identical);
      worst1.max_distance = std::max(worst1.max_distance, c1.max_distance);
      worst2.identical = std::min(worst2.identical, c2.identical);
      worst2.max_distance = std::max(worst2.max_distance, c2.max_distance);
      absmax_rel = std::max({absmax_rel, MaxRel(st->absmax1, d.absmax1[k]),
                             MaxRel(st->absmax2, d.absmax2[k])});
    } else {
      state_rel = std::max({state_rel, RelNorm(st->state1_f32, d.state1_f32[k]),
                            RelNorm(st->state2_f32, d.state2_f32[k])});
    }
    if (d.clipping) gnorm_rel = std::max(gnorm_rel, MaxRel(st->gnorm_vec, d.gnorm_vec[k]));
  }
  const double param_tol = c.dtype == DType::kFloat32 ? tol.param_fp32 : tol.param_half;
  bool pass = param_metric <= param_tol && gnorm_rel <= tol.fp32_state_rel;
  std::string line = absl::StrFormat("%-32s teacher steps=%d param=%.3g(<=%.3g)", c.name,
                                     c.steps, param_metric, param_tol);
  if (d.eight_bit) {
    pass = pass && worst1.identical >= tol.codes_identical &&
           worst2.identical >= tol.codes_identical &&
           worst1.max_distance <= tol.max_code_distance &&
           worst2.max_distance <= tol.max_code_distance && absmax_rel <= tol.absmax_rel;
    absl::StrAppendFormat(&line,
                          " codes1=%.4f%% codes2=%.4f%%(>=%.2f%%) codedist=%d(<=%d)"
                          " absmax_rel=%.3g(<=%.3g)",
                          100 * worst1.identical, 100 * worst2.identical,
                          100 * tol.codes_identical,
                          std::max(worst1.max_distance, worst2.max_distance),
                          tol.max_code_distance, absmax_rel, tol.absmax_rel);
  } else {
    pass = pass && state_rel <= tol.fp32_state_rel;
    absl::StrAppendFormat(&line, " state32_rel=%.3g(<=%.3g)", state_rel, tol.fp32_state_rel);
  }
  if (d.clipping) {
    absl::StrAppendFormat(&line, " gnorm_rel=%.3g(<=%.3g)", gnorm_rel, tol.fp32_state_rel);
  }
  return CaseResult{absl::StrCat(line, " ", Verdict(pass)), pass};
}

absl::StatusOr<CaseResult> RunFree(core::Engine& engine, const GoldenCase& c, const CaseData& d,
                                   const Tolerances& tol) {
  absl::StatusOr<std::unique_ptr<core::ParamGroup>> group = NewGroup(engine, c);
  if (!group.ok()) return group.status();
  core::ParamGroup& g = **group;
  const int64_t numel = static_cast<int64_t>(d.param[0].size());
  if (absl::Status s = g.WriteParam(0, 0, ParamView(c, d, 0)); !s.ok()) return s;
  for (int k = 1; k <= c.steps; ++k) {
    const core::TensorGradient grad{0, GradView(c, d, k)};
    if (absl::Status s = g.Step({&grad, 1}, {}); !s.ok()) return s;
  }
  absl::StatusOr<std::vector<float>> p = ReadParamFloat(g, c, numel);
  if (!p.ok()) return p.status();
  const double den = NormDiff(d.param[c.steps], d.param[0]);
  const double num = NormDiff(*p, d.param[c.steps]);
  double metric = den == 0 ? (num == 0 ? 0 : INFINITY) : num / den;
  if (std::isnan(num)) metric = INFINITY;
  const double param_tol = c.dtype == DType::kFloat32 ? tol.param_fp32 : tol.param_half;
  const bool pass = metric <= param_tol;
  std::string line = absl::StrFormat("%-32s free    steps=%d param_final=%.3g(<=%.3g)", c.name,
                                     c.steps, metric, param_tol);
  // For information: how far the engine's own codes drifted from the reference's.
  absl::StatusOr<core::TensorState> st = g.ExportState(0);
  if (!st.ok()) return st.status();
  if (d.eight_bit) {
    const CodeStats c1 = CompareCodes(st->state1, d.state1[c.steps]);
    const CodeStats c2 = CompareCodes(st->state2, d.state2[c.steps]);
    absl::StrAppendFormat(&line, " final_codes1=%.4f%% final_codes2=%.4f%%", 100 * c1.identical,
                          100 * c2.identical);
  }
  return CaseResult{absl::StrCat(line, " ", Verdict(pass)), pass};
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

Tolerances DefaultTolerances() { return Tolerances{}; }

Tolerances TightTolerances() {
  Tolerances t;
  t.codes_identical = 0.9999;
  t.param_fp32 = 1e-5;
  return t;
}

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

absl::StatusOr<CaseResult> RunCase(core::Engine& engine, const GoldenCase& c, Mode mode,
                                   const Tolerances& tol) {
  absl::StatusOr<CaseData> d = LoadData(c);
  if (!d.ok()) return d.status();
  return mode == Mode::kTeacher ? RunTeacher(engine, c, *d, tol) : RunFree(engine, c, *d, tol);
}

}  // namespace optd::tools
