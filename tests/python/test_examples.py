"""The examples run end to end against a real server (short runs)."""

import os
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client",
                        "python", "examples")


def _run(script, *args):
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args],
                          capture_output=True, text=True, timeout=300)


def test_param_server_two_sync_workers_and_a_subscriber(server):
    r = _run("param_server.py", "--target", server.target, "--steps", "6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "workers identical: True" in r.stdout
    assert "last version equals the workers' weights: True" in r.stdout


def test_demo_train(server):
    r = _run("demo_train.py", "--target", server.target, "--steps", "12", "--device", "cpu",
             "--metrics_url", "http://127.0.0.1:1/metrics")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo: OK" in r.stdout and "final loss" in r.stdout
