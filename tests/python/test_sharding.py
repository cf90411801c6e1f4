"""Rendezvous placement: stable, balanced, and adding a server moves about 1/N of the keys."""

import os

from optd import sharding

KEYS = [f"model/layer{i}.weight" for i in range(3000)]
TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data",
                     "sharding_table.tsv")


def _table_rows():
    with open(TABLE, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                kind, where, key, expected = line.split("\t")
                yield kind, where, key, expected


def test_placement_matches_the_shared_table():
    """tests/data/sharding_table.tsv is also read by the C++ client's test
    (client/sharding_test.cc): both clients must place every key of it identically."""
    rows = list(_table_rows())
    places = [r for r in rows if r[0] == "place"]
    scores = [r for r in rows if r[0] == "score"]
    assert len(places) >= 100 and len(scores) >= 50
    for _, servers, key, expected in places:
        assert sharding.place(key, servers.split(",")) == int(expected), (servers, key)
    for _, server, key, expected in scores:
        assert sharding.score(server, key) == int(expected, 16), (server, key)


def test_placement_is_deterministic_and_matches_known_values():
    servers = ["a:1", "b:2", "c:3"]
    first = [sharding.place(k, servers) for k in KEYS]
    assert first == [sharding.place(k, servers) for k in KEYS]
    assert sharding.score("a:1", "g/t") == sharding._mix64(sharding._fnv1a64(b"a:1\0g/t"))
    assert sharding._fnv1a64(b"") == 0xCBF29CE484222325
    assert sharding._fnv1a64(b"a") == 0xAF63DC4C8601EC8C


def test_balanced_over_three_servers():
    servers = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"]
    counts = [0, 0, 0]
    for k in KEYS:
        counts[sharding.place(k, servers)] += 1
    assert min(counts) > 0.8 * len(KEYS) / 3, counts


def test_adding_a_server_moves_about_one_in_n():
    old = ["s1:1", "s2:1", "s3:1"]
    new = old + ["s4:1"]
    moved = 0
    for k in KEYS:
        a, b = sharding.place(k, old), sharding.place(k, new)
        if a != b:
            assert b == 3  # a key only ever moves to the new server
            moved += 1
    assert 0.18 < moved / len(KEYS) < 0.32, moved


def test_placement_ignores_server_order():
    servers = ["x:1", "y:1", "z:1"]
    rev = list(reversed(servers))
    for k in KEYS[:200]:
        assert servers[sharding.place(k, servers)] == rev[sharding.place(k, rev)]
