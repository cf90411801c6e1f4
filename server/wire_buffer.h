// A byte buffer that is not zero-filled on allocation, for the server's data path.
//
// Note [Uninitialized staging]
// Snapshots and undo-journal entries are overwritten in full by ParamGroup::ReadParam right
// after allocation. std::vector<uint8_t>(n) would first write n zero bytes: a whole extra pass
// over memory that is fresh (page faults) and as large as the tensor, measured at several
// percent of a step on the 2-core dev machine. This buffer leaves the bytes indeterminate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace optd::server {

class WireBuffer {
 public:
  WireBuffer() = default;
  explicit WireBuffer(size_t size) : data_(new uint8_t[size]), size_(size) {}

  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

 private:
  std::unique_ptr<uint8_t[]> data_;  // default-initialized: not zeroed
  size_t size_ = 0;
};

}  // namespace optd::server
