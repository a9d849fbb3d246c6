"""Time the direct convolution (minicnn/ops/direct_conv.py) against ops.conv's path on the narrow layers.

    python benchmarks/kernels_direct_conv.py                   # batch 64 and batch 1, float32
    python benchmarks/kernels_direct_conv.py --repeats 9 --threads 1 --clock cpu

For every seed-model layer below it times, taking turns in one run (noise hits both alike),
medians of `--repeats`:
  - forward: `direct_conv2d` against `conv.conv2d` (im2col + one product; both writing into
    reused buffers, as the compiler runs them; Winograd never applies to these narrow layers);
  - forward with the moments: `direct_conv2d(..., moments=)` against `direct_conv2d` followed by
    `batchnorm.moments(z)` (what a BatchNormalization after it would otherwise pay);
  - backward (batch 64): `direct_conv2d_backward` against `conv.conv2d_backward`, without dx for a
    layer that reads the model's input (as training runs it);
and prints each ratio conv / direct (> 1: direct is faster) and what `direct_pays` picks (for
training at batch 64, for inference at batch 1). A second table times, for the layers
ops.pixel_conv takes (eight channels in and out), the direct kernels channel-major
(perf.LANE_KERNELS off) against pixel by pixel (on), the same passes in turns: the ratio
channel-major / pixel (> 1: pixel by pixel is faster). These tables chose perf.DIRECT_CONV_* and
perf.LANE_KERNELS; record their figures in benchmarks/RESULTS.md with the machine, date and command.
The machine may be busy: trust ratios, not absolute times. On a machine shared with other jobs a
parallel kernel waits for its slowest, descheduled thread: `--threads 1 --clock cpu` (this process's
CPU time) compares the work each version does instead.
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
from minicnn.ops import batchnorm, conv, direct_conv  # noqa: E402
from minicnn.ops.padding import conv_geometry  # noqa: E402
from timing import CLOCKS, median_ms, with_setting  # noqa: E402

# (label, (H, W, C), kernel size, filters, stride, padding, reads the model's input)
LAYERS = [
    ("mini_xception conv2d_1", (48, 48, 1), 3, 8, 1, "valid", True),
    ("mini_xception conv2d_2", (46, 46, 8), 3, 8, 1, "valid", False),
    ("mini_xception residual 1", (44, 44, 8), 1, 16, 2, "same", False),
    ("mini_xception residual 2", (22, 22, 16), 1, 32, 2, "same", False),
    ("mini_xception residual 3", (11, 11, 32), 1, 64, 2, "same", False),
    ("mini_xception residual 4", (6, 6, 64), 1, 128, 2, "same", False),
    ("mini_xception head", (3, 3, 128), 3, 7, 1, "same", False),
    ("cnn4 conv2d_1", (48, 48, 1), 3, 64, 1, "same", True),
    ("cnn8 conv2d_1", (48, 48, 1), 3, 32, 1, "same", True),
    ("tflearn/seq conv2d_1", (48, 48, 1), 5, 64, 1, "same", True),
]


clock = "wall"      # --clock cpu: this process's CPU time


def layer_arrays(rng, batch, shape, k, f, s, padding):
    """x, kernel, dz in float32 and the layer's strides and pads."""
    h, w, c = shape
    pads, ho, wo = conv_geometry(h, w, (k, k), (s, s), padding)
    x = rng.standard_normal((batch, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, c, f)) / np.sqrt(k * k * c)).astype(np.float32)
    dz = rng.standard_normal((batch, ho, wo, f)).astype(np.float32)
    return x, kernel, dz, (s, s), pads


def time_layer(rng, batch, spec, repeats):
    """[(what, conv ms, direct ms)] for one layer at one batch size."""
    _, shape, k, f, s, padding, first = spec
    x, kernel, dz, strides, pads = layer_arrays(rng, batch, shape, k, f, s, padding)
    cols = np.empty(dz.size // f * k * k * shape[2], np.float32)        # the compiler's buffers
    dcols = np.empty((dz.size // f, k * k * shape[2]), np.float32)
    z_out = np.empty(dz.shape, np.float32)
    moments = np.zeros((2, f))
    rows = [("forward",) + tuple(median_ms([
        lambda: conv.conv2d(x, kernel, strides, pads, cols),
        lambda: direct_conv.direct_conv2d(x, kernel, strides, pads, out=z_out)], repeats, clock))]
    rows.append(("forward+moments",) + tuple(median_ms([
        lambda: batchnorm.moments(direct_conv.direct_conv2d(x, kernel, strides, pads, out=z_out)),
        lambda: direct_conv.direct_conv2d(x, kernel, strides, pads, out=z_out, moments=moments)], repeats, clock)))
    if batch > 1:
        _, saved = conv.conv2d(x, kernel, strides, pads, cols)
        rows.append(("backward" + (" (no dx)" if first else ""),) + tuple(median_ms([
            lambda: conv.conv2d_backward(dz, saved, kernel, not first, dcols),
            lambda: direct_conv.direct_conv2d_backward(dz, x, kernel, strides, pads, not first)], repeats, clock)))
    return rows


def time_lanes(rng, batch, spec, repeats):
    """[(what, channel-major ms, pixel-by-pixel ms)] for a layer ops.pixel_conv takes."""
    _, shape, k, f, s, padding, first = spec
    x, kernel, dz, strides, pads = layer_arrays(rng, batch, shape, k, f, s, padding)
    z_out, moments = np.empty(dz.shape, np.float32), np.zeros((2, f))
    passes = [("forward+moments", lambda: direct_conv.direct_conv2d(x, kernel, strides, pads, out=z_out,
                                                                     moments=moments))]
    if batch > 1:
        passes.append(("backward", lambda: direct_conv.direct_conv2d_backward(dz, x, kernel, strides, pads, not first)))
    return [(what,) + tuple(median_ms([with_setting(perf, "LANE_KERNELS", lanes, run) for lanes in (False, True)],
                                      repeats, clock))
            for what, run in passes]


def print_lanes(args):
    """The second table: channel-major against pixel by pixel, where ops.pixel_conv takes the layer."""
    print(f"\n{'layer':<26} {'batch':>5} {'pass':<18} {'chan ms':>8} {'pixel ms':>9} {'ratio':>6}")
    rng = np.random.default_rng(1)
    for batch in map(int, args.batches.split(",")):
        for spec in LAYERS:
            _, shape, k, f, s, _, _ = spec
            if args.layers in spec[0] and direct_conv._pixel_conv(np.float32, (k, k, shape[2], f), (s, s)):
                for what, t_chan, t_pixel in time_lanes(rng, batch, spec, args.repeats):
                    print(f"{spec[0]:<26} {batch:>5} {what:<18} {t_chan:8.3f} {t_pixel:9.3f} "
                          f"{t_chan / t_pixel:6.2f}", flush=True)


def print_header(args):
    print(f"direct convolution vs ops.conv: float32, medians of {args.repeats}, taking turns, "
          f"{args.clock} clock")
    env = {name: os.environ.get(name, "(unset)") for name in
           ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_WAIT_POLICY")}
    print(" ".join(f"{name}={value}" for name, value in env.items()))
    print(f"numba threads={numba.get_num_threads()}, cpus={os.cpu_count()}, "
          f"load average={os.getloadavg()[0]:.2f} (other jobs add noise: compare ratios)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}")
    header = f"{'layer':<26} {'batch':>5} {'pass':<18} {'conv ms':>8} {'direct ms':>9} {'ratio':>6}  direct_pays"
    print(header)
    print("-" * len(header))


def main():
    perf.enable()                  # as the scripts run minicnn (minicnn/perf.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="numba threads (default: all)")
    parser.add_argument("--batches", default="64,1", help="comma-separated batch sizes")
    parser.add_argument("--layers", default="", help="only layers whose label contains this")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (all its threads)")
    args = parser.parse_args()
    global clock
    clock = args.clock
    if args.threads:
        numba.set_num_threads(args.threads)
    print_header(args)
    rng = np.random.default_rng(0)
    for batch in map(int, args.batches.split(",")):
        for spec in LAYERS:
            if args.layers not in spec[0]:
                continue
            _, shape, k, f, s, _, _ = spec
            pays = direct_conv.direct_pays((batch,) + shape, (k, k, shape[2], f), (s, s), training=batch > 1)
            for what, t_conv, t_direct in time_layer(rng, batch, spec, args.repeats):
                print(f"{spec[0]:<26} {batch:>5} {what:<18} {t_conv:8.3f} {t_direct:9.3f} "
                      f"{t_conv / t_direct:6.2f}  {pays}", flush=True)
    print_lanes(args)


if __name__ == "__main__":
    main()
