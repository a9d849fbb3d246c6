"""Winograd fused block by block (benchmarks/winograd_fused.py, a candidate the library does not
use) against the library's unfused steps (minicnn/ops/winograd.py), on cnn8's and cnn4's 3x3 and
5x5 "same" convolutions. The candidate stays out of minicnn until this shows it pays on two threads.

    python benchmarks/kernels_winograd_fused.py                     # batch 64, float32
    python benchmarks/kernels_winograd_fused.py --repeats 9 --clock cpu
    python benchmarks/kernels_winograd_fused.py --quick             # batch 4, a smoke test

Each layer runs with the tiling ops.winograd.winograd_tile picks for it at batch 64 (F(4x4)
where it picks none: the first layers' single input channel), both paths with reused buffers as
a training step has them: the unfused one with a workspace (minicnn.compiler.buffers.Buffers)
for V, M and dV, both with out= buffers for z and dx. Rows: the forward alone, and a training
step (forward with the moments a following BatchNormalization takes, then the backward with dx).
Each cell is the median of `--repeats` calls after one warm-up call, the two paths taking turns
(benchmarks/timing.median_ms); ratio = unfused / fused (> 1: fused is faster). "diff" is the
largest difference of the fused z, dx and dK from the unfused ones, relative to the largest entry.
The machine may be busy: compare ratios within one run, and try --clock cpu.

The second table backs the fused kernels' choice of np.dot for their products: a block's a^2
products (tiles, C) @ (C, F), as many tiles as winograd_fused.block_rows gives the layer, by
np.dot (numba calls OpenBLAS, kept on one thread) and by loops written in numba (each tile's row
of M summed along F, the loop LLVM vectorizes), on one thread.
"""
import argparse
import os
import platform
import sys
import time

from fer.process import set_environment

set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

import numba  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minicnn import perf  # noqa: E402
from minicnn.compiler.buffers import Buffers  # noqa: E402
from minicnn.ops import winograd  # noqa: E402
from minicnn.ops.jit import njit  # noqa: E402
from minicnn.ops.padding import conv_geometry  # noqa: E402
from timing import median_ms  # noqa: E402

import winograd_fused  # noqa: E402  (the candidate, beside this script)

# (model, H = W, C, F, kernel side): every stride-1 "same" convolution of cnn8 and cnn4 (fer/models.py)
SHAPES = [("cnn8", 48, 1, 32, 3), ("cnn8", 48, 32, 32, 3), ("cnn8", 24, 32, 64, 3), ("cnn8", 24, 64, 64, 3),
          ("cnn8", 12, 64, 128, 3), ("cnn8", 12, 128, 128, 3), ("cnn8", 6, 128, 256, 3),
          ("cnn8", 6, 256, 256, 3), ("cnn4", 48, 1, 64, 3), ("cnn4", 24, 64, 128, 5),
          ("cnn4", 12, 128, 512, 3), ("cnn4", 6, 512, 512, 3)]
TRAINING_BATCH = 64


class Case:
    """One layer's arrays, buffers and the two paths' calls on them."""

    def __init__(self, batch, h, c, f, r, rng):
        pads, self.ho, self.wo = conv_geometry(h, h, (r, r), (1, 1), "same")
        self.top, self.left = pads[0][0], pads[1][0]
        self.tiling = (winograd.winograd_tile((TRAINING_BATCH, h, h, c), (r, r, c, f))
                       or winograd.tiling(4, r))
        self.x = rng.standard_normal((batch, h, h, c)).astype(np.float32)
        self.kernel = (rng.standard_normal((r, r, c, f)) * np.sqrt(2.0 / (r * r * c))).astype(np.float32)
        self.dz = rng.standard_normal((batch, self.ho, self.wo, f)).astype(np.float32)
        self.workspace = Buffers()
        self.z, self.dx = np.empty_like(self.dz), np.empty_like(self.x)     # out= buffers, one set a path
        self.z_fused, self.dx_fused = np.empty_like(self.dz), np.empty_like(self.x)
        self.moments = np.empty((2, f))

    def unfused(self, backward=False):
        z, saved = winograd.conv(self.x, self.kernel, self.top, self.left, self.ho, self.wo, self.workspace,
                                 self.tiling, out=self.z, moments=self.moments if backward else None)
        if not backward:
            return z, None, None
        return (z,) + winograd.conv_backward(self.dz, saved, self.x.shape, self.top, self.left, self.workspace,
                                             out=self.dx)

    def fused(self, backward=False):
        z, saved = winograd_fused.conv(self.x, self.kernel, self.top, self.left, self.ho, self.wo, self.tiling,
                                       moments=self.moments if backward else None, out=self.z_fused)
        if not backward:
            return z, None, None
        return (z,) + winograd_fused.conv_backward(self.dz, saved, self.x.shape, self.top, self.left,
                                                   out=self.dx_fused)

    def difference(self):
        """The largest difference of the fused results from the unfused ones, over the largest entry."""
        pairs = zip(self.fused(True), [a.copy() for a in self.unfused(True)])
        return max(float(np.abs(a - e).max() / np.abs(e).max()) for a, e in pairs)

    def rows(self):
        """Tile rows per block, and tiles per block, of the fused kernels."""
        th, tw = winograd.tiles_hw(self.ho, self.wo, self.tiling.m)
        rows = winograd_fused.block_rows(tw, self.x.shape[3], self.dz.shape[3], self.tiling, 4)
        return f"{min(rows, th * self.x.shape[0])} ({min(rows, th * self.x.shape[0]) * tw})"


@njit(cache=True)
def products_by_dot(v, u, mm):
    # mm[xi] = v[xi] @ u[xi] for every xi, one OpenBLAS call each
    for xi in range(u.shape[0]):
        np.dot(v[xi], u[xi], mm[xi])


@njit(cache=True)
def products_by_loops(v, u, mm):
    # the same products written out: row b of mm[xi] accumulated along F
    for xi in range(u.shape[0]):
        for b in range(v.shape[1]):
            for f in range(u.shape[2]):
                mm[xi, b, f] = 0
            for c in range(u.shape[1]):
                coef = v[xi, b, c]
                for f in range(u.shape[2]):
                    mm[xi, b, f] += coef * u[xi, c, f]


def products_table(args, rng):
    print(f"\n## a block's a^2 products on one thread: np.dot against loops written in numba "
          f"(medians of {args.repeats}, {args.clock} clock)\n")
    print("| layer | tiling | tiles | np.dot | loops | loops / np.dot | np.dot GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model, h, c, f, r in SHAPES:
        case = Case(1, h, c, f, r, rng)
        th, tw = winograd.tiles_hw(case.ho, case.wo, case.tiling.m)
        tiles = min(winograd_fused.block_rows(tw, c, f, case.tiling, 4), args.batch * th) * tw
        a2 = case.tiling.a ** 2
        v = rng.standard_normal((a2, tiles, c)).astype(np.float32)
        u = rng.standard_normal((a2, c, f)).astype(np.float32)
        by_dot, by_loops = np.empty((a2, tiles, f), np.float32), np.empty((a2, tiles, f), np.float32)
        with winograd_fused._one_blas_thread():
            dot_ms, loops_ms = median_ms([lambda: products_by_dot(v, u, by_dot),
                                          lambda: products_by_loops(v, u, by_loops)], args.repeats, args.clock)
        np.testing.assert_allclose(by_loops, by_dot, rtol=1e-3, atol=1e-3 * np.abs(by_dot).max())
        print(f"| {model} {c}->{f} @{h} {r}x{r} | {case.tiling} | {tiles} | {dot_ms:.3f} | {loops_ms:.3f} | "
              f"{loops_ms / dot_ms:.2f} | {2 * a2 * tiles * c * f / dot_ms / 1e6:.0f} |")


def print_header(args, batch):
    settings = " ".join(f"{name}={os.environ.get(name, '(unset)')}"
                        for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                     "OMP_WAIT_POLICY"))
    print(f"Winograd fused against unfused: batch {batch}, float32, medians of {args.repeats} calls taking turns, "
          f"{args.clock} clock, BLOCK_BYTES={winograd_fused.BLOCK_BYTES}")
    print(settings)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numba threads "
          f"{numba.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, python "
          f"{platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| layer | tiling | rows (tiles) a block | unfused fwd | fused fwd | ratio | unfused step | fused step "
          "| ratio | diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=TRAINING_BATCH)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--quick", action="store_true", help="batch 4, 2 repeats: a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 4, 2
    perf.enable()
    rng = np.random.default_rng(args.seed)
    print_header(args, args.batch)
    for model, h, c, f, r in SHAPES:
        case = Case(args.batch, h, c, f, r, rng)
        forward = median_ms([case.unfused, case.fused], args.repeats, args.clock)
        step = median_ms([lambda: case.unfused(True), lambda: case.fused(True)], args.repeats, args.clock)
        print(f"| {model} {c}->{f} @{h} {r}x{r} | {case.tiling} | {case.rows()} | {forward[0]:.2f} | "
              f"{forward[1]:.2f} | {forward[0] / forward[1]:.2f} | {step[0]:.2f} | {step[1]:.2f} | "
              f"{step[0] / step[1]:.2f} | {case.difference():.1e} |")
    products_table(args, rng)


if __name__ == "__main__":
    main()
