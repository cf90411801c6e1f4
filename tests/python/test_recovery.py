"""optd.torch.PagedAdamW8bit recovers by itself (Note [Recovery] in optd/torch.py): a server
killed and restarted from its checkpoints, a server restored from an older checkpoint, a
stopped server, a trainer restarted from its own checkpoint, an answer lost after the server
applied the step. Real optd processes on 127.0.0.1; the training is closed-loop and full-batch,
so the weights after k steps depend only on k: every recovered run must end bit-identical to an
uninterrupted one of the same number of steps (no step skipped, none applied twice)."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import optd
import optd.torch
from optd.errors import DeadlineExceededError, StepMismatch
from answer_dropper import AnswerDropper
from model_util import flat_params, loss_of, make_data, make_model

# Fast enough to wait out in a test, long enough for a loaded 2-core machine.
FAST = optd.torch.Reconnect(attempts=40, total_seconds=60, initial_backoff=0.05,
                            max_backoff=0.5)


def _opt(model, target, **kw):
    kw.setdefault("reconnect", FAST)
    return optd.torch.PagedAdamW8bit(model.parameters(), target=target, **kw)


def _step(model, opt):
    x, y = make_data()
    opt.zero_grad()
    loss_of(model, x, y).backward()
    opt.step()


def _uninterrupted(start_server, steps):
    """The weights after `steps` steps of a run that nothing interrupts."""
    model = make_model()
    opt = _opt(model, start_server("reference").target)
    for _ in range(steps):
        _step(model, opt)
    return flat_params(model)


def _version(target, opt):
    return optd.Client(target).get_group(opt.server_group(0)).version


def _wait_for_checkpoint_after(ckpt_dir, t):
    """Waits until a periodic checkpoint written after time `t` exists and no newer one follows
    for 1.5 s (the server looks once a second): the newest then holds everything until t."""
    deadline = time.monotonic() + 30
    newest = None
    while time.monotonic() < deadline:
        names = [n for n in os.listdir(ckpt_dir) if n.startswith("auto-") and ".tmp" not in n]
        latest = max((os.path.getmtime(os.path.join(ckpt_dir, n)) for n in names), default=0)
        if latest > t and latest == newest and time.time() - latest > 1.5:
            return
        newest = latest
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint after {t} in {os.listdir(ckpt_dir)}")


def test_killed_server_restarts_and_training_continues(start_server):
    """kill -9 between steps, with periodic checkpoints and --restore=latest. The trainer's
    next step starts while the server is down: it waits (backoff), finds the restarted server
    with this worker's last step, and goes on; the end equals an uninterrupted run."""
    server = start_server("victim", ["--checkpoint_every_steps=1", "--restore=latest"])
    model = make_model()
    opt = _opt(model, server.target)
    for _ in range(4):
        _step(model, opt)
    _wait_for_checkpoint_after(server.checkpoint_dir, time.time() - 0.05)
    server.kill()
    restarter = threading.Timer(0.5, server.restart)
    restarter.start()
    try:
        _step(model, opt)  # the server is down when this begins
    finally:
        restarter.join()
    for _ in range(3):
        _step(model, opt)
    assert opt.last_step() == 8 and opt.duplicate_steps == 0
    assert _version(server.target, opt) == 8
    np.testing.assert_array_equal(flat_params(model), _uninterrupted(start_server, 8))


def test_server_restored_from_an_older_checkpoint_raises_step_mismatch(start_server):
    """The server comes back from the checkpoint of step 3 while the trainer is at step 6: the
    next step is refused (nothing applied) with StepMismatch(3, 6); resume() takes the server's
    weights and count, and training from there equals an uninterrupted run."""
    server = start_server("victim")
    model = make_model()
    opt = _opt(model, server.target)
    admin = optd.Client(server.target)
    for k in range(6):
        _step(model, opt)
        if k == 2:
            admin.save_checkpoint("at3")
    server.kill()
    server.restart(["--restore=at3"])
    before = flat_params(model)
    with pytest.raises(StepMismatch) as info:
        _step(model, opt)
    assert (info.value.server_step, info.value.trainer_step) == (3, 6), info.value
    assert "resume()" in str(info.value) and server.target in str(info.value)
    assert _version(server.target, opt) == 3  # the refused step was not applied
    np.testing.assert_array_equal(flat_params(model), before)
    with pytest.raises(StepMismatch):  # and stays refused until resume()
        opt.step()
    assert opt.resume() == {0: 3}
    assert opt.last_step() == 3
    np.testing.assert_array_equal(flat_params(model), _uninterrupted(start_server, 3))
    for _ in range(2):
        _step(model, opt)
    assert opt.last_step() == 5 and _version(server.target, opt) == 5
    np.testing.assert_array_equal(flat_params(model), _uninterrupted(start_server, 5))


def test_stopped_server_gives_a_deadline_error_not_a_hang(start_server):
    """SIGSTOP: step() raises DeadlineExceededError naming the call and the server and saying
    the step may have been applied; so does a metadata call. After SIGCONT, step() again
    retries the same step, which the server applies or answers as a duplicate, never twice."""
    server = start_server()
    model = make_model()
    opt = _opt(model, server.target, timeout=1.0, step_timeout=1.0)
    for _ in range(2):
        _step(model, opt)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError) as info:
            _step(model, opt)
        # Not a speed check: only that the call ended instead of hanging.
        assert time.monotonic() - started < 30
        e = info.value
        assert isinstance(e, TimeoutError) and e.outcome_unknown
        assert "Step" in str(e) and server.target in str(e), e
        assert "may have been applied" in str(e), e
        assert opt.last_step() == 2 and opt.step_in_flight()
        with pytest.raises(DeadlineExceededError, match="GetGroup"):
            optd.Client(server.target, timeout=0.5).get_group(opt.server_group(0))
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    opt.step()  # the retry: same number, same gradients
    assert opt.last_step() == 3
    for _ in range(2):
        _step(model, opt)
    assert _version(server.target, opt) == 5
    np.testing.assert_array_equal(flat_params(model), _uninterrupted(start_server, 5))


def test_resume_after_a_trainer_restart(start_server):
    """A trainer restarted from its own (older) checkpoint attaches to the group that lived on:
    resume() sets its count to the server's and pulls the server's weights; nothing is
    uploaded over the group; training goes on as if never interrupted."""
    server = start_server()
    first = make_model()
    opt = _opt(first, server.target, group="resumed")
    for k in range(4):
        _step(first, opt)
        if k == 1:
            saved = {n: p.detach().clone() for n, p in first.state_dict().items()}
    del opt  # the trainer dies

    model = make_model(seed=3)
    model.load_state_dict(saved)  # its own checkpoint, two steps behind the server
    opt = _opt(model, server.target, group="resumed")
    assert opt.resume() == {0: 4}
    assert opt.last_step() == 4 and _version(server.target, opt) == 4
    np.testing.assert_array_equal(flat_params(model), flat_params(first))
    for _ in range(3):
        _step(model, opt)
    assert opt.last_step() == 7 and _version(server.target, opt) == 7
    np.testing.assert_array_equal(flat_params(model), _uninterrupted(start_server, 7))

    # sync() is the same call; without the group anywhere it creates it from the parameters.
    fresh = make_model()
    other = _opt(fresh, server.target, group="new")
    assert other.sync() == {0: 0}
    info = optd.Client(server.target).get_group(other.server_group(0))
    assert info.weights_initialized and info.version == 0 and list(info.worker_steps) == [0]


def test_step_whose_answer_was_lost_is_retried_as_a_duplicate(start_server):
    """The server applies step 3 but its answer is lost (the connection drops): step()
    reconnects, learns from GetGroup that step 3 was applied, retries it, gets `duplicate`,
    pulls the weights, and the step is not applied twice."""
    server = start_server()
    relay = AnswerDropper(server.target)
    try:
        model = make_model()
        opt = _opt(model, relay.target)
        for _ in range(2):
            _step(model, opt)
        relay.drop_next_answer()
        with pytest.warns(RuntimeWarning, match="applied before"):
            _step(model, opt)
        assert relay.dropped == 1
        assert opt.last_step_duplicate and opt.duplicate_steps == 1 and opt.last_step() == 3
        assert _version(server.target, opt) == 3
        np.testing.assert_array_equal(flat_params(model), _uninterrupted(start_server, 3))
        for _ in range(2):
            _step(model, opt)
        assert _version(server.target, opt) == 5 and not opt.last_step_duplicate
        np.testing.assert_array_equal(flat_params(model), _uninterrupted(start_server, 5))
    finally:
        relay.close()


def test_worker_steps_in_group_info(server):
    """GetGroup reports each worker's last applied step (what resume() reads)."""
    c = optd.Client(server.target)
    c.create_group("w", [("t", "float32", (256,))], num_workers=2, mode="async")
    c.upload_weights("w", {"t": np.zeros(256, np.float32)})
    assert list(c.get_group("w").worker_steps) == [0, 0]
    g = {"t": np.ones(256, np.float32)}
    c.step("w", 1, g, worker=1)
    c.step("w", 2, g, worker=1)
    assert list(c.get_group("w").worker_steps) == [0, 2]
    with pytest.raises(optd.FailedPreconditionError, match="expect_last_step"):
        c.step("w", 3, g, worker=1, expect_last_step=1)
    assert list(c.get_group("w").worker_steps) == [0, 2]
    done, _ = c.step("w", 3, g, worker=1, expect_last_step=2)
    assert done.version == 3 and not done.duplicate
    done, _ = c.step("w", 3, g, worker=1, expect_last_step=0)  # a retry: still a duplicate
    assert done.duplicate
