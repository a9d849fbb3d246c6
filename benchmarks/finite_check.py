"""The cost of fer.training's finiteness checks against a training epoch, per architecture.

    python benchmarks/finite_check.py                      # cnn4, mini_xception, cnn8
    python benchmarks/finite_check.py --repeats 9 --train-faces 25837

Each epoch end checks every weight (FiniteWeights) and the checkpoint's weights and optimizer
state (RunCheckpoint.save). This times both checks on a compiled model with Adam's moments,
and one `train_on_batch` step of the same model, alternating them so load from other jobs
hits both alike; the epoch estimate is the median step times the batches of an epoch
(25,837 training faces at the model's batch size by default). Prints medians and the ratio.
"""
import argparse
import statistics
import time

import numpy as np

from fer import models
from minicnn import io, losses, optimizers


def time_once(work):
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure(name, repeats, train_faces):
    batch_size = models.DEFAULTS[name].get("batch_size", 64)
    size = models.DEFAULTS[name].get("input_size", 48)
    classes = 7
    model = models.build(name, classes, (size, size, 1))
    model.compile(optimizers.Adam(1e-3), losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, size, size, 1), dtype=np.float32)
    y = rng.integers(0, classes, batch_size)
    for _ in range(2):                                   # warm-up: numba compiles, optimizer slots appear
        model.train_on_batch(x, y)

    def checks():
        io.nonfinite(io.named_weights(model))            # FiniteWeights
        _, slots = model.optimizer.get_state(model.trainable_weights)
        io.nonfinite({**io.named_weights(model), **slots})  # RunCheckpoint.save

    check_times, step_times = [], []
    for _ in range(repeats):
        check_times.append(time_once(checks))
        step_times.append(time_once(lambda: model.train_on_batch(x, y)))
    check, step = statistics.median(check_times), statistics.median(step_times)
    epoch = step * -(-train_faces // batch_size)
    print(f"{name:14s} checks {check * 1e3:8.2f} ms   step {step * 1e3:8.1f} ms   epoch ~{epoch:7.1f} s   "
          f"checks / epoch {check / epoch:.2e}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cnn4,mini_xception,cnn8")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--train-faces", type=int, default=25837)
    args = p.parse_args()
    for name in args.models.split(","):
        measure(name, args.repeats, args.train_faces)


if __name__ == "__main__":
    main()
