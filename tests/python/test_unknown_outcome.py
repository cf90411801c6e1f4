"""Calls that fail on the client may still have happened on the server (docs/limits.md, "Calls
that may have taken effect although the caller saw an error"): the error says so, and the
documented checks tell what happened. Real optd processes on 127.0.0.1; a relay that loses a
call's answer after the server acted on it (answer_dropper.py) makes the outcome certain."""

import numpy as np
import pytest

import optd
from optd.errors import DeadlineExceededError
from answer_dropper import AnswerDropper

BIG = 8 << 20  # elements: a 32 MiB upload takes longer than a millisecond


def _assert_unknown_outcome(e, call, target):
    assert e.outcome_unknown, e
    text = str(e)
    assert call in text and target in text, text
    assert "may have been applied" in text, text


def test_upload_past_its_deadline_then_the_documented_check(server):
    """An upload with a 1 ms deadline fails with DEADLINE_EXCEEDED whose message says it may
    have been applied; GetGroup's weights_initialized tells whether every element arrived, and
    uploading again (idempotent) completes it."""
    admin = optd.Client(server.target)
    admin.create_group("big", [("w", "float32", (BIG,))])
    weights = np.arange(BIG, dtype=np.float32)
    hasty = optd.Client(server.target, data_timeout=0.001)
    with pytest.raises(DeadlineExceededError) as info:
        hasty.upload_weights("big", {"w": weights})
    _assert_unknown_outcome(info.value, "UploadWeights", server.target)
    assert isinstance(info.value, TimeoutError)
    state = admin.get_group("big")  # the documented check: some, all or none was written
    if not state.weights_initialized:
        assert admin.upload_weights("big", {"w": weights}).weights_initialized
    assert admin.get_group("big").weights_initialized
    _, got = admin.pull_weights("big")
    np.testing.assert_array_equal(got["w"], weights)


@pytest.fixture
def relay(server):
    r = AnswerDropper(server.target)
    yield r
    r.close()


def _group(client, name):
    client.create_group(name, [("w", "float32", (1024,))])
    client.upload_weights(name, {"w": np.ones(1024, np.float32)})


def test_upload_whose_answer_was_lost_was_applied(server, relay):
    admin = optd.Client(server.target)
    admin.create_group("g", [("w", "float32", (1024,))])
    weights = np.linspace(-1, 1, 1024, dtype=np.float32)
    relay.drop_next_answer()
    with pytest.raises(optd.OptdError) as info:
        optd.Client(relay.target).upload_weights("g", {"w": weights})
    assert relay.dropped == 1
    _assert_unknown_outcome(info.value, "UploadWeights", relay.target)
    assert admin.get_group("g").weights_initialized
    np.testing.assert_array_equal(admin.pull_weights("g")[1]["w"], weights)


def test_delete_whose_answer_was_lost_was_applied(server, relay):
    admin = optd.Client(server.target)
    _group(admin, "doomed")
    relay.drop_next_answer()
    with pytest.raises(optd.OptdError) as info:
        optd.Client(relay.target).delete_group("doomed")
    assert relay.dropped == 1
    _assert_unknown_outcome(info.value, "DeleteGroup", relay.target)
    with pytest.raises(optd.NotFoundError):  # the documented check
        admin.get_group("doomed")
    assert "doomed" not in {g.group for g in admin.list_groups()}


def test_save_whose_answer_was_lost_was_applied(server, relay):
    admin = optd.Client(server.target)
    _group(admin, "kept")
    relay.drop_next_answer()
    with pytest.raises(optd.OptdError) as info:
        optd.Client(relay.target).save_checkpoint("lost-answer")
    assert relay.dropped == 1
    _assert_unknown_outcome(info.value, "SaveCheckpoint", relay.target)
    # The file was written completely: restoring it works (saving again would replace it).
    restored = admin.restore_checkpoint("lost-answer")
    assert [g.group for g in restored.groups] == ["kept"]
