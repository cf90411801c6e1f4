"""Fixtures: the optd package from the source tree, and real optd server processes.

The server binary comes from $OPTD_SERVER_BIN (ctest passes the built one); $OPTD_BACKEND picks
the backend (default cpu) and $OPTD_SERVER_EXTRA_ARGS adds flags (e.g. a device budget, so that
several CUDA servers share one GPU). Each server listens
on 127.0.0.1:0 and reports its port through --port_file; tests talk to it over gRPC."""

import os
import signal
import subprocess
import sys
import time

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
# The package from the source tree, unless the installed one is under test
# (OPTD_TEST_INSTALLED=1, e.g. after `pip install ./client/python`).
if os.environ.get("OPTD_TEST_INSTALLED", "") in ("", "0"):
    sys.path.insert(0, os.path.join(_HERE, "..", "..", "client", "python"))


class ServerProcess:
    """One optd process. `args`: extra flags; restart() starts it again on the same port and
    working directory (its checkpoints), e.g. after kill()."""

    def __init__(self, binary, workdir, backend, args=()):
        # The server does not create its checkpoint directory (as of 6190664): we do.
        os.makedirs(os.path.join(workdir, "ckpt"), exist_ok=True)
        self.binary, self.workdir, self.backend = binary, workdir, backend
        self.args = list(args)
        self.checkpoint_dir = os.path.join(workdir, "ckpt")
        self.port_file = os.path.join(workdir, "port")
        self.metrics_port_file = os.path.join(workdir, "metrics_port")
        self.log_path = os.path.join(workdir, "server.log")
        self.log = None
        self._start(0)

    def _start(self, port, args=None):
        for f in (self.port_file, self.metrics_port_file):
            if os.path.exists(f):
                os.remove(f)
        if self.log is not None:
            self.log.close()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--listen=127.0.0.1:{port}", "--metrics_listen=127.0.0.1:0",
             f"--backend={self.backend}", f"--checkpoint_dir={self.checkpoint_dir}",
             f"--port_file={self.port_file}", f"--metrics_port_file={self.metrics_port_file}"]
            + (self.args if args is None else list(args))
            + os.environ.get("OPTD_SERVER_EXTRA_ARGS", "").split(),
            stdout=self.log, stderr=subprocess.STDOUT)
        self.port = self._wait_port(self.port_file)
        self.target = f"127.0.0.1:{self.port}"

    def restart(self, args=None):
        """Starts the (exited) server again on its port; `args` replaces its extra flags."""
        assert self.proc.poll() is not None, "restart() needs the server to have exited"
        self._start(self.port, args)
        return self

    def _wait_port(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"optd exited with {self.proc.returncode}: {self.output()}")
            try:
                with open(path) as f:
                    text = f.read()
                if text.endswith("\n"):
                    return int(text)
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"optd did not write {path} within {timeout} s: {self.output()}")

    def metrics_port(self):
        return self._wait_port(self.metrics_port_file)

    def output(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have stopped it
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server_binary():
    binary = os.environ.get("OPTD_SERVER_BIN")
    if not binary:
        pytest.skip("OPTD_SERVER_BIN is not set (ctest sets it to the built optd)")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"OPTD_SERVER_BIN={binary} is not an executable")
    return binary


@pytest.fixture(scope="session")
def backend():
    return os.environ.get("OPTD_BACKEND", "cpu")


@pytest.fixture
def start_server(server_binary, backend, tmp_path):
    started = []

    def start(name="server", args=()):
        s = ServerProcess(server_binary, str(tmp_path / f"{name}{len(started)}"), backend, args)
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


@pytest.fixture
def server(start_server):
    return start_server()
