"""Winograd F(2x2, 3x3) and F(4x4, 3x3) against im2col on the seed models' convolutions:
float32 accuracy, then forward and backward time, per layer shape.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/kernels_winograd.py
    python benchmarks/kernels_winograd.py --skip-accuracy --repeats 9
    python benchmarks/kernels_winograd.py --skip-timing --points     # F(4x4)'s point sets compared
    python benchmarks/kernels_winograd.py --batch 1 --skip-accuracy  # inference sizes

Accuracy: every method in float32 (im2col too) against the float64 im2col convolution, on
standard-normal inputs and output gradients and He-normal kernels: z, dx and dK, as the
norm-wise relative error |a - e| / |e| and the largest entry's error relative to the largest
entry, max |a - e| / max |e| (the measure tests/test_compiler.py holds to 1e-4).

Timing: each method with its own reused buffers (as in training), forward then backward with
dx, the methods taking turns call by call in a rotating order, `--repeats` rounds after one
warm-up round; it prints the median ms of each and the ratios (> 1: the second is faster).
The machine may be busy: compare ratios within one run; on a machine shared with
busier jobs, `--clock cpu` single-threaded measures the work each method does. `winograd_tile` shows what
minicnn.ops.winograd picks for the shape with the thresholds in minicnn.perf.

The 5x5 rows (cnn4's second conv) hold F(4x4, 5x5), which the library uses, against
F(2x2, 5x5), built here with `toom_cook`.
"""
import argparse
import os
import platform
import sys
import time
from fractions import Fraction

from fer.process import set_environment

set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

import numba  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minicnn import perf  # noqa: E402
from minicnn.compiler.buffers import Buffers  # noqa: E402
from minicnn.ops import winograd  # noqa: E402
from minicnn.ops.gemm import matmul  # noqa: E402
from minicnn.ops.im2col import col2im, im2col, numba_pays  # noqa: E402
from minicnn.ops.padding import conv_geometry  # noqa: E402

# (model, H = W, C, F, kernel side): the stride-1 "same" convolutions of cnn4 and cnn8
SHAPES = [("cnn4", 12, 128, 512, 3), ("cnn4", 6, 512, 512, 3),
          ("cnn8", 48, 32, 32, 3), ("cnn8", 24, 32, 64, 3), ("cnn8", 24, 64, 64, 3),
          ("cnn8", 12, 64, 128, 3), ("cnn8", 12, 128, 128, 3), ("cnn8", 6, 128, 256, 3),
          ("cnn8", 6, 256, 256, 3), ("cnn4", 24, 64, 128, 5)]
HALF = Fraction(1, 2)
TILINGS_5X5 = [winograd.toom_cook(2, (0, 1, -1, 2, -2), r=5), winograd.F4_5X5]
POINT_SETS = {"0 +-1 +-2 (Lavin & Gray)": (0, 1, -1, 2, -2), "0 +-1 +-1/2": (0, 1, -1, HALF, -HALF),
              "0 +-1 1/2 -2 (F4)": (0, 1, -1, HALF, -2), "0 +-1/2 +-2": (0, HALF, -HALF, 2, -2)}


def methods(r):
    """(name, Tiling or None for im2col) for an r x r kernel."""
    if r == 3:
        return [("im2col", None), ("F2", winograd.F2), ("F4", winograd.F4)]
    return [("im2col", None)] + [(f"F{t.m}", t) for t in TILINGS_5X5]


def geometry(h, r):
    pads, ho, wo = conv_geometry(h, h, (r, r), (1, 1), "same")
    return pads, ho, wo


def im2col_forward(x, kernel, pads, workspace):
    """conv.conv2d's im2col path: the numba im2col into a reused buffer, one product."""
    (kh, kw, c, f), n = kernel.shape, x.shape[0]
    _, ho, wo = geometry(x.shape[1], kh)
    buffer = workspace("cols", (n * ho * wo, kh * kw * c), x.dtype) if numba_pays((kh, kw), c) else None
    cols = im2col(x, (kh, kw), (1, 1), pads, out=buffer).reshape(n * ho * wo, -1)
    return matmul(cols, kernel.reshape(-1, f)).reshape(n, ho, wo, f), cols


def im2col_backward(dz, cols, kernel, x_shape, pads, workspace):
    """conv.conv2d_backward's im2col path: dK = cols^T dz, dx = col2im(dz K2^T)."""
    f = kernel.shape[3]
    dz = dz.reshape(-1, f)
    dkernel = matmul(cols.T, dz).reshape(kernel.shape)
    kernel_t = kernel.reshape(-1, f).T
    dcols = matmul(dz, kernel_t, out=workspace("dcols", (dz.shape[0], kernel_t.shape[1]), dz.dtype))
    return col2im(dcols, x_shape, kernel.shape[:2], (1, 1), pads), dkernel


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def run(tiling, x, kernel, dz, pads, workspace):
    """One training step of the convolution by `tiling` (None: im2col): (z, dx, dK), and the
    forward and backward seconds (by `clock`)."""
    top, left = pads[0][0], pads[1][0]
    start = clock()
    if tiling is None:
        z, cols = im2col_forward(x, kernel, pads, workspace)
        middle = clock()
        dx, dk = im2col_backward(dz, cols, kernel, x.shape, pads, workspace)
    else:
        z, saved = winograd.conv(x, kernel, top, left, dz.shape[1], dz.shape[2], workspace, tiling)
        middle = clock()
        dx, dk = winograd.conv_backward(dz, saved, x.shape, top, left, workspace)
    return (z, dx, dk), middle - start, clock() - middle


def case(n, h, c, f, r, rng, dtype=np.float32):
    _, ho, wo = geometry(h, r)
    x = rng.standard_normal((n, h, h, c))
    kernel = rng.standard_normal((r, r, c, f)) * np.sqrt(2.0 / (r * r * c))
    dz = rng.standard_normal((n, ho, wo, f))
    return x.astype(dtype), kernel.astype(dtype), dz.astype(dtype)


def errors(actual, expected):
    """(norm-wise relative error, max |a - e| / max |e|)."""
    diff = actual.astype(np.float64) - expected
    return np.linalg.norm(diff) / np.linalg.norm(expected), np.abs(diff).max() / np.abs(expected).max()


def accuracy(batch, rng, points):
    print(f"\n## float32 error against the float64 im2col convolution (batch {batch}): "
          "norm-wise / max-entry, for z, dx, dK\n")
    print("| layer | method | z | dx | dK |\n| --- | --- | --- | --- | --- |")
    for model, h, c, f, r in SHAPES:
        x, kernel, dz = case(batch, h, c, f, r, rng, np.float64)
        pads, _, _ = geometry(h, r)
        expected, _, _ = run(None, x, kernel, dz, pads, Buffers())
        candidates = methods(r)
        if points and r == 3:
            candidates += [(name, winograd.toom_cook(4, p)) for name, p in POINT_SETS.items()]
        for name, tiling in candidates:
            got, _, _ = run(tiling, x.astype(np.float32), kernel.astype(np.float32), dz.astype(np.float32),
                            pads, Buffers())
            cells = " | ".join("%.1e / %.1e" % errors(a, e) for a, e in zip(got, expected))
            print(f"| {model} {c}->{f} @{h} {r}x{r} | {name} | {cells} |")


def timing(batch, repeats, rng, clock_name):
    print(f"\n## median {clock_name} ms over {repeats} rounds (batch {batch}, float32), methods taking turns\n")
    print("| layer | winograd_tile | method | forward | backward | im2col / method (fwd, bwd, step) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, h, c, f, r in SHAPES:
        x, kernel, dz = case(batch, h, c, f, r, rng)
        pads, _, _ = geometry(h, r)
        pick = winograd.winograd_tile(x.shape, kernel.shape)
        candidates = methods(r)
        workspaces = [Buffers() for _ in candidates]
        times = [([], []) for _ in candidates]
        for round_ in range(repeats + 1):
            order = np.roll(np.arange(len(candidates)), round_)
            for i in order:
                _, forward, backward = run(candidates[i][1], x, kernel, dz, pads, workspaces[i])
                if round_:                                  # round 0 warms up (numba, buffers)
                    times[i][0].append(forward)
                    times[i][1].append(backward)
        medians = [(np.median(fw) * 1e3, np.median(bw) * 1e3) for fw, bw in times]
        base = medians[0]
        for (name, _), (fw, bw) in zip(candidates, medians):
            ratios = f"{base[0] / fw:.2f}, {base[1] / bw:.2f}, {sum(base) / (fw + bw):.2f}"
            print(f"| {model} {c}->{f} @{h} {r}x{r} | {pick} | {name} | {fw:.1f} | {bw:.1f} | {ratios} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--accuracy-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--points", action="store_true", help="also F(4x4)'s other point sets (accuracy)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: the process's CPU time, the work done whatever the machine's load "
                             "(run single-threaded: NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    perf.enable()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, numba threads {numba.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    global clock
    clock = CLOCKS[args.clock]
    rng = np.random.default_rng(args.seed)
    if not args.skip_accuracy:
        accuracy(args.accuracy_batch, rng, args.points)
    if not args.skip_timing:
        timing(args.batch, args.repeats, rng, args.clock)


if __name__ == "__main__":
    main()
