"""Three servers give the same results as one; a killed shard is reported by its address."""

import numpy as np
import pytest

import optd
import optd.torch
from model_util import flat_params, loss_of, make_data, make_model


def _train(targets, steps=8, group="shardtest", **kw):
    x, y = make_data()
    model = make_model()
    opt = optd.torch.PagedAdamW8bit(model.parameters(), target=targets, group=group, **kw)
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
    return model, opt


def test_three_shards_equal_one_server(start_server):
    one = start_server("single")
    shards = [start_server(f"shard{i}") for i in range(3)]
    targets = [s.target for s in shards]
    m1, _ = _train(one.target)
    m3, opt3 = _train(targets)
    np.testing.assert_array_equal(flat_params(m1), flat_params(m3))
    sg = opt3.server_groups()[0]
    assert len(set(sg.placement.values())) >= 2  # the tensors really are spread
    for i, s in enumerate(shards):
        names = {t.name for t in optd.Client(s.target).get_group(sg.group).tensors} \
            if i in sg.used_shards() else set()
        assert names == {k for k, v in sg.placement.items() if v == i}


def test_killed_shard_is_reported_by_address(start_server):
    shards = [start_server(f"shard{i}") for i in range(3)]
    targets = [s.target for s in shards]
    # A shard that does not come back: the optimizer retries (briefly here), then raises.
    model, opt = _train(targets, steps=1, reconnect=optd.torch.Reconnect(
        attempts=3, total_seconds=5, initial_backoff=0.05))
    sg = opt.server_groups()[0]
    victim = sg.used_shards()[-1]
    shards[victim].kill()
    x, y = make_data()
    opt.zero_grad()
    loss_of(model, x, y).backward()
    with pytest.raises(optd.ShardError) as err:
        opt.step()
    assert err.value.target == targets[victim]
    assert targets[victim] in str(err.value)
    assert "gave up reconnecting after 3 attempts" in str(err.value)
