"""NUMBA_DISABLE_JIT=1 runs every kernel as plain Python (README: a student steps through them):
a compiled mini-Xception trains and predicts there as it does compiled, the kernels written on
ops.lanes' registers (which have no plain-Python form) giving way to the loop kernels beside them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from minicnn import backend, optimizers
from fer import models as fer_models

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
from tests.test_disable_jit import train_and_predict
from minicnn.ops import jit
loss, probabilities = train_and_predict()
print(json.dumps({{"loss": loss, "probabilities": probabilities.tolist(), "lanes": jit.lane_kernels_run()}}))
"""


def train_and_predict():
    """One compiled float32 training step of a seeded mini-Xception on a seeded batch of two faces,
    then its probabilities for the first face: (loss, probabilities (1, 7))."""
    backend.clear_session()
    backend.set_seed(0)
    model = fer_models.build("mini_xception")
    model.compile(optimizers.SGD(0.01), "sparse_categorical_crossentropy", jit_compile=True)
    x = np.random.default_rng(1).standard_normal((2, 48, 48, 1)).astype(np.float32)
    backend.set_seed(3)
    loss = float(model.train_on_batch(x, np.array([3, 5])))
    return loss, model.predict(x[:1], verbose=0)


def test_a_compiled_model_trains_and_predicts_with_numbas_jit_disabled(floatx):
    floatx("float32")                          # the default, which the plain-Python process runs
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    run = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT))], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    plain_python = json.loads(run.stdout.strip().splitlines()[-1])
    loss, probabilities = train_and_predict()
    assert plain_python["lanes"] is False
    np.testing.assert_allclose(plain_python["loss"], loss, rtol=1e-4)
    np.testing.assert_allclose(plain_python["probabilities"], probabilities, rtol=1e-3, atol=1e-5)
