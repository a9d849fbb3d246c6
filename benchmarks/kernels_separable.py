"""Time the fused SeparableConv2D op (minicnn/ops/separable.py) against the textbook path.

    python benchmarks/kernels_separable.py                    # mini-Xception's shapes, batch 64 and 1
    python benchmarks/kernels_separable.py --repeats 9 --threads 1 --clock cpu

The textbook path is what SeparableConv2D runs today: forward ops.depthwise.depthwise_conv,
then ops.gemm.matmul, keeping d for the backward (a BatchNormalization after it then takes its
moments in a pass of its own, ops.batchnorm.moments); backward two matmuls from the kept d, then
depthwise_conv_backward. The fused op runs with preallocated out= buffers, as a compiled model
would, in two variants: d recomputed tile by tile in the backward ("recompute"), or written
by the forward into a buffer the backward reads ("keep d").

For every shape both paths run once to warm up, then take turns `--repeats` times; the table
gives medians, the ratio textbook / fused (> 1: fused is faster) and what `separable_pays`
chooses (training=True on the backward and training-step rows). Rows: forward; forward with
the per-channel sums a following BatchNormalization needs (textbook: plus moments); backward;
a training step (forward with statistics + backward); and batch-1 inference (forward only).
A second table times the fused op's two depthwise halves against each other where
ops.separable_lanes takes the shape: the row kernels (perf.LANE_KERNELS off) and eight channels a
vector register (on), in turns, keeping d: ratio rows / lanes (> 1: the lanes are faster).
Timings on a machine shared with other jobs are noisy: compare ratios measured side by side,
rerun before trusting a small one, and try --clock cpu (the work done, the waits left out).
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
from minicnn.ops import batchnorm, depthwise, separable  # noqa: E402
from minicnn.ops.gemm import matmul  # noqa: E402
from timing import CLOCKS, median_ms, with_setting  # noqa: E402
from minicnn.ops.padding import conv_geometry  # noqa: E402

# mini-Xception's separable convolutions: (H = W, C, F), all 3x3 "same", stride 1
SHAPES = [(44, 8, 16), (44, 16, 16), (22, 16, 32), (22, 32, 32), (11, 32, 64), (11, 64, 64),
          (6, 64, 128), (6, 128, 128)]




class Case:
    """One shape's arrays, and each path's calls on them."""

    def __init__(self, batch, h, c, f, rng):
        self.pads = conv_geometry(h, h, (3, 3), (1, 1), "same")[0]
        self.x = rng.standard_normal((batch, h, h, c)).astype(np.float32)
        self.kd = (rng.standard_normal((3, 3, c, 1)) / 3).astype(np.float32)
        self.kp = (rng.standard_normal((1, 1, c, f)) / np.sqrt(c)).astype(np.float32)
        self.dy = rng.standard_normal((batch, h, h, f)).astype(np.float32)
        self.y = np.empty_like(self.dy)                      # the fused op's preallocated buffers
        self.dx = np.empty_like(self.x)
        self.d = np.empty(self.x.shape[:3] + (c,), np.float32)
        self.kept = None

    # textbook: SeparableConv2D.forward / backward_from_logits, without bias and activation
    def textbook_forward(self, statistics=False):
        n, h, w, c = self.x.shape
        d = depthwise.depthwise_conv(self.x, self.kd, (1, 1), self.pads)            # (N, H, W, C)
        self.kept = d.reshape(n * h * w, c)
        y = matmul(self.kept, self.kp.reshape(c, -1)).reshape(n, h, w, -1)
        return batchnorm.moments(y) if statistics else y

    def textbook_backward(self):
        c, f = self.kp.shape[2:]
        dz2 = self.dy.reshape(-1, f)
        matmul(self.kept.T, dz2)                                                      # dKp
        dd = matmul(dz2, self.kp.reshape(c, f).T).reshape(self.x.shape)
        return depthwise.depthwise_conv_backward(dd, self.x, self.kd, (1, 1), self.pads)

    def fused_forward(self, statistics=False, keep=False):
        return separable.separable_conv2d_numba(self.x, self.kd, self.kp, self.pads, statistics, out=self.y,
                                                depthwise_out=self.d if keep else None)

    def fused_backward(self, keep=False):
        return separable.separable_conv2d_backward_numba(self.dy, self.x, self.kd, self.kp, self.pads, out=self.dx,
                                                         depthwise=self.d if keep else None)


def training_rows(case, repeats, clock):
    """(label, [textbook ms, fused ms, (fused keep-d ms)]) for one batch-64 shape."""
    def step(keep):
        case.fused_forward(True, keep)
        case.fused_backward(keep)

    def textbook_step():
        case.textbook_forward(True)
        case.textbook_backward()

    case.textbook_forward()                                  # the kept d the textbook backward reads
    case.fused_forward(keep=True)
    return [("forward", median_ms([case.textbook_forward, case.fused_forward], repeats, clock)),
            ("forward+stats", median_ms([lambda: case.textbook_forward(True), lambda: case.fused_forward(True)],
                                        repeats, clock)),
            ("backward", median_ms([case.textbook_backward, case.fused_backward, lambda: case.fused_backward(True)],
                                   repeats, clock)),
            ("train step", median_ms([textbook_step, lambda: step(False), lambda: step(True)], repeats, clock))]


def print_lanes(shapes, args, rng):
    """The second table: the row kernels against the eight-lane ones, per shape and pass."""
    print(f"\n{'shape':<22} {'row':<14} {'rows ms':>9} {'lanes ms':>9} {'ratio':>6}")
    for batch in (args.batch, 1):
        for h, c, f in shapes:
            case = Case(batch, h, c, f, rng)
            if separable._lanes_kernels(np.float32, case.kd.shape) is None:
                continue
            case.fused_forward(keep=True)
            passes = ([("forward+stats", lambda: case.fused_forward(True, True)),
                       ("backward", lambda: case.fused_backward(True))] if batch > 1
                      else [("inference", case.fused_forward)])
            for row, run in passes:
                runs = [with_setting(perf, "LANE_KERNELS", lanes, run) for lanes in (False, True)]
                rows_ms, lanes_ms = median_ms(runs, args.repeats, args.clock)
                label = f"{h}x{h}x{c}->{f} b{batch}"
                print(f"{label:<22} {row:<14} {rows_ms:9.3f} {lanes_ms:9.3f} "
                      f"{rows_ms / lanes_ms:6.2f}", flush=True)


def print_header(args):
    env = {name: os.environ.get(name, "(unset)") for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                              "OMP_WAIT_POLICY")}
    print(f"fused SeparableConv2D benchmark: float32, 3x3 same, medians of {args.repeats}, taking turns, "
          f"{args.clock} clock")
    print(" ".join(f"{name}={value}" for name, value in env.items()))
    print(f"numba threads={numba.get_num_threads()}, cpus={os.cpu_count()}, load average="
          f"{os.getloadavg()[0]:.2f} (other jobs add noise), python {platform.python_version()}, "
          f"numpy {np.__version__}, numba {numba.__version__}")
    header = (f"{'shape':<22} {'row':<14} {'textbook ms':>11} {'fused ms':>9} {'keep-d ms':>9} "
              f"{'ratio':>6} {'keep-d':>6}  pays")
    print(header)
    print("-" * len(header))


def print_row(label, row, times, pays):
    keep = f"{times[2]:9.2f}" if len(times) > 2 else " " * 9
    keep_ratio = f"{times[0] / times[2]:6.2f}" if len(times) > 2 else " " * 6
    print(f"{label:<22} {row:<14} {times[0]:11.2f} {times[1]:9.2f} {keep} {times[0] / times[1]:6.2f} "
          f"{keep_ratio}  {pays}", flush=True)


def main():
    perf.enable()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="numba threads (default: all)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the process's CPU time (a busy machine's waits left out)")
    parser.add_argument("--shapes", default="", help="comma-separated indices into SHAPES (default: all)")
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    print_header(args)
    rng = np.random.default_rng(0)
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else SHAPES
    for h, c, f in shapes:
        label = f"{h}x{h}x{c}->{f} b{args.batch}"
        for row, times in training_rows(Case(args.batch, h, c, f, rng), args.repeats, args.clock):
            training = row in ("backward", "train step")
            print_row(label, row, times, separable.separable_pays(args.batch, h, h, c, f, training))
    for h, c, f in shapes:
        case = Case(1, h, c, f, rng)
        times = median_ms([case.textbook_forward, case.fused_forward], args.repeats * 5, args.clock)
        print_row(f"{h}x{h}x{c}->{f} b1", "inference", times, separable.separable_pays(1, h, h, c, f))
    print_lanes(shapes, args, rng)


if __name__ == "__main__":
    main()
