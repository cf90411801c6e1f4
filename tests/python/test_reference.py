"""optd.reference against the bitsandbytes 0.49.2 golden vectors (tests/data/golden)."""

import hashlib
import json
import os

import numpy as np
import pytest

from optd import quant_maps, reference

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "data", "golden")
CASES = json.load(open(os.path.join(GOLDEN, "manifest.json")))


def _load(case, name):
    return np.load(os.path.join(GOLDEN, case["name"], name))


def _hyper(case):
    return dict(lr=case["lr"], betas=tuple(case["betas"]), eps=case["eps"],
                weight_decay=case["wd"], min_8bit_size=case.get("min_8bit_size", 4096),
                percentile_clipping=case.get("pclip", 100))


def _tolerance(case):
    return 2e-4 if case["dtype"] == "float32" else 5e-3


def _carrier(case, a):
    return a.astype(np.float16) if case["dtype"] == "float16" else a.astype(np.float32)


def test_quant_map_hashes():
    assert hashlib.sha256(quant_maps.SIGNED.astype("<f4").tobytes()).hexdigest() == \
        "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c"
    assert hashlib.sha256(quant_maps.UNSIGNED.astype("<f4").tobytes()).hexdigest() == \
        "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_free_running_within_tolerance(case):
    opt = reference.PagedAdamW8bit(**_hyper(case))
    p0 = _load(case, "param_0.npy")
    p = _carrier(case, p0).copy()
    for k in range(1, case["steps"] + 1):
        opt.step({"w": p}, {"w": _load(case, f"grad_{k}.npy")}, dtypes={"w": case["dtype"]})
    ref_t = _load(case, f"param_{case['steps']}.npy").astype(np.float64)
    metric = np.linalg.norm(p.astype(np.float64) - ref_t) / np.linalg.norm(ref_t - p0)
    assert metric <= _tolerance(case), metric


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_teacher_forced_codes_and_scales(case):
    hp = reference.Hyper(**_hyper(case))
    n = int(np.prod(case["shape"]))
    eight_bit = n >= hp.min_8bit_size
    for k in range(1, case["steps"] + 1):
        st = reference.TensorState(n, eight_bit, hp.percentile_clipping < 100)
        st.step = k - 1
        if k > 1:
            st.state1[:] = _load(case, f"state1_{k - 1}.npy").reshape(-1)
            st.state2[:] = _load(case, f"state2_{k - 1}.npy").reshape(-1)
            if eight_bit:
                st.absmax1[:] = _load(case, f"absmax1_{k - 1}.npy")
                st.absmax2[:] = _load(case, f"absmax2_{k - 1}.npy")
            if st.gnorm_vec is not None:
                st.gnorm_vec[:] = _load(case, f"gnorm_vec_{k - 1}.npy")
        prev = _load(case, f"param_{k - 1}.npy")
        p = _carrier(case, prev).reshape(-1).copy()
        reference.step_tensor(p, _load(case, f"grad_{k}.npy"), st, hp, case["dtype"])
        ref_k = _load(case, f"param_{k}.npy").reshape(-1).astype(np.float64)
        denom = np.linalg.norm(ref_k - prev.reshape(-1))
        assert np.linalg.norm(p.astype(np.float64) - ref_k) / denom <= _tolerance(case)
        if eight_bit:
            for key, got in (("state1", st.state1), ("state2", st.state2)):
                want = _load(case, f"{key}_{k}.npy").reshape(-1)
                diff = (got.astype(np.int64) - want.astype(np.int64)) % 256
                dist = np.minimum(diff, 256 - diff)
                assert dist.max() <= 1, key
                assert np.mean(dist == 0) >= 0.999, key
            for key, got in (("absmax1", st.absmax1), ("absmax2", st.absmax2)):
                want = _load(case, f"{key}_{k}.npy")
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=0, err_msg=key)
        else:
            # fp32 moments: relative error of the whole array (single elements may cancel).
            for key, got in (("state1", st.state1), ("state2", st.state2)):
                want = _load(case, f"{key}_{k}.npy").reshape(-1).astype(np.float64)
                assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5, key
        if st.gnorm_vec is not None:
            np.testing.assert_allclose(st.gnorm_vec, _load(case, f"gnorm_vec_{k}.npy"), rtol=1e-5)


def test_bf16_rounding_is_nearest_even():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5], np.float32)
    got = reference.round_to_dtype(x, "bfloat16")
    np.testing.assert_array_equal(got, np.array([1.0, 1.0, 1.0 + 2 ** -6, -2.5], np.float32))


def test_hyper_errors_name_the_field():
    with pytest.raises(ValueError, match="percentile_clipping"):
        reference.PagedAdamW8bit(percentile_clipping=0)
    with pytest.raises(ValueError, match="beta2"):
        reference.PagedAdamW8bit(betas=(0.9, 1.0))
