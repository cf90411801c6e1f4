"""optd.Client steps spread over several streams: Client(streams=K) for a whole step, and
step parts (part_count/part_index) sent by concurrent calls. Same results as one stream, bit
for bit; one failing part fails the whole step."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import optd
from server_features import supports_step_parts

TENSORS = [("a", "float32", (5000,)), ("b", "bfloat16", (3, 700)), ("c", "float16", (4096,)),
           ("d", "float32", (1, 300)), ("e", "float32", (70000,))]
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def _arrays(seed):
    rng = np.random.default_rng(seed)
    out = {}
    for name, dtype, shape in TENSORS:
        x = rng.standard_normal(shape).astype(np.float32)
        if dtype == "bfloat16":
            out[name] = (x.view(np.uint32) >> 16).astype(np.uint16)
        else:
            out[name] = x.astype(DTYPES[dtype])
    return out


def _group(client, name):
    client.create_group(name, TENSORS)
    client.upload_weights(name, _arrays(0))


@pytest.fixture
def parts_server(server):
    if not supports_step_parts(server.target):
        pytest.skip("the server does not support steps spread over several streams")
    return server


def test_k_streams_equal_one_stream(parts_server):
    one = optd.Client(parts_server.target, streams=1)
    many = optd.Client(parts_server.target, streams=3)
    _group(one, "one")
    _group(many, "many")
    for k in range(1, 4):
        g = _arrays(k)
        d1, o1 = one.step("one", k, g)
        d3, o3 = many.step("many", k, g)
        assert (d1.version, d3.version) == (k, k) and not d3.duplicate
        assert set(o3) == set(o1)
        for name in o1:
            np.testing.assert_array_equal(o1[name], o3[name])


def test_parts_by_hand_equal_a_whole_step(parts_server):
    c = optd.Client(parts_server.target)
    _group(c, "whole")
    _group(c, "parts")
    g = _arrays(5)
    _, whole = c.step("whole", 1, g)
    split = [["e"], ["a", "b"], ["c", "d"]]
    with ThreadPoolExecutor(len(split)) as pool:
        futures = [pool.submit(c.step, "parts", 1, {n: g[n] for n in names},
                               part_count=len(split), part_index=k)
                   for k, names in enumerate(split)]
        results = [f.result() for f in futures]
    for (done, out), names in zip(results, split):
        assert done.step == 1 and done.version == 1 and not done.duplicate
        assert set(out) == set(names)  # each part gets back the weights of what it sent
        for n in names:
            np.testing.assert_array_equal(out[n], whole[n])
    assert c.get_group("parts").version == 1


def test_a_failing_part_fails_the_whole_step(parts_server):
    c = optd.Client(parts_server.target)
    _group(c, "g")
    g = _arrays(6)
    _, before = c.pull_weights("g")
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(c.step, "g", 1, {"a": g["a"]}, part_count=2, part_index=0)
        bad = pool.submit(c.step, "g", 1, {"nope": g["a"]}, part_count=2, part_index=1)
        with pytest.raises(optd.OptdError, match="nope"):
            bad.result()
        with pytest.raises(optd.OptdError):
            good.result()
    assert c.get_group("g").version == 0
    _, after = c.pull_weights("g")
    for n in before:
        np.testing.assert_array_equal(before[n], after[n])
    done, _ = c.step("g", 1, g)  # the same step number is free again
    assert done.version == 1 and not done.duplicate


def test_part_arguments_and_streams_are_checked(server, monkeypatch):
    c = optd.Client(server.target)
    with pytest.raises(optd.InvalidArgumentError, match="part_index"):
        c.step("g", 1, {"a": np.zeros(4, np.float32)}, part_count=2, part_index=2)
    with pytest.raises(optd.InvalidArgumentError, match="streams"):
        optd.Client(server.target, streams=0)
    monkeypatch.setenv("OPTD_STREAMS", "three")
    with pytest.raises(optd.InvalidArgumentError, match="OPTD_STREAMS"):
        optd.Client(server.target)
    monkeypatch.setenv("OPTD_STREAMS", "4")
    assert optd.Client(server.target).streams == 4


def test_a_part_without_gradients_does_not_withhold_weights(parts_server):
    """Part 0 carries no gradient (a bucket whose tensors got none this step) and is sent
    last: the other parts still get their weights, equal to a whole step's."""
    c = optd.Client(parts_server.target)
    _group(c, "whole")
    _group(c, "parts")
    g = _arrays(7)
    for k in range(1, 4):
        _, whole = c.step("whole", k, {n: g[n] for n in ("a", "b", "e")})
        with ThreadPoolExecutor(2) as pool:
            others = [pool.submit(c.step, "parts", k, {n: g[n] for n in names}, part_count=3,
                                  part_index=i)
                      for i, names in ((1, ["e"]), (2, ["a", "b"]))]
            empty, nothing = c.step("parts", k, {}, part_count=3, part_index=0)
            results = [f.result() for f in others]
        assert empty.version == k and nothing == {}
        for done, out in results:
            assert done.version == k
            for n in out:
                np.testing.assert_array_equal(out[n], whole[n])
