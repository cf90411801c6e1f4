"""The committed generated stubs load and round-trip messages on the installed protobuf/grpcio,
and on a second stack when $OPTD_ALT_PYTHONPATH points at one (e.g. protobuf 7 + grpcio 1.84
installed with pip --target)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SNIPPET = """
from optd.v1 import optd_pb2 as pb, optd_pb2_grpc as pbg
import google.protobuf, grpc
b = pb.StepBegin(group="g", step=3, lr=0.5)
r = pb.StepRequest.FromString(pb.StepRequest(begin=b).SerializeToString())
assert r.begin.HasField("lr") and not r.begin.HasField("base_version")
assert pb.STATE_ELEMENT_TYPE_FLOAT32 == 2 and pb.BFLOAT16 == 3
assert hasattr(pbg, "OptimizerStub")
print(google.protobuf.__version__, grpc.__version__)
"""


def _run(pythonpath):
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True,
                          text=True, timeout=60)


def test_stubs_load_on_this_stack():
    r = _run(os.path.join(ROOT, "client", "python"))
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not os.environ.get("OPTD_ALT_PYTHONPATH"), reason="OPTD_ALT_PYTHONPATH unset")
def test_stubs_load_on_alternative_stack():
    alt = os.environ["OPTD_ALT_PYTHONPATH"]
    r = _run(os.pathsep.join([alt, os.path.join(ROOT, "client", "python")]))
    assert r.returncode == 0, r.stderr
    print(r.stdout)
