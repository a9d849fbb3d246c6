"""Shared fixtures: where the read-only shared data (FER2013, reference weights) lives; and the
scripts' process settings (fer/process.py), so that the test processes and the scripts they start
compile numba's kernels for the same CPU features, once.

$FER_SHARED_DIR points at it; the default is the `shared` folder next to the repository.
Tests that need it skip when it is missing, or fail when FER_REQUIRE_SHARED=1 (for CI
machines that must run them).
"""
import ctypes
import os
from pathlib import Path

from fer.process import set_environment

set_environment()      # the scripts' settings, before NumPy and numba load: the tests' kernels compile as theirs

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs a fixed set of hypothesis examples (the ones a developer ran with CI=true), so a
# submission's CI result does not depend on which random shapes that run happened to draw.
if os.environ.get("CI"):
    settings.register_profile("ci", derandomize=True, database=None)
    settings.load_profile("ci")


def _missing(what):
    message = f"{what} not found: set FER_SHARED_DIR to the shared data folder"
    if os.environ.get("FER_REQUIRE_SHARED") == "1":
        pytest.fail(f"{message} (FER_REQUIRE_SHARED=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir():
    """The shared data folder, as a Path."""
    path = Path(os.environ.get("FER_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    if not path.is_dir():
        _missing(f"shared data folder {path}")
    return path


@pytest.fixture(scope="session")
def shared_file(shared_dir):
    """shared_file("fer2013/fer2013.csv.gz") -> Path of that file in the shared folder."""

    def find(relative_path):
        path = shared_dir / relative_path
        if not path.is_file():
            _missing(f"shared file {path}")
        return path

    return find


def _libm():
    """glibc's libm on Linux (its fegetenv and fesetenv), else None."""
    try:
        return ctypes.CDLL("libm.so.6")
    except OSError:
        return None


@pytest.fixture(autouse=True)
def floating_point_environment():
    """Every test leaves the floating-point environment as it found it: a script's main() run in
    this process calls minicnn.perf.enable(), which flushes denormals to zero for the whole thread,
    and hypothesis's float strategies refuse to run in that state."""
    libm, saved = _libm(), ctypes.create_string_buffer(64)      # fenv_t: 32 bytes on x86-64 glibc
    kept = libm is not None and libm.fegetenv(saved) == 0
    yield
    if kept:
        libm.fesetenv(saved)


@pytest.fixture
def floatx():
    """Set the float type for one test (call it with "float32" or "float64"), restored after it."""
    from minicnn import backend

    before = backend.floatx()
    yield backend.set_floatx
    backend.set_floatx(before)
