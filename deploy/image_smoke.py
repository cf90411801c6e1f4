"""Smoke test of a running optd server (deploy/check-image.sh runs it against the container):
  1. the gRPC health service says SERVING;
  2. a group is created, its weights uploaded and stepped through the Python client, and the
     weights come back changed;
  3. /metrics answers and counts the step;
  4. a checkpoint saved by the server lands in CHECKPOINT_DIR (the host side of the volume).
Usage: image_smoke.py TARGET METRICS_URL CHECKPOINT_DIR   (prints one line per check)"""

import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client",
                                "python"))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import optd  # noqa: E402


def health_serving(target):
    """grpc.health.v1.Health/Check with an empty request (the whole server). The messages are
    tiny, so they are encoded by hand: the response's field 1 (status) is SERVING = 1."""
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        return check(b"", timeout=10) == b"\x08\x01"


def main():
    target, metrics_url, checkpoint_dir = sys.argv[1:4]
    assert health_serving(target), "health: not SERVING"
    print("smoke: health SERVING")

    client = optd.Client(target, timeout=60)
    client.create_group("smoke", [("w", "float32", (10000,))], lr=1e-2)
    w0 = np.ones(10000, np.float32)
    client.upload_weights("smoke", {"w": w0})
    done, out = client.step("smoke", 1, {"w": np.full(10000, 0.5, np.float32)})
    w1 = out["w"]
    assert done.version == 1 and np.all(w1 < w0) and np.all(w1 > 0.9), (done, w1[:4])
    print(f"smoke: group created and stepped (version {done.version}, w[0] {w1[0]:.6f})")

    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    steps = [line for line in text.splitlines()
             if line.startswith("optd_steps_total{") and 'group="smoke"' in line]
    assert steps and float(steps[0].rsplit(" ", 1)[1]) == 1.0, steps
    print(f"smoke: /metrics answers ({len(text.splitlines())} lines): {steps[0]}")

    saved = client.save_checkpoint("smoke-ckpt")
    path = os.path.join(checkpoint_dir, "smoke-ckpt")
    for _ in range(50):
        if os.path.exists(path):
            break
        time.sleep(0.1)
    assert os.path.getsize(path) > 40000, path  # the weights alone are 40 kB
    print(f"smoke: checkpoint {saved.path} in the volume ({os.path.getsize(path)} bytes)")
    client.close()


if __name__ == "__main__":
    main()
