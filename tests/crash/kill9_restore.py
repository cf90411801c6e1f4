#!/usr/bin/env python3
"""Crash safety: SIGKILL optd at random moments during steps and checkpoint writes, restart it
with --restore=latest, and check every restart against an uninterrupted run.

Two servers (optd --backend=cpu --cpu_threads=1, 127.0.0.1:0):
  reference: never killed; the same trainer's steps 1, 2, ... are applied to it on demand and the
             full weights after each step are kept (the uninterrupted run);
  victim:    --checkpoint_every_steps=1 --checkpoint_keep=2 --restore=latest (the server checks
             the trigger once a second, so it writes about one checkpoint a second while
             training); it is killed with SIGKILL --rounds times and restarted on the same
             folder: in even rounds after a random 0.05 to 1.5 s of training, in odd rounds
             0 to 2 ms after a checkpoint's temporary file appears, i.e. during the write.
The trainer is deterministic: the gradient of step k depends only on k. After each restart:
  - no temporary checkpoint file (".tmp-") is left in the folder;
  - the restored group's version v never goes back past what an earlier restart restored;
  - its weights (PullWeights) equal the reference's after step v, bit for bit: the restart
    restored a complete checkpoint exactly, and the optimizer states it restored produced the
    same weights as the uninterrupted run at every step before it;
then the trainer resumes at step v + 1 (the steps after the checkpoint are lost and redone).
At the end the victim is stopped with SIGTERM and its final weights and version are compared
with the reference once more (which also checks the states restored by the last restart).

Exit status 0 when every check held. Usage (from the repository root):
  PYTHONPATH=client/python python3 tests/crash/kill9_restore.py --optd build/server/optd \
      --rounds 50
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("OPTD_PURE_PYTHON", "1")

import numpy as np

from optd.client import Client
from optd.errors import OptdError

TENSORS = [("w", "float32", (4100,)), ("b", "bfloat16", (7, 129)), ("h", "float16", (1000,)),
           ("big", "float32", (1 << 20,))]
# Trained tensors; "big" (4 MiB of weights, never stepped) only makes each checkpoint write last
# long enough (milliseconds) for a kill to land inside it.
TRAINED = ("w", "b", "h")
GROUP = "crash"


def arrays(seed, scale):
    rng = np.random.default_rng(seed)
    out = {}
    for name, dtype, shape in TENSORS:
        n = int(np.prod(shape))
        f = (rng.standard_normal(n) * scale).astype(np.float32)
        if dtype == "bfloat16":
            out[name] = (f.view(np.uint32) >> 16).astype(np.uint16)
        elif dtype == "float16":
            out[name] = f.astype(np.float16)
        else:
            out[name] = f
    return out


def gradient(step):
    return {n: a for n, a in arrays(1000 + step, 1e-2).items() if n in TRAINED}


class Server:
    def __init__(self, optd, workdir, name, extra):
        self.workdir = workdir
        self.port_file = os.path.join(workdir, f"{name}.port")
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        self.log = open(os.path.join(workdir, f"{name}.log"), "a")
        self.proc = subprocess.Popen(
            [optd, "--backend=cpu", "--cpu_threads=1", "--listen=127.0.0.1:0",
             "--metrics_listen=", f"--port_file={self.port_file}"] + extra,
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name}: optd exited with {self.proc.returncode}")
            if os.path.exists(self.port_file):
                text = open(self.port_file).read()
                if text.endswith("\n"):
                    self.target = f"127.0.0.1:{int(text)}"
                    break
            if time.time() > deadline:
                raise RuntimeError(f"{name}: no port file within 60 s")
            time.sleep(0.02)

    def kill(self, sig):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=120)


class Reference:
    """The uninterrupted run: weights after each step, computed on demand."""

    def __init__(self, client):
        self.client = client
        self.weights = {0: client.pull_weights(GROUP)[1]}

    def after(self, step):
        while max(self.weights) < step:
            k = max(self.weights) + 1
            done, out = self.client.step(GROUP, k, gradient(k), weights="all")
            assert done.step == k and done.version == k, done
            self.weights[k] = {n: a.copy() for n, a in out.items()}
        return self.weights[step]


def same(a, b):
    return all(np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)) for n, _, _ in TENSORS)


def create(client):
    client.create_group(GROUP, TENSORS, lr=1e-2)
    client.upload_weights(GROUP, arrays(7, 1.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optd", default="build/server/optd")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the logs and checkpoints")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="optd-crash-")
    ckpt = os.path.join(workdir, "checkpoints")
    os.mkdir(ckpt)
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print("FAILED:", what, flush=True)

    ref_server = Server(args.optd, workdir, "reference", [])
    ref_client = Client(ref_server.target, timeout=60)
    create(ref_client)
    reference = Reference(ref_client)

    restored_versions = []
    steps_sent = 0
    kills_in_write = 0
    last_restored = 0
    t0 = time.time()
    try:
        for rnd in range(args.rounds + 1):
            victim = Server(args.optd, workdir, "victim",
                            [f"--checkpoint_dir={ckpt}", "--restore=latest",
                             "--checkpoint_every_steps=1", "--checkpoint_keep=2"])
            client = Client(victim.target, timeout=60)
            leftovers = [f for f in os.listdir(ckpt) if ".tmp-" in f]
            check(not leftovers, f"round {rnd}: temporary files left at start: {leftovers}")
            if rnd == 0:
                create(client)
                version = 0
            else:
                info = client.get_group(GROUP)
                version = info.version
                check(version >= last_restored,
                      f"round {rnd}: restored version {version} < earlier {last_restored}")
                _, pulled = client.pull_weights(GROUP)
                check(same(pulled, reference.after(version)),
                      f"round {rnd}: weights at restored version {version} differ from the "
                      f"uninterrupted run")
                restored_versions.append(version)
                last_restored = version
            if rnd == args.rounds:
                break

            # Train until killed.
            stop = threading.Event()

            round_steps = [0]
            round_error = [""]

            def train(start):
                nonlocal steps_sent
                k = start
                while not stop.is_set():
                    try:
                        client.step(GROUP, k, gradient(k), weights="none")
                    except OptdError as e:
                        round_error[0] = f"{e.code.name}: {str(e)[:160]}"
                        return  # killed, normally (UNAVAILABLE)
                    steps_sent += 1
                    round_steps[0] += 1
                    k += 1

            t = threading.Thread(target=train, args=(version + 1,))
            t.start()
            if rnd == 0:  # a first complete checkpoint before the first kill
                deadline = time.time() + 60
                while not [f for f in os.listdir(ckpt) if ".tmp-" not in f]:
                    check(time.time() < deadline, "round 0: no checkpoint within 60 s")
                    if time.time() > deadline:
                        break
                    time.sleep(0.01)
            if rnd % 2 == 1:
                # Odd rounds: wait for a checkpoint write to begin (its temporary file appears),
                # then kill 0 to 2 ms into it.
                time.sleep(rng.uniform(0.0, 0.5))
                deadline = time.time() + 5
                while time.time() < deadline and not any(".tmp-" in f for f in os.listdir(ckpt)):
                    pass
                time.sleep(rng.uniform(0.0, 0.002))
            else:
                time.sleep(rng.uniform(0.05, 1.5))
            during_write = any(".tmp-" in f for f in os.listdir(ckpt))
            rc = victim.kill(signal.SIGKILL)
            if during_write:
                kills_in_write += 1  # the temporary file existed just before the kill
            check(rc == -signal.SIGKILL, f"round {rnd}: exit {rc} after SIGKILL")
            stop.set()
            t.join()
            client.close()
            print(f"round {rnd:3d}: started at version {version}, {round_steps[0]} steps "
                  f"acknowledged, killed; {len(os.listdir(ckpt))} files in the checkpoint "
                  f"folder; trainer's last error: {round_error[0] or 'none'}", flush=True)

        # Finish: a few more steps, SIGTERM, restart, compare once more.
        final = last_restored
        for k in range(final + 1, final + 6):
            client.step(GROUP, k, gradient(k), weights="none")
        final += 5
        _, pulled = client.pull_weights(GROUP)
        check(same(pulled, reference.after(final)),
              f"final: weights after step {final} differ from the uninterrupted run")
        client.close()
        check(victim.kill(signal.SIGTERM) == 0, "final: SIGTERM exit status not 0")
    finally:
        for s in ("victim", "ref_server"):
            srv = locals().get(s) if s != "ref_server" else ref_server
            if srv is not None and srv.proc.poll() is None:
                srv.proc.kill()
                srv.proc.wait()

    print()
    print(f"{args.rounds} SIGKILLs in {time.time() - t0:.0f} s; {steps_sent} steps acknowledged "
          f"by the victim; a checkpoint's temporary file existed just before {kills_in_write} of the kills")
    print(f"restored versions: {restored_versions}")
    print(f"reference steps computed: {max(reference.weights)}")
    print(f"failures: {len(failures)}")
    for f in failures[:20]:
        print("  " + f)
    if not failures and not args.keep:
        shutil.rmtree(workdir)
    else:
        print(f"logs and checkpoints kept in {workdir}")
    print("PASS" if not failures else "FAIL")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
