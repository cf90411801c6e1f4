"""Build of the optd package: the pure-Python client, plus liboptd_client_c (the C++ client's
data path behind a C ABI, loaded by optd._native) where it can be built.

Note [Building the native library]
`pip install ./client/python` runs the project's own CMake on the repository this package sits
in (or $OPTD_SOURCE_DIR): a CPU-only configure of just the library target,
  cmake -S <repo> -B <tmp> -DOPTD_CUDA=OFF -DOPTD_BUILD_TESTS=OFF -DOPTD_BUILD_BENCH=OFF
  cmake --build <tmp> --target optd_client_c
and puts liboptd_client_c.so into optd/_lib/. The library links the system's gRPC, protobuf and
Abseil shared libraries (Debian 12's, as the rest of the project) and serves every Python
version (ctypes), so the wheel is tagged py3-none-<platform>. Where the repository, cmake or a
C++ dependency is missing, or OPTD_PURE_PYTHON=1, the package is installed without it and
the build log says why (pip shows it with -v); at run time optd warns once that it uses the
pure-Python client. $OPTD_NATIVE_BUILD_DIR keeps the CMake build directory between installs.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY = "liboptd_client_c.so"


def _log(message):
    print(f"optd: {message}", file=sys.stderr, flush=True)


def _repository():
    root = os.environ.get("OPTD_SOURCE_DIR") or os.path.join(HERE, "..", "..")
    root = os.path.normpath(root)
    needed = [os.path.join(root, "CMakeLists.txt"),
              os.path.join(root, "client", "c_api", "optd_client_c.h")]
    return root if all(os.path.exists(p) for p in needed) else None


def _run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode, r.stdout


def build_native_library(dest):
    """Builds liboptd_client_c.so into `dest`; returns (path or None, why not)."""
    if os.environ.get("OPTD_PURE_PYTHON", "") not in ("", "0"):
        return None, "OPTD_PURE_PYTHON is set"
    root = _repository()
    if root is None:
        return None, ("not inside the optd repository (no CMakeLists.txt and "
                      "client/c_api/optd_client_c.h two folders up; set OPTD_SOURCE_DIR)")
    cmake = shutil.which("cmake")
    if cmake is None:
        return None, "cmake not found"
    build = os.environ.get("OPTD_NATIVE_BUILD_DIR") or tempfile.mkdtemp(prefix="optd-native-")
    configure = [cmake, "-S", root, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                 "-DOPTD_CUDA=OFF", "-DOPTD_BUILD_TESTS=OFF", "-DOPTD_BUILD_BENCH=OFF"]
    if shutil.which("ccache"):
        configure += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
                      "-DCMAKE_C_COMPILER_LAUNCHER=ccache"]
    _log(f"building the native library: {' '.join(configure)}")
    rc, out = _run(configure)
    if rc != 0:
        return None, ("cmake could not configure the project (missing C++ dependencies? "
                      "deploy/install-deps.sh installs them):\n" + out[-3000:])
    jobs = os.environ.get("OPTD_BUILD_JOBS") or str(os.cpu_count() or 1)
    rc, out = _run([cmake, "--build", build, "--target", "optd_client_c", "-j", jobs])
    if rc != 0:
        return None, "building optd_client_c failed:\n" + out[-3000:]
    built = os.path.join(build, "client", LIBRARY)
    if not os.path.exists(built):
        return None, f"the build did not produce {built}"
    os.makedirs(dest, exist_ok=True)
    target = os.path.join(dest, LIBRARY)
    shutil.copyfile(built, target)
    if not os.environ.get("OPTD_NATIVE_BUILD_DIR"):
        shutil.rmtree(build, ignore_errors=True)
    return target, ""


class BuildPyWithNativeLibrary(build_py):
    """build_py, then the native library into the build tree's optd/_lib/."""

    native_library = None

    def run(self):
        super().run()
        if self.dry_run:
            return
        dest = os.path.join(self.build_lib, "optd", "_lib")
        path, why = build_native_library(dest)
        BuildPyWithNativeLibrary.native_library = path
        if path is None:
            # An earlier in-tree build may have left one: it must not ship unchecked.
            shutil.rmtree(dest, ignore_errors=True)
            _log(f"installing the pure-Python client only: {why}")
        else:
            _log(f"native data path built: {path}")


cmdclass = {"build_py": BuildPyWithNativeLibrary}

try:
    from wheel.bdist_wheel import bdist_wheel

    class BdistWheelPlatform(bdist_wheel):
        """py3-none-<platform> when the wheel carries the library (one build serves every
        Python 3), py3-none-any otherwise."""

        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            if BuildPyWithNativeLibrary.native_library is None:
                return "py3", "none", "any"
            plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = BdistWheelPlatform
except ImportError:  # no wheel package: setuptools installs without a wheel
    pass

setup(cmdclass=cmdclass)
