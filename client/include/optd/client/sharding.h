// Rendezvous (highest-random-weight) hashing: which server holds a key ("group/tensor").
// Adding a server moves only the keys it now wins (about 1/N); the Python client
// (client/python/optd/sharding.py) uses the same function, so both place tensors identically.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace optd::client {

uint64_t Fnv1a64(std::string_view data);
uint64_t Mix64(uint64_t z);  // splitmix64's finalizer
// Score of `key` on `server`: Mix64(Fnv1a64(server + '\0' + key)).
uint64_t RendezvousScore(std::string_view server, std::string_view key);
// Index into `servers` of the server with the highest score (ties: lower index).
// REQUIRES: !servers.empty().
size_t PlaceKey(std::string_view key, const std::vector<std::string>& servers);

}  // namespace optd::client
