"""Time the fused epilogue (minicnn/ops/epilogue.py) against the textbook layers it replaces.

    python benchmarks/kernels_epilogue.py                 # every seed block, batch 64, float32
    python benchmarks/kernels_epilogue.py --models cnn4 --repeats 15

For each block of the seed models (cnn4: BN, ReLU, 2x2 pool, dropout, and its dense blocks;
cnn8: ReLU, BN (+ pool, dropout); mini-Xception: BN, ReLU and BN, 3x3/2 'same' pool, Add) at
batch 64 it times one training step's forward (batch statistics, dropout draws included) and
backward, both ways, taking turns: the textbook layers (BatchNormalization, Activation,
MaxPooling2D, Dropout, Add, each a pass over the whole activation) and the fused ops
(epilogue.moments, forward, backward). It prints the median of each and the ratio
textbook / fused (> 1: fused is faster), then per model the sums.

`--threshold` times instead the epilogue's own NumPy reference against its numba kernels on
one image (inference) and on small batches: what set perf.EPILOGUE_NUMBA_MIN_SIZE.
Timings on a machine shared with other jobs are noisy: compare ratios from one run.
"""
import argparse
import os
import platform
import sys

from fer.process import set_environment

set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

import numba  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minicnn import perf  # noqa: E402
from minicnn.layers import Activation, Add, BatchNormalization, Dropout, MaxPooling2D  # noqa: E402
from minicnn.ops import elementwise  # noqa: E402
from minicnn.ops import epilogue as E  # noqa: E402
from minicnn.ops.padding import conv_geometry  # noqa: E402
from timing import median_ms  # noqa: E402

BATCH = 64
POOL2, POOL3 = ((2, 2), (2, 2), "valid"), ((3, 3), (2, 2), "same")
# (model, relu, pool, dropout rate, residual, z's shape without the batch)
BLOCKS = (
    [("cnn4", "after", POOL2, 0.25, False, (h, h, c)) for h, c in [(48, 64), (24, 128), (12, 512), (6, 512)]]
    + [("cnn4", "after", None, 0.25, False, (units,)) for units in (256, 512)]
    + [("cnn8", "before", pool, rate, False, (h, h, c)) for h, c in [(48, 32), (24, 64), (12, 128), (6, 256)]
       for pool, rate in [(None, 0.0), (POOL2, 0.25)]]
    + [("cnn8", "before", None, 0.5, False, (64,))]
    + [("mini_xception", "after", None, 0.0, False, (h, h, 8)) for h in (46, 44)]
    + [("mini_xception", relu, pool, 0.0, residual, (h, h, c))
       for h, c in [(44, 16), (22, 32), (11, 64), (6, 128)]
       for relu, pool, residual in [("after", None, False), (None, POOL3, True)]])


def epilogue_spec(relu, pool, rate, shape):
    if pool is None:
        return E.Epilogue(relu, None, rate)
    pads, _, _ = conv_geometry(shape[0], shape[1], pool[0], pool[1], pool[2])
    return E.Epilogue(relu, (pool[0], pool[1], pads), rate)


def describe(relu, pool, rate, residual):
    parts = ["relu"] if relu == "before" else []
    parts += ["bn"] + (["relu"] if relu == "after" else [])
    parts += [f"pool{pool[0][0]}/{pool[1][0]}"] if pool else []
    parts += [f"drop{rate:g}"] if rate else []
    parts += ["add"] if residual else []
    return "+".join(parts)


class Textbook:
    """The block as the layers run it: forward(z) then backward(dy), one pass per layer."""

    def __init__(self, relu, pool, rate, residual, shape):
        self.layers = [Activation("relu")] if relu == "before" else []
        self.layers.append(BatchNormalization())
        self.layers += [Activation("relu")] if relu == "after" else []
        self.layers += [MaxPooling2D(pool[0], strides=pool[1], padding=pool[2])] if pool else []
        self.layers += [Dropout(rate, seed=0)] if rate else []
        self.add = Add() if residual else None

    def forward(self, z, residual):
        x = z
        for layer in self.layers:
            x = layer.forward(x, training=True)
        return self.add.forward([x, residual], training=True) if self.add else x

    def backward(self, dy):
        g = dy
        for layer in reversed(self.layers):
            g = layer.backward(g)
        return g


class Fused:
    """The same block through ops/epilogue.py, as a compiled step calls it."""

    def __init__(self, relu, pool, rate, residual, shape):
        self.spec = epilogue_spec(relu, pool, rate, shape)
        c = shape[-1]
        self.gamma, self.beta = np.ones(c, np.float32), np.zeros(c, np.float32)
        self.rng = np.random.default_rng(0)

    def forward(self, z, residual):
        mean, var = E.moments(z, relu_first=self.spec.relu == "before")
        inv_std = 1 / np.sqrt(var + np.float32(1e-3))
        y_shape = self.spec.output_shape(z.shape)
        bits = elementwise.random_bits(self.rng, y_shape) if self.spec.rate else None
        y, offsets, keep = E.forward(self.spec, z, mean, inv_std, self.gamma, self.beta, bits, residual)
        self.cache = (z, offsets, keep, mean, inv_std)
        return y

    def backward(self, dy):
        z, offsets, keep, mean, inv_std = self.cache
        return E.backward(self.spec, dy, z, offsets, keep, mean, inv_std, self.gamma, self.beta, True)[0]


CLOCK = "wall"     # --clock cpu: the CPU time of every thread of this process


def time_block(block, repeats, rng):
    """(textbook forward, fused forward, textbook backward, fused backward) medians in ms."""
    model, relu, pool, rate, residual, shape = block
    z = rng.standard_normal((BATCH,) + shape).astype(np.float32)
    textbook, fused = Textbook(relu, pool, rate, residual, shape), Fused(relu, pool, rate, residual, shape)
    y_shape = fused.spec.output_shape(z.shape)
    res = rng.standard_normal(y_shape).astype(np.float32) if residual else None
    dy = rng.standard_normal(y_shape).astype(np.float32)
    forward = median_ms([lambda: textbook.forward(z, res), lambda: fused.forward(z, res)], repeats, CLOCK)
    backward = median_ms([lambda: textbook.backward(dy), lambda: fused.backward(dy)], repeats, CLOCK)
    return forward + backward


def print_header(args, title):
    env = {name: os.environ.get(name, "(unset)") for name in
           ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_WAIT_POLICY")}
    print(title + f", {args.clock} clock")
    print(" ".join(f"{name}={value}" for name, value in env.items()))
    print(f"numba threads={numba.get_num_threads()}, cpus={os.cpu_count()}, "
          f"load average={os.getloadavg()[0]:.2f} (other jobs add noise)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}")


def run_blocks(args):
    print_header(args, f"fused epilogue vs textbook layers: batch {BATCH}, float32, training step, "
                       f"median of {args.repeats}, taking turns")
    header = (f"{'model':<14} {'block':<26} {'shape':<11} {'fwd book':>8} {'fused':>7} {'ratio':>6} "
              f"{'bwd book':>8} {'fused':>7} {'ratio':>6}")
    print(header + "\n" + "-" * len(header))
    rng, totals = np.random.default_rng(0), {}
    for block in BLOCKS:
        model, relu, pool, rate, residual, shape = block
        if args.models and model not in args.models:
            continue
        t = time_block(block, args.repeats, rng)
        totals[model] = [a + b for a, b in zip(totals.get(model, [0.0] * 4), t)]
        print(f"{model:<14} {describe(relu, pool, rate, residual):<26} {'x'.join(map(str, shape)):<11} "
              f"{t[0]:8.2f} {t[1]:7.2f} {t[0] / t[1]:6.2f} {t[2]:8.2f} {t[3]:7.2f} {t[2] / t[3]:6.2f}", flush=True)
    print("-" * len(header))
    for model, t in totals.items():
        print(f"{model:<14} {'sum of its blocks':<26} {'':<11} {t[0]:8.2f} {t[1]:7.2f} {t[0] / t[1]:6.2f} "
              f"{t[2]:8.2f} {t[3]:7.2f} {t[2] / t[3]:6.2f}   both ways {(t[0] + t[2]) / (t[1] + t[3]):.2f}")


def run_threshold(args):
    print_header(args, f"epilogue: NumPy reference vs numba kernels, float32, median of {args.repeats}")
    header = f"{'block':<26} {'z shape':<16} {'numbers':>8} {'reference':>9} {'numba':>7} {'ratio':>6}"
    print(header + "\n" + "-" * len(header))
    rng = np.random.default_rng(0)
    for batch, relu, pool, rate, residual, shape in [
            (1, "after", POOL2, 0.0, False, (6, 6, 512)), (1, None, POOL3, 0.0, True, (6, 6, 128)),
            (1, "after", None, 0.0, False, (22, 22, 32)), (1, "after", None, 0.0, False, (6, 6, 128)),
            (1, None, POOL3, 0.0, True, (11, 11, 64)), (1, "after", POOL2, 0.0, False, (24, 24, 128)),
            (4, "after", None, 0.25, False, (256,)), (64, "after", None, 0.25, False, (64,)),
            (64, "before", None, 0.5, False, (64,)), (64, "after", None, 0.25, False, (512,))]:
        z = rng.standard_normal((batch,) + shape).astype(np.float32)
        spec = epilogue_spec(relu, pool, rate, shape)
        c = shape[-1]
        stats = (np.zeros(c, np.float32), np.ones(c, np.float32), np.ones(c, np.float32), np.zeros(c, np.float32))
        y_shape = spec.output_shape(z.shape)
        bits = elementwise.random_bits(rng, y_shape) if rate else None
        res = rng.standard_normal(y_shape).astype(np.float32) if residual else None
        t_ref, t_numba = median_ms([lambda: E.forward_reference(spec, z, *stats, bits, res),
                                    lambda: E.forward_numba(spec, z, *stats, bits, res)], args.repeats, CLOCK)
        print(f"{describe(relu, pool, rate, residual):<26} {'x'.join(map(str, z.shape)):<16} {z.size:8d} "
              f"{t_ref:9.3f} {t_numba:7.3f} {t_ref / t_numba:6.2f}", flush=True)


def main():
    perf.enable()                  # as the scripts run minicnn (minicnn/perf.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated: cnn4, cnn8, mini_xception (default: all)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threshold", action="store_true", help="reference vs numba at small sizes instead")
    parser.add_argument("--threads", type=int, default=0, help="numba threads (default: all)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: CPU time of the process (on a busy machine, the work done, not the waits)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = args.clock
    if args.threads:
        numba.set_num_threads(args.threads)
    args.models = set(filter(None, args.models.split(",")))
    (run_threshold if args.threshold else run_blocks)(args)


if __name__ == "__main__":
    main()
