"""ONNX export: equivalence with minicnn and batch-1 latency, onnxruntime against minicnn.

    python benchmarks/onnx_export.py [--repeats 200] [--skip-accuracy] [--threads N]
    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/onnx_export.py --threads 1   # one thread each

Prints, for every seed architecture (random weights, 64 random inputs) and for the published
mini-Xception (Keras 2 weights imported, 64 real PublicTest faces), the largest |p_onnx - p_minicnn|
and the top-class agreement; that model's PublicTest accuracy in onnxruntime; then the batch-1
latency of mini-Xception (imported weights) and cnn4, medians of `--repeats` calls, minicnn's
`model.forward(training=False)` and onnxruntime's `session.run` alternating call by call, so a
busy machine slows both alike. Needs the onnx extra and ../shared (or FER_SHARED_DIR).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402

from fer import models  # noqa: E402
from fer.data import load  # noqa: E402
from fer.preprocess import Preprocessing  # noqa: E402
from minicnn.io import export_onnx, load_model  # noqa: E402
from minicnn.keras_h5 import load_keras_h5  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FER_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


THREADS = 0         # onnxruntime's intra-op threads; 0: its default (one per core)


def session(model, folder):
    path = Path(folder) / f"{model.name}.onnx"
    export_onnx(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, x):
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def difference(model, sess, x):
    expected, received = model.predict(x, batch_size=len(x)), run(sess, x)
    return float(np.abs(expected - received).max()), int((expected.argmax(-1) == received.argmax(-1)).sum())


def latency(model, sess, x, repeats):
    """(minicnn ms, onnxruntime ms): medians, the two calls alternating."""
    times = {"minicnn": [], "onnxruntime": []}
    for _ in range(10):                         # warm-up: numba compilation, onnxruntime's first run
        model.forward(x, training=False), run(sess, x)
    for _ in range(repeats):
        for name, call in (("minicnn", lambda: model.forward(x, training=False)), ("onnxruntime", lambda: run(sess, x))):
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return tuple(1000 * float(np.median(times[name])) for name in ("minicnn", "onnxruntime"))


def public_test():
    data = load(SHARED / "fer2013" / "fer2013.csv.gz")
    keep = data.usage == "PublicTest"
    return data.images[keep], data.labels[keep]


def randomized(name):
    model = models.build(name)
    rng = np.random.default_rng(0)
    for w in model.weights:
        if w.name.endswith("moving_variance"):
            w.value[...] = rng.uniform(0.5, 2.0, w.shape)
        elif w.name.endswith(("moving_mean", "bias", "beta")):
            w.value[...] = rng.normal(0, 0.2, w.shape)
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--skip-accuracy", action="store_true", help="no PublicTest pass in onnxruntime")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime's intra-op threads (default 0: its own "
                   "choice); minicnn's follow NUMBA_NUM_THREADS and OPENBLAS_NUM_THREADS")
    args = p.parse_args()
    global THREADS
    THREADS = args.threads
    print(f"onnxruntime {ort.__version__}, intra-op threads {args.threads or 'default'}; {os.cpu_count()} CPUs; "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', '-')}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '-')}; load average {os.getloadavg()[0]:.1f}")
    images, labels = public_test()
    keras = load_keras_h5(SHARED / "reference" / "mini_xception_keras.hdf5")
    faces = Preprocessing(input_size=64, scale="symmetric").apply(images)
    with tempfile.TemporaryDirectory() as folder:
        print("equivalence, 64 inputs: max |p_onnx - p_minicnn|, same top class")
        for name in models.names():
            model = randomized(name)
            x = np.random.default_rng(1).random((64,) + model.input_shape[1:], dtype=np.float32)
            diff, same = difference(model, session(model, folder), x)
            print(f"  {name:14s} random weights, random inputs  {diff:.2e}  {same}/64")
        keras_session = session(keras, folder)
        diff, same = difference(keras, keras_session, faces[:64])
        print(f"  mini-Xception (Keras weights), 64 PublicTest faces  {diff:.2e}  {same}/64")
        for path in sorted((ROOT / "weights").glob("*.npz")):
            model = load_model(path)
            settings = {k: v for k, v in model.metadata.get("preprocessing", {}).items()
                        if k in ("input_size", "scale", "mean", "std")}     # without retired options (sharpness)
            diff, same = difference(model, session(model, folder), Preprocessing(**settings).apply(images[:64]))
            print(f"  weights/{path.name}, 64 PublicTest faces scaled as its file says  {diff:.2e}  {same}/64")
        if not args.skip_accuracy:
            probs = np.concatenate([run(keras_session, faces[i:i + 256]) for i in range(0, len(faces), 256)])
            print(f"PublicTest accuracy in onnxruntime: {(probs.argmax(-1) == labels).mean():.4f} "
                  f"({len(labels)} faces)")
        print(f"batch-1 latency, ms, medians of {args.repeats}, alternating: minicnn / onnxruntime")
        cnn4 = randomized("cnn4")
        for label, model, x in (("mini-Xception 64x64", keras, faces[:1]),
                                ("cnn4 48x48", cnn4, Preprocessing(scale="unit").apply(images[:1]))):
            mine, theirs = latency(model, session(model, folder), x, args.repeats)
            print(f"  {label:20s} {mine:.2f} / {theirs:.2f}  ({mine / theirs:.2f}x)")


if __name__ == "__main__":
    main()
