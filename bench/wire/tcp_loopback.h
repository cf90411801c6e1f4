// The physical ceiling of the wire benchmark: plain loopback TCP over K parallel connections.
//
// Note [What the TCP ceiling measures]
// Each of K connections moves its 1/K slice of a cold source buffer (larger than any cache,
// written once before timing) in 1 MiB send() calls into the same slice of a destination
// buffer, so every byte is read from memory, copied through the kernel and written to memory,
// as a gRPC payload must be. In the two-way pattern each connection carries a slice in each
// direction at once (the client end sends "up" and receives "down", the server end the
// reverse), which is what a Step does with its gradient and weights on one HTTP/2 connection.
// The figure is aggregate payload bytes (both directions summed in the two-way pattern) over
// the wall time from releasing all threads until the last byte arrived; GB/s = 1e9 bytes/s.
//
// Thread safety: TcpLoopback is not thread-safe; one owner runs one measurement at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace optd::bench {

enum class TcpPattern { kOneWay, kTwoWay };

class TcpLoopback {
 public:
  // Allocates and fills the buffers (two for kOneWay; four once kTwoWay is first measured),
  // `bytes` each.
  explicit TcpLoopback(size_t bytes);

  // One measurement over `connections` fresh connections; returns GB/s.
  [[nodiscard]] absl::StatusOr<double> Measure(int connections, TcpPattern pattern);

  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_;
  std::vector<uint8_t> up_src_, up_dst_, down_src_, down_dst_;
};

}  // namespace optd::bench
