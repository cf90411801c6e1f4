// Error measures of the conformance tool.
#pragma once

#include <cstdint>
#include <vector>

namespace optd::tools {

// Euclidean norm of a - b, and of a (in double).
double NormDiff(const std::vector<float>& a, const std::vector<float>& b);
double Norm(const std::vector<float>& a);

// norm(got - want) / norm(want); 0 when both are zero, infinity for a non-finite difference.
double RelNorm(const std::vector<float>& got, const std::vector<float>& want);

// Largest per-element |got - want| / |want| (infinity where want is 0 and got is not).
double MaxRel(const std::vector<float>& got, const std::vector<float>& want);

struct CodeStats {
  double identical = 1.0;  // fraction of equal codes
  int max_distance = 0;    // largest circular uint8 distance
};
CodeStats CompareCodes(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want);

}  // namespace optd::tools
