#include "optd/client/sharding.h"

#include <string>

namespace optd::client {

uint64_t Fnv1a64(std::string_view data) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t RendezvousScore(std::string_view server, std::string_view key) {
  std::string joined;
  joined.reserve(server.size() + 1 + key.size());
  joined.append(server);
  joined.push_back('\0');
  joined.append(key);
  return Mix64(Fnv1a64(joined));
}

size_t PlaceKey(std::string_view key, const std::vector<std::string>& servers) {
  size_t best = 0;
  uint64_t best_score = 0;
  for (size_t i = 0; i < servers.size(); ++i) {
    const uint64_t s = RendezvousScore(servers[i], key);
    if (i == 0 || s > best_score) {
      best = i;
      best_score = s;
    }
  }
  return best;
}

}  // namespace optd::client
