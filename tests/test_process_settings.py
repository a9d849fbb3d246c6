"""The process settings the scripts make before NumPy and numba load (fer/process.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fer import process

ROOT = Path(__file__).resolve().parents[1]

# Runs a script with --help, noting both settings at the moment NumPy is first imported (numba imports it).
WATCH_NUMPY = """
import importlib.abc, json, os, runpy, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append([os.environ.get("OPENBLAS_THREAD_TIMEOUT"), os.environ.get("NUMBA_CPU_FEATURES")])
        return None
sys.meta_path.insert(0, Watch())
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print(json.dumps(seen))
"""

ENTRY_POINTS = {"scripts/train.py": process.BATCHES, "scripts/evaluate.py": process.BATCHES,
                "scripts/predict.py": process.ONE_FACE, "scripts/webcam.py": process.ONE_FACE,
                "benchmarks/models.py": process.BATCHES, "benchmarks/settings_ab.py": process.BATCHES}


def test_set_environment_sets_the_timeout_and_keeps_a_users_value(monkeypatch):
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)          # restored afterwards: set_environment sets it
    for one_face, value in ((False, process.BATCHES), (True, process.ONE_FACE)):
        monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
        process.set_environment(one_face)
        assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == value
    assert int(process.BATCHES) < int(process.ONE_FACE) < 28          # 28: OpenBLAS's own
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    process.set_environment()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "28"


def test_process_module_imports_nothing_that_loads_numpy():
    code = "import sys, fer.process; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def host_features():
    """This CPU's features from llvmlite directly: {name: bool}."""
    from llvmlite import binding
    return binding.get_host_cpu_features()


def clean_environment():
    return {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_THREAD_TIMEOUT", "NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME")}


def test_set_environment_keeps_a_users_numba_cpu(monkeypatch):
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2")
    process.set_environment()
    assert os.environ["NUMBA_CPU_FEATURES"] == "+avx2"
    monkeypatch.delenv("NUMBA_CPU_FEATURES")
    monkeypatch.setenv("NUMBA_CPU_NAME", "generic")
    process.set_environment()
    assert "NUMBA_CPU_FEATURES" not in os.environ


# What numba's code generator compiles for, in a process that set the environment first.
NUMBA_TARGET = """
from fer.process import set_environment
set_environment()
import minicnn
from numba.core.registry import cpu_target
print(cpu_target.target_context.codegen()._tm_features)
"""


def test_numba_compiles_for_256_bit_vectors_where_the_cpu_has_avx512():
    out = subprocess.run([sys.executable, "-c", NUMBA_TARGET], env=clean_environment(), cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    features = out.strip().splitlines()[-1].split(",")
    assert ("+prefer-256-bit" in features) == bool(host_features().get("avx512f")), features
    assert ("+avx512f" in features) == bool(host_features().get("avx512f")), features


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_entry_point_sets_its_environment_before_numpy_loads(script):
    out = subprocess.run([sys.executable, "-c", WATCH_NUMPY, str(ROOT / script)], env=clean_environment(), cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    timeout, features = json.loads(out.strip().splitlines()[-1])[0]
    assert timeout == ENTRY_POINTS[script], out
    assert (features or "").endswith("+prefer-256-bit") == bool(host_features().get("avx512f")), out
