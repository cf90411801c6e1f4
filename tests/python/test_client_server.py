"""optd.Client (numpy) against a real optd server process."""

import numpy as np
import pytest

import optd
from optd import reference


def _rng(seed):
    return np.random.default_rng(seed)


def test_create_upload_step_matches_reference(server):
    c = optd.Client(server.target)
    n1, n2 = 5000, 300  # one 8-bit tensor with a partial tail block, one fp32-state tensor
    info = c.create_group("g", [("a", "float32", (n1,)), ("b", "float32", (n2,))],
                          lr=2e-3, weight_decay=0.05)
    assert info.hyperparameters.lr == pytest.approx(2e-3)
    rng = _rng(0)
    w = {"a": rng.standard_normal(n1).astype(np.float32),
         "b": rng.standard_normal(n2).astype(np.float32)}
    up = c.upload_weights("g", w)
    assert up.weights_initialized and up.elements_written == n1 + n2
    ref = reference.PagedAdamW8bit(lr=2e-3, weight_decay=0.05)
    local = {k: v.copy() for k, v in w.items()}
    out = {k: np.zeros_like(v) for k, v in w.items()}
    for k in range(1, 6):
        g = {"a": rng.standard_normal(n1).astype(np.float32),
             "b": rng.standard_normal(n2).astype(np.float32)}
        done, got = c.step("g", k, g, out=out)
        assert got is out and done.step == k and done.version == k and not done.duplicate
        ref.step(local, g)
    for key in w:
        metric = np.linalg.norm(out[key] - local[key]) / np.linalg.norm(local[key] - w[key])
        assert metric <= 2e-4, (key, metric)
    version, pulled = c.pull_weights("g")
    assert version == 5
    np.testing.assert_array_equal(pulled["a"], out["a"])
    assert c.get_group("g").version == 5


def test_retry_of_applied_step_is_a_duplicate(server):
    c = optd.Client(server.target)
    c.create_group("g", [("a", "float32", (256,))])
    c.upload_weights("g", {"a": np.ones(256, np.float32)})
    g = {"a": np.full(256, 0.5, np.float32)}
    c.step("g", 1, g)
    done, _ = c.step("g", 1, g)
    assert done.duplicate
    assert c.get_group("g").version == 1


def test_errors_name_the_field(server):
    c = optd.Client(server.target)
    with pytest.raises(optd.NotFoundError, match="nope"):
        c.get_group("nope")
    with pytest.raises(optd.InvalidArgumentError, match="lr"):
        c.create_group("bad", [("a", "float32", (10,))], lr=-1.0)
    with pytest.raises(optd.InvalidArgumentError, match="percentile_clipping"):
        c.create_group("bad", [("a", "float32", (10,))], percentile_clipping=0)
    c.create_group("g", [("a", "float32", (10,))])
    with pytest.raises(optd.AlreadyExistsError, match="g"):
        c.create_group("g", [("a", "float32", (10,))])
    c.upload_weights("g", {"a": np.zeros(10, np.float32)})
    with pytest.raises(optd.OptdError, match="zzz"):
        c.step("g", 1, {"zzz": np.zeros(10, np.float32)})
    with pytest.raises(optd.InvalidArgumentError, match="worker"):
        c.step("g", 1, {"a": np.zeros(10, np.float32)}, worker=3)
    # the server keeps serving and the group is unchanged
    assert c.get_group("g").version == 0


def test_bf16_group_and_narrow_gradient(server):
    c = optd.Client(server.target)
    n = 4096
    c.create_group("h", [("w", "bfloat16", (64, 64)), ("f", "float32", (n,))])
    rng = _rng(3)
    wf = rng.standard_normal(n).astype(np.float32)
    wb = reference.round_to_dtype(rng.standard_normal(n).astype(np.float32), "bfloat16")
    bits = (wb.view(np.uint32) >> 16).astype(np.uint16)
    c.upload_weights("h", {"w": bits, "f": wf})
    gb = reference.round_to_dtype(rng.standard_normal(n).astype(np.float32), "bfloat16")
    gbits = (gb.view(np.uint32) >> 16).astype(np.uint16)
    # an fp32 parameter may receive a bf16 gradient
    done, out = c.step("h", 1, {"w": gbits, "f": gbits})
    assert out["w"].dtype == np.uint16 and out["w"].shape == (64, 64)
    ref = reference.PagedAdamW8bit()
    lw, lf = wb.copy(), wf.copy()
    ref.step({"w": lw, "f": lf}, {"w": gb, "f": gb}, dtypes={"w": "bfloat16"})
    got_w = (out["w"].reshape(-1).astype(np.uint32) << 16).view(np.float32)
    assert np.linalg.norm(got_w - lw) / np.linalg.norm(lw - wb) <= 5e-3
    assert np.linalg.norm(out["f"] - lf) / np.linalg.norm(lf - wf) <= 2e-4


def test_export_import_state_round_trip(server):
    c = optd.Client(server.target)
    n = 5000
    c.create_group("s", [("a", "float32", (n,))])
    rng = _rng(4)
    w = rng.standard_normal(n).astype(np.float32)
    c.upload_weights("s", {"a": w})
    for k in range(1, 4):
        c.step("s", k, {"a": rng.standard_normal(n).astype(np.float32)})
    st = c.export_state("s")["a"]
    assert st["step"] == 3
    assert st["state1"].dtype == np.uint8 and st["state1"].size == n
    assert st["absmax1"].shape == ((n + 255) // 256,)
    assert st["qmap1"].shape == (256,)
    c.create_group("t", [("a", "float32", (n,))])
    _, cur = c.pull_weights("s")
    c.upload_weights("t", {"a": cur["a"]})
    c.import_state("t", {"a": st})
    g = rng.standard_normal(n).astype(np.float32)
    _, o1 = c.step("s", 4, {"a": g})
    _, o2 = c.step("t", 1, {"a": g})
    np.testing.assert_array_equal(o1["a"], o2["a"])


def test_subscriber_receives_each_version(server):
    c = optd.Client(server.target)
    c.create_group("p", [("a", "float32", (1000,))])
    c.upload_weights("p", {"a": np.zeros(1000, np.float32)})
    sub = c.subscribe("p", send_current=True)
    it = iter(sub)
    v0, w0 = next(it)
    assert v0 == 0 and np.all(w0["a"] == 0)
    _, out = c.step("p", 1, {"a": np.ones(1000, np.float32)})
    v1, w1 = next(it)
    assert v1 == 1
    np.testing.assert_array_equal(w1["a"], out["a"])
    sub.cancel()


def test_checkpoint_save_and_restore(server):
    c = optd.Client(server.target)
    c.create_group("k", [("a", "float32", (300,))])
    c.upload_weights("k", {"a": np.ones(300, np.float32)})
    c.step("k", 1, {"a": np.ones(300, np.float32)})
    saved = c.save_checkpoint("ck1")
    assert saved.bytes > 0 and list(saved.groups) == ["k"]
    _, before = c.pull_weights("k")
    c.step("k", 2, {"a": np.ones(300, np.float32)})
    restored = c.restore_checkpoint("ck1")
    assert [g.group for g in restored.groups] == ["k"] and restored.groups[0].version == 1
    _, after = c.pull_weights("k")
    np.testing.assert_array_equal(after["a"], before["a"])
    with pytest.raises(optd.OptdError, match="nothere"):
        c.restore_checkpoint("nothere")
