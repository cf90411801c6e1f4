"""Which data path the package uses, and the native binding's agreement with the C header.

ctest runs this suite twice: python_client with OPTD_NATIVE_LIB set to the built library (the
native path must then really be in use: a library that fails to load fails here instead of
silently testing the pure path) and python_client_pure with OPTD_PURE_PYTHON=1.
OPTD_EXPECT_DATA_PATH=native|pure states the expected path otherwise (e.g. for an installed
package, OPTD_TEST_INSTALLED=1)."""

import ctypes
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import optd
from optd import _native
from optd.client import data_path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
HEADER_DIR = os.path.join(ROOT, "client", "c_api")
PACKAGE = os.path.join(ROOT, "client", "python")


def _pure_forced():
    return os.environ.get("OPTD_PURE_PYTHON", "") not in ("", "0")


def test_the_path_asked_for_is_the_one_in_use(server):
    path, why = data_path()
    c = optd.Client(server.target)
    assert c.data_path == path
    expected = os.environ.get("OPTD_EXPECT_DATA_PATH")
    if _pure_forced():
        assert path == "pure" and "OPTD_PURE_PYTHON" in why
    elif os.environ.get("OPTD_NATIVE_LIB"):
        assert path == "native", why
        assert os.path.samefile(why, os.environ["OPTD_NATIVE_LIB"])
    elif not expected:
        pytest.skip(f"none of OPTD_NATIVE_LIB, OPTD_PURE_PYTHON, OPTD_EXPECT_DATA_PATH is set "
                    f"(in use: {path})")
    if expected:
        assert path == expected, why


def _python(code, **env):
    """Runs `code` in a fresh interpreter (the library is loaded once per process)."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("OPTD_NATIVE_LIB", "OPTD_PURE_PYTHON")}
    full_env.update(env)
    if os.environ.get("OPTD_TEST_INSTALLED", "") in ("", "0"):
        full_env["PYTHONPATH"] = PACKAGE
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=120)


_TWO_CLIENTS = """
    import warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as w:
        import optd
        from optd.client import data_path
        a = optd.Client("127.0.0.1:1")
        b = optd.Client("127.0.0.1:2")
    print(a.data_path, b.data_path, data_path()[0])
    print(len([x for x in w if "pure-Python" in str(x.message)]))
    for x in w:
        print(x.message)
"""


def test_missing_library_falls_back_and_warns_once(tmp_path):
    missing = str(tmp_path / "nothere" / "liboptd_client_c.so")
    r = _python(_TWO_CLIENTS, OPTD_NATIVE_LIB=missing)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "pure pure pure"
    assert lines[1] == "1"  # two clients, one warning
    assert missing in lines[2] and "not found" in lines[2]


def test_broken_library_falls_back_and_says_why(tmp_path):
    broken = tmp_path / "liboptd_client_c.so"
    broken.write_text("not a shared library")
    r = _python(_TWO_CLIENTS, OPTD_NATIVE_LIB=str(broken))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "pure pure pure" and lines[1] == "1"
    assert "failed to load" in lines[2]


def test_pure_python_variable_forces_the_pure_path_without_warning():
    r = _python(_TWO_CLIENTS, OPTD_PURE_PYTHON="1",
                OPTD_NATIVE_LIB=os.environ.get("OPTD_NATIVE_LIB", "/nonexistent"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["pure pure pure", "0"]


_LAYOUT = """
#include <stddef.h>
#include <stdio.h>
#include "optd_client_c.h"
#define F(S, f) printf(#S " " #f " %zu\\n", offsetof(S, f))
#define Z(S) printf(#S " sizeof %zu\\n", sizeof(S))
int main(void) {
  Z(optd_client_options); F(optd_client_options, struct_size);
  F(optd_client_options, chunk_bytes); F(optd_client_options, streams);
  F(optd_client_options, timeout_ms); F(optd_client_options, max_message_bytes);
  F(optd_client_options, tls); F(optd_client_options, tls_root_ca);
  F(optd_client_options, tls_client_cert); F(optd_client_options, tls_client_key);
  F(optd_client_options, tls_server_name); F(optd_client_options, token);
  Z(optd_buffer); F(optd_buffer, tensor); F(optd_buffer, dtype); F(optd_buffer, data);
  F(optd_buffer, numel);
  Z(optd_step_options); F(optd_step_options, struct_size); F(optd_step_options, worker);
  F(optd_step_options, has_lr); F(optd_step_options, lr); F(optd_step_options, weights);
  F(optd_step_options, has_base_version); F(optd_step_options, base_version);
  F(optd_step_options, streams); F(optd_step_options, part_count);
  F(optd_step_options, part_index); F(optd_step_options, has_expect_last_step);
  F(optd_step_options, expect_last_step);
  Z(optd_step_result); F(optd_step_result, step); F(optd_step_result, version);
  F(optd_step_result, duplicate); F(optd_step_result, nonfinite_gradient_elements);
  F(optd_step_result, weight_elements_received);
  printf("ABI %d\\n", OPTD_ABI_VERSION);
  printf("DTYPE %d %d %d\\n", OPTD_DTYPE_FLOAT32, OPTD_DTYPE_FLOAT16, OPTD_DTYPE_BFLOAT16);
  printf("WEIGHTS %d %d %d\\n", OPTD_WEIGHTS_UPDATED, OPTD_WEIGHTS_ALL, OPTD_WEIGHTS_NONE);
  return 0;
}
"""


def test_ctypes_structures_match_the_header(tmp_path):
    """Every field offset and struct size of optd_client_c.h, as a C compiler lays them out,
    equals the ctypes declaration's (a field added to the header fails here)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "layout.c"
    src.write_text(_LAYOUT)
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", HEADER_DIR, str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    ctypes_of = {"optd_client_options": _native.ClientOptions, "optd_buffer": _native.Buffer,
                 "optd_step_options": _native.StepOptions,
                 "optd_step_result": _native.StepResult}
    seen = {name: set() for name in ctypes_of}
    for line in out.splitlines():
        words = line.split()
        if words[0] == "ABI":
            assert int(words[1]) == _native.ABI_VERSION
        elif words[0] == "DTYPE":
            assert [int(w) for w in words[1:]] == [_native.DTYPE_FLOAT32, _native.DTYPE_FLOAT16,
                                                   _native.DTYPE_BFLOAT16]
        elif words[0] == "WEIGHTS":
            assert [int(w) for w in words[1:]] == [_native.WEIGHTS[k]
                                                   for k in ("updated", "all", "none")]
        elif words[1] == "sizeof":
            assert ctypes.sizeof(ctypes_of[words[0]]) == int(words[2]), line
        else:
            struct, field, offset = words[0], words[1], int(words[2])
            assert getattr(ctypes_of[struct], field).offset == offset, line
            seen[struct].add(field)
    for name, cls in ctypes_of.items():
        assert seen[name] == {f for f, _ in cls._fields_}, name


def test_native_buffers_refuse_what_they_cannot_point_at():
    import numpy as np
    with pytest.raises(optd.InvalidArgumentError, match="C-contiguous"):
        _native._pointer_of(np.zeros((4, 4), np.float32)[:, 1], "grads[a]", False)
    with pytest.raises(optd.InvalidArgumentError, match="float64"):
        _native._pointer_of(np.zeros(4), "grads[a]", False)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(optd.InvalidArgumentError, match="read-only"):
        _native._pointer_of(ro, "out[a]", True)
    a = np.arange(8, dtype=np.uint16)
    assert _native._pointer_of(a, "x", True) == (_native.DTYPE_BFLOAT16, a.ctypes.data, 8)


def test_native_buffers_take_cpu_torch_tensors_without_copy():
    torch = pytest.importorskip("torch")
    t = torch.zeros(6, dtype=torch.bfloat16)
    assert _native._pointer_of(t, "x", True) == (_native.DTYPE_BFLOAT16, t.data_ptr(), 6)
    with pytest.raises(optd.InvalidArgumentError, match="contiguous"):
        _native._pointer_of(torch.zeros(4, 4).t(), "x", False)
