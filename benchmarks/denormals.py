"""A training step with denormal numbers flushed to zero (perf.enable's default) against kept.

    python benchmarks/denormals.py                      # mini-Xception with two dead filters
    python benchmarks/denormals.py --model RUN/model.npz --repeats 5

A filter that stops learning (its BatchNormalization input has no variance left, or ReLU keeps
it at zero) decays towards zero, and the products of its weights and activations fall below
float32's smallest normal number (1.2e-38): each such product takes the CPU's slow microcode path.
Without --model, mini-Xception gets such a filter the way long training left one (see
model_with_dead_filters). Each setting runs in its own process (the setting is
per thread, fixed at start), taking turns; it prints the median step time of each and their ratio.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fer.process import set_environment

set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # so the script runs from a checkout without installing


def model_with_dead_filters():
    """mini-Xception with filters that died as in a 100-epoch run's file: conv2d_1's filters 1 and 6
    scaled to about 1e-37 and 1e-25, and conv2d_2's weights reading those channels likewise (a
    channel that BatchNormalization turns into a constant gets no gradient through the next one)."""
    from fer import models as fer_models

    model = fer_models.build("mini_xception", 7, (48, 48, 1))
    first, second = (model.get_layer(name).weights[0].value for name in ("conv2d_1", "conv2d_2"))
    for channel, scale in ((1, 1e-36), (6, 1e-24)):
        first[..., channel] *= np.float32(scale)
        second[:, :, channel, :] *= np.float32(scale)
    return model


def trained_model(path):
    from fer.inference import load_fer_model

    return load_fer_model(path)[0]


def child(model_path, steps):
    """In the subprocess: median ms of `steps` training steps at batch 32, printed as JSON."""
    from minicnn import optimizers, perf

    flushed = perf.enable()["denormals_flushed"]
    model = trained_model(model_path) if model_path else model_with_dead_filters()
    model.compile(optimizer=optimizers.SGD(1e-4, momentum=0.9, nesterov=True), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = (rng.random((32, 48, 48, 1), dtype=np.float32) - 0.5) * 2
    y = np.eye(7, dtype=np.float32)[rng.integers(0, 7, 32)]
    for _ in range(3):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    print(json.dumps({"flushed": flushed, "ms": 1000 * float(np.median(times))}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained model file instead of the made-up dead filters")
    parser.add_argument("--repeats", type=int, default=3, help="processes per setting, taking turns (default: 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process (default: 10)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.model, args.steps)
    results = {"flush": [], "keep": []}
    for _ in range(args.repeats):
        for setting in results:
            command = [sys.executable, __file__, "--child", "--steps", str(args.steps)]
            command += ["--model", args.model] if args.model else []
            out = subprocess.run(command, env={**os.environ, "MINICNN_DENORMALS": setting}, capture_output=True,
                                 text=True, check=True).stdout
            results[setting].append(json.loads(out.splitlines()[-1]))
    flush, keep = (float(np.median([r["ms"] for r in results[s]])) for s in ("flush", "keep"))
    print(f"training step, batch 32, {args.model or 'mini-Xception with dead filters'}: "
          f"denormals flushed {flush:.1f} ms, kept {keep:.1f} ms: kept / flushed {keep / flush:.2f}x "
          f"(flushed: {results['flush'][0]['flushed']}; medians of {args.repeats} processes x {args.steps} steps)")


if __name__ == "__main__":
    main()
