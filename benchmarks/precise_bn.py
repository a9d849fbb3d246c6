"""The cost of precise BatchNormalization statistics (train.py's --precise-bn) against a training epoch.

    python benchmarks/precise_bn.py                        # cnn4, mini_xception, cnn8
    python benchmarks/precise_bn.py --models cnn4 --repeats 5 --faces 8192

Times one batch of the re-estimate (a training-mode forward with Dropout off, what
recompute_batchnorm_statistics runs `faces / batch` times) and one `train_on_batch` step of the
same fused model, alternating them so load from other jobs hits both alike. The epoch estimate is
the median step times the batches of an epoch (25,837 training faces); the re-estimate's is the
median batch times `faces / batch`. Prints medians and the ratio.
"""
import argparse
import statistics
import time

from fer.process import set_environment

set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

import numpy as np  # noqa: E402

from fer import models  # noqa: E402
from minicnn import losses, optimizers, perf  # noqa: E402
from minicnn.callbacks import recompute_batchnorm_statistics  # noqa: E402


def time_once(work):
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure(name, repeats, faces, train_faces):
    batch_size = models.DEFAULTS[name].get("batch_size", 64)
    size = models.DEFAULTS[name].get("input_size", 48)
    model = models.build(name, 7, (size, size, 1))
    model.compile(optimizers.Adam(1e-3), losses.SparseCategoricalCrossentropy(), metrics=["accuracy"],
                  jit_compile=True)                         # as fer's training runs it
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, size, size, 1), dtype=np.float32)
    y = rng.integers(0, 7, batch_size)
    for _ in range(2):                                      # warm-up: numba compiles, optimizer slots appear
        model.train_on_batch(x, y)
        recompute_batchnorm_statistics(model, x, batch_size)
    batch_times, step_times = [], []
    for _ in range(repeats):
        batch_times.append(time_once(lambda: recompute_batchnorm_statistics(model, x, batch_size)))
        step_times.append(time_once(lambda: model.train_on_batch(x, y)))
    batch, step = statistics.median(batch_times), statistics.median(step_times)
    epoch, estimate = step * -(-train_faces // batch_size), batch * (faces // batch_size)
    print(f"{name:14s} re-estimate batch {batch * 1e3:7.1f} ms   step {step * 1e3:7.1f} ms   "
          f"re-estimate ~{estimate:6.1f} s   epoch ~{epoch:7.1f} s   ratio {estimate / epoch:.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cnn4,mini_xception,cnn8")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--faces", type=int, default=8192, help="faces the re-estimate reads (train.py's default)")
    p.add_argument("--train-faces", type=int, default=25837)
    args = p.parse_args()
    perf.enable()
    for name in args.models.split(","):
        measure(name, args.repeats, args.faces, args.train_faces)


if __name__ == "__main__":
    main()
