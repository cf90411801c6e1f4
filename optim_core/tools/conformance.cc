#include "tools/conformance.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "internal/float_convert.h"
#include "tools/metrics.h"

namespace optd::tools {
namespace {

using core::DType;

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

}  // namespace

Tolerances DefaultTolerances() { return Tolerances{}; }

Tolerances TightTolerances() {
  Tolerances t;
  t.codes_identical = 0.9999;
  t.param_fp32 = 1e-5;
  return t;
}

absl::StatusOr<CaseResult> RunCase(core::Engine& engine, const GoldenCase& c, Mode mode,
                                   const Tolerances& tol) {
  absl::StatusOr<CaseData> d = LoadCaseData(c);
  if (!d.ok()) return d.status();
  return mode == Mode::kTeacher ? RunTeacher(engine, c, *d, tol) : RunFree(engine, c, *d, tol);
}

}  // namespace optd::tools
