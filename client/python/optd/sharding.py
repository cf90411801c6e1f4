"""Rendezvous (highest-random-weight) placement of tensors on servers.

Every (server, key) pair gets a score; a key lives on the server with the highest score, so
adding a server moves only the keys it now wins (about 1/N of them) and removing one moves only
its own keys. The hash is the same as the C++ client's (client/sharding.cc): FNV-1a 64 over
server + '\\0' + key, then the splitmix64 finalizer, so both clients place tensors identically.
"""

_MASK = (1 << 64) - 1


def _fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & _MASK
    return h


def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def score(server, key):
    return _mix64(_fnv1a64(server.encode() + b"\0" + key.encode()))


def place(key, servers):
    """Index into `servers` of the server that holds `key` (ties: the lower index)."""
    if not servers:
        raise ValueError("servers: empty list of server addresses")
    best, best_score = 0, -1
    for i, s in enumerate(servers):
        sc = score(s, key)
        if sc > best_score:
            best, best_score = i, sc
    return best
