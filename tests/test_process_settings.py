"""The process setting the scripts make before NumPy loads (fer/process.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fer import process

ROOT = Path(__file__).resolve().parents[1]

# Runs a script with --help, noting OPENBLAS_THREAD_TIMEOUT at the moment NumPy is first imported.
WATCH_NUMPY = """
import importlib.abc, json, os, runpy, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
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


def test_set_blas_environment_sets_the_timeout_and_keeps_a_users_value(monkeypatch):
    for one_face, value in ((False, process.BATCHES), (True, process.ONE_FACE)):
        monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
        process.set_blas_environment(one_face)
        assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == value
    assert int(process.BATCHES) < int(process.ONE_FACE) < 28          # 28: OpenBLAS's own
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    process.set_blas_environment()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "28"


def test_process_module_imports_nothing_that_loads_numpy():
    code = "import sys, fer.process; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_entry_point_sets_its_timeout_before_numpy_loads(script):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", WATCH_NUMPY, str(ROOT / script)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [ENTRY_POINTS[script]], out
