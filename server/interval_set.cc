#include "server/interval_set.h"

#include <algorithm>
#include <iterator>

namespace optd::server {

bool IntervalSet::InsertDisjoint(int64_t begin, int64_t end) {
  if (begin >= end) return true;
  auto next = ranges_.lower_bound(begin);
  if (next != ranges_.end() && next->first < end) return false;
  if (next != ranges_.begin() && std::prev(next)->second > begin) return false;
  InsertMerge(begin, end);
  return true;
}

void IntervalSet::InsertMerge(int64_t begin, int64_t end) {
  if (begin >= end) return;
  auto it = ranges_.upper_bound(begin);
  if (it != ranges_.begin() && std::prev(it)->second >= begin) --it;
  while (it != ranges_.end() && it->first <= end) {
    begin = std::min(begin, it->first);
    end = std::max(end, it->second);
    covered_ -= it->second - it->first;
    it = ranges_.erase(it);
  }
  ranges_.emplace(begin, end);
  covered_ += end - begin;
}

}  // namespace optd::server
