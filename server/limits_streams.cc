#include "server/limits_streams.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace optd::server {

std::string PeerAddress(std::string_view peer) {
  const bool v4 = peer.rfind("ipv4:", 0) == 0;
  const bool v6 = peer.rfind("ipv6:", 0) == 0;
  if (!v4 && !v6) return std::string(peer);
  const size_t colon = peer.rfind(':');
  if (colon <= 5) return std::string(peer);
  // "ipv6:[::1]:5123": the port follows the closing bracket.
  if (v6 && peer[colon - 1] != ']') return std::string(peer);
  return std::string(peer.substr(0, colon));
}

StreamGate::Slot::~Slot() { gate_->Leave(address_); }

absl::StatusOr<std::unique_ptr<StreamGate::Slot>> StreamGate::Enter(std::string_view peer) {
  std::string address = max_per_address_ > 0 ? PeerAddress(peer) : std::string();
  absl::MutexLock lock(&mu_);
  if (total_ >= max_total_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server already runs ", total_,
                     " streaming calls, the limit (--max_streams); retry "
                     "when one has ended"));
  }
  if (max_per_address_ > 0) {
    int& mine = per_address_[address];
    if (mine >= max_per_address_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("your address ", address, " already runs ", mine,
                       " streaming calls, the limit per client address (--max_streams_per_peer)"));
    }
    ++mine;
  }
  ++total_;
  return std::unique_ptr<Slot>(new Slot(this, std::move(address)));
}

void StreamGate::Leave(const std::string& address) {
  absl::MutexLock lock(&mu_);
  --total_;
  if (max_per_address_ > 0) {
    auto it = per_address_.find(address);
    if (it != per_address_.end() && --it->second == 0) per_address_.erase(it);
  }
}

int StreamGate::active() const {
  absl::MutexLock lock(&mu_);
  return total_;
}

}  // namespace optd::server
