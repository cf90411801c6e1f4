// A set of disjoint half-open ranges [begin, end) of element indices: which parts of a tensor an
// upload or a step has covered, and whether a new chunk overlaps an earlier one.
#pragma once

#include <cstdint>
#include <map>

namespace optd::server {

// Thread safety: not thread-safe.
class IntervalSet {
 public:
  // Adds [begin, end). Returns false (and changes nothing) if it overlaps a range already in.
  bool InsertDisjoint(int64_t begin, int64_t end);
  // Adds [begin, end), merging with whatever it overlaps (uploads may rewrite elements).
  void InsertMerge(int64_t begin, int64_t end);
  // Number of elements covered.
  int64_t covered() const { return covered_; }
  void Clear() {
    ranges_.clear();
    covered_ = 0;
  }

 private:
  std::map<int64_t, int64_t> ranges_;  // begin -> end, disjoint and not touching
  int64_t covered_ = 0;
};

}  // namespace optd::server
