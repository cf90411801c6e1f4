"""TLS, mutual TLS and bearer tokens from Python: optd.Client and optd.torch against an optd
server started with --tls_cert/--tls_key/--tls_client_ca/--token_file on 127.0.0.1.

ctest runs this file on both data paths (python_client: the native library; python_client_pure:
grpcio alone), so every call kind below is checked on both. Certificates are made by openssl
at run time."""

import os
import shutil
import subprocess

import grpc
import numpy as np
import pytest
import torch

import optd
import optd.torch
from optd.errors import InvalidArgumentError, OptdError
from conftest import ServerProcess

ADMIN = "py-admin-0123456789abcdef"
TRAIN = "py-train-0123456789abcdef"
N = 3000


def _openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d, name):
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN=optd-test-{name}")


def _make_leaf(d, name, ca, extensions):
    (d / f"{name}.ext").write_text(extensions)
    _openssl(d, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (deploy/install-deps.sh installs it)")
    d = tmp_path_factory.mktemp("certs")
    _make_ca(d, "ca")
    _make_leaf(d, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                  "extendedKeyUsage=serverAuth\n")
    _make_leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return {k: str(d / f) for k, f in [("ca", "ca.pem"), ("server_cert", "server.pem"),
                                       ("server_key", "server.key"),
                                       ("client_cert", "client.pem"),
                                       ("client_key", "client.key")]}


@pytest.fixture
def secure_server(server_binary, backend, tmp_path, certs, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} admin run.\n{TRAIN} train run.\n")
    # conftest's server, with the security flags (it appends $OPTD_SERVER_EXTRA_ARGS).
    extra = os.environ.get("OPTD_SERVER_EXTRA_ARGS", "")
    monkeypatch.setenv("OPTD_SERVER_EXTRA_ARGS", " ".join([
        extra, f"--tls_cert={certs['server_cert']}", f"--tls_key={certs['server_key']}",
        f"--tls_client_ca={certs['ca']}", f"--token_file={tokens}"]))
    s = ServerProcess(server_binary, str(tmp_path / "server"), backend)
    yield s
    s.stop()


def _secure(certs, token, **kw):
    """Mutual TLS: the CA and the key as paths, the certificate as PEM bytes (both forms)."""
    with open(certs["client_cert"], "rb") as f:
        cert = f.read()
    return dict(tls_root_ca=certs["ca"], tls_client_cert=cert, tls_client_key=certs["client_key"],
                token=token, **kw)


def _expected_path():
    if os.environ.get("OPTD_PURE_PYTHON", "") not in ("", "0"):
        return "pure"
    if os.environ.get("OPTD_NATIVE_LIB"):
        return "native"
    return None


def test_every_call_carries_tls_and_token(secure_server, certs):
    c = optd.Client(secure_server.target, chunk_bytes=4096, streams=2, **_secure(certs, ADMIN))
    expected = _expected_path()
    if expected:
        assert c.data_path == expected
    c.create_group("run.g", [("w", "float32", (N,))])
    rng = np.random.default_rng(0)
    w = rng.standard_normal(N).astype(np.float32)
    assert c.upload_weights("run.g", {"w": w}).elements_written == N
    c.update_hyperparameters("run.g", lr=0.01)
    done, out = c.step("run.g", 1, {"w": rng.standard_normal(N).astype(np.float32)})
    assert done.version == 1
    version, pulled = c.pull_weights("run.g")
    assert version == 1
    np.testing.assert_array_equal(pulled["w"], out["w"])
    sub = c.subscribe("run.g", send_current=True)
    v, seen = next(iter(sub))
    assert v == 1
    np.testing.assert_array_equal(seen["w"], out["w"])
    sub.cancel()
    state = c.export_state("run.g")
    c.import_state("run.g", state)
    assert list(c.save_checkpoint("run.ck").groups) == ["run.g"]
    assert [g.group for g in c.list_groups()] == ["run.g"]
    c.delete_group("run.g")
    c.close()


def test_refusals_keep_their_codes(secure_server, certs):
    admin = optd.Client(secure_server.target, **_secure(certs, ADMIN))
    admin.create_group("run.g", [("w", "float32", (N,))])
    admin.upload_weights("run.g", {"w": np.zeros(N, np.float32)})
    g = {"w": np.ones(N, np.float32)}

    train = optd.Client(secure_server.target, **_secure(certs, TRAIN))
    assert train.step("run.g", 1, g)[0].version == 1
    with pytest.raises(OptdError) as e:
        train.delete_group("run.g")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED and "role train" in str(e.value)
    with pytest.raises(OptdError) as e:
        train.upload_weights("run.g", {"w": np.zeros(N, np.float32)})
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(OptdError) as e:
        train.step("other.g", 1, g)
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED and "'other.g'" in str(e.value)

    anonymous = optd.Client(secure_server.target, **_secure(certs, None))
    for call in (lambda: anonymous.get_group("run.g"),
                 lambda: anonymous.step("run.g", 2, g),
                 lambda: anonymous.pull_weights("run.g", out={"w": np.zeros(N, np.float32)})):
        with pytest.raises(OptdError) as e:
            call()
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED

    plaintext = optd.Client(secure_server.target, token=ADMIN, timeout=20)
    for call in (lambda: plaintext.get_group("run.g"), lambda: plaintext.step("run.g", 2, g)):
        with pytest.raises(OptdError) as e:
            call()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert admin.get_group("run.g").version == 1  # nothing refused was applied


def test_server_name_override(secure_server, certs):
    ok = optd.Client(secure_server.target, **_secure(certs, ADMIN, tls_server_name="localhost"))
    assert ok.list_groups() == []
    wrong = optd.Client(secure_server.target,
                        **_secure(certs, ADMIN, tls_server_name="optd.example.com"), timeout=20)
    with pytest.raises(OptdError) as e:
        wrong.list_groups()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_torch_optimizer_with_tls_and_token(secure_server, certs):
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 8)
    x, y = torch.randn(32, 64), torch.randn(32, 8)
    opt = optd.torch.PagedAdamW8bit(model.parameters(), lr=1e-2, target=secure_server.target,
                                    group="run.torch", **_secure(certs, ADMIN))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert opt.last_step() == 5
    assert losses[-1] < losses[0]
    opt.close()

    # A train token cannot create the optimizer's group.
    model2 = torch.nn.Linear(4, 2)
    opt2 = optd.torch.PagedAdamW8bit(model2.parameters(), target=secure_server.target,
                                     group="run.torch2", **_secure(certs, TRAIN))
    model2(torch.randn(3, 4)).sum().backward()
    with pytest.raises(OptdError) as e:
        opt2.step()
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_bad_security_options_fail_early(certs, tmp_path):
    with pytest.raises(InvalidArgumentError, match="tls_client_key"):
        optd.Client("127.0.0.1:1", tls_root_ca=certs["ca"], tls_client_cert=certs["client_cert"])
    with pytest.raises(InvalidArgumentError, match="tls_root_ca"):
        optd.Client("127.0.0.1:1", tls_root_ca=str(tmp_path / "missing.pem"))
    with pytest.raises(InvalidArgumentError, match="token"):
        optd.Client("127.0.0.1:1", token="has a space")
    with pytest.raises(InvalidArgumentError, match="tls_server_name"):
        optd.Client("127.0.0.1:1", tls_server_name="localhost")
    with pytest.raises(InvalidArgumentError, match="tls_root_ca"):
        optd.torch.PagedAdamW8bit(torch.nn.Linear(2, 2).parameters(), target="127.0.0.1:1",
                                  tls_root_ca=str(tmp_path / "missing.pem"))
