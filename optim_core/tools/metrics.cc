#include "tools/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace optd::tools {

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

double RelNorm(const std::vector<float>& got, const std::vector<float>& want) {
  const double diff = NormDiff(got, want);
  if (!std::isfinite(diff)) return INFINITY;
  const double den = Norm(want);
  if (den == 0) return diff == 0 ? 0 : INFINITY;
  return diff / den;
}

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

}  // namespace optd::tools
