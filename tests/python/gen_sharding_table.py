"""Writes tests/data/sharding_table.tsv: fixed (servers, key) -> placement and (server, key) ->
score rows that the C++ client (client/sharding_test.cc) and the Python client
(test_sharding.py) must both reproduce. It was generated once from the Python implementation
and committed; regenerate only on purpose (a change of placement moves every trainer's tensors).

Usage: python3 tests/python/gen_sharding_table.py > tests/data/sharding_table.tsv"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "client", "python"))
from optd import sharding  # noqa: E402

SERVER_LISTS = [
    ["a:1", "b:2", "c:3"],
    ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"],
    ["s1:1", "s2:1", "s3:1", "s4:1"],
    ["host-a:50051", "host-b:50051"],
    ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003", "127.0.0.1:7004", "127.0.0.1:7005"],
]
KEYS = ([f"model/layer{i}.weight" for i in range(0, 40, 3)]
        + [f"torch-0123456789ab/0/p{i}" for i in range(12)]
        + ["g/t", "", "/", "group/tensor with spaces", "gr\u00fcppe/\u0433\u0440\u0430\u0434",
           "x" * 300])


def main():
    print("# optd sharding table: both clients must reproduce every row (see "
          "tests/python/gen_sharding_table.py).")
    print("# place<TAB>servers (comma-separated)<TAB>key<TAB>index of the server holding key")
    print("# score<TAB>server<TAB>key<TAB>RendezvousScore as 16 hex digits")
    print("# Fields are separated by tabs; keys are UTF-8 and contain no tab.")
    for servers in SERVER_LISTS:
        for key in KEYS:
            print(f"place\t{','.join(servers)}\t{key}\t{sharding.place(key, servers)}")
    for server in SERVER_LISTS[0] + SERVER_LISTS[3]:
        for key in KEYS[:6] + KEYS[-6:]:
            print(f"score\t{server}\t{key}\t{sharding.score(server, key):016x}")


if __name__ == "__main__":
    main()
