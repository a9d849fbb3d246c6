"""Time each op's NumPy reference against its numba kernel at the FER sizes.

    python benchmarks/kernels.py                 # every op, batch 64, float32
    python benchmarks/kernels.py --ops im2col,col2im --repeats 15

For every (op, shape) it runs both versions once to warm up (numba compiles or loads its
cache), then alternates them `--repeats` times and prints the median of each, the ratio
reference / numba (> 1: numba is faster) and which one the dispatcher in minicnn/ops
uses by default for that call. This table is what picked each default and the thresholds
in minicnn/perf.py; the figures it gave are in benchmarks/RESULTS.md.

It runs with `minicnn.perf.enable()`, as the scripts do (OMP_WAIT_POLICY=PASSIVE unless
set: numba's OpenMP threads sleep between calls instead of spinning). Timings on a machine
shared with other busy processes are noisy; compare with `--threads 1` before trusting a
small ratio.

The shapes are the ones the FER models meet: the 4-conv seed (48x48x1 3x3, 24x24x64 5x5,
12x12x128 3x3, 6x6x512 3x3, 2x2 max pools), mini-Xception (48x48x1 and 46x46x8 3x3 valid,
the 1x1 stride-2 shortcut convs, 3x3 depthwise convs, 3x3 stride-2 "same" max pools), the
tflearn seed's 5x5 conv on the 48x48x1 input; BatchNormalization and ReLU on the
activations of cnn4, mini-Xception and cnn8 (and a few batch-1 images, for inference),
dropout after cnn4's pools, Adam on cnn4's largest weights.
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
from minicnn.ops import batchnorm, depthwise, elementwise, gemm, im2col, pooling, winograd  # noqa: E402
from minicnn.ops.padding import conv_geometry  # noqa: E402
from timing import median_ms  # noqa: E402

BATCH = 64
CONVS = [  # (H, W, C), kernel, stride, padding
    ((48, 48, 1), 3, 1, "same"),
    ((48, 48, 1), 3, 1, "valid"),
    ((48, 48, 1), 5, 1, "same"),
    ((24, 24, 64), 5, 1, "same"),
    ((12, 12, 128), 3, 1, "same"),
    ((6, 6, 512), 3, 1, "same"),
    ((46, 46, 8), 3, 1, "valid"),
    ((44, 44, 8), 1, 2, "same"),
    ((22, 22, 16), 1, 2, "same"),
    ((11, 11, 32), 1, 2, "same"),
    ((6, 6, 64), 1, 2, "same"),
]
POOLS = [
    ((48, 48, 64), 2, 2, "valid"),
    ((24, 24, 128), 2, 2, "valid"),
    ((12, 12, 512), 2, 2, "valid"),
    ((6, 6, 512), 2, 2, "valid"),
    ((44, 44, 16), 3, 2, "same"),
    ((22, 22, 32), 3, 2, "same"),
    ((11, 11, 64), 3, 2, "same"),
    ((6, 6, 128), 3, 2, "same"),
]
AVG_POOLS = [POOLS[0], POOLS[2], POOLS[4]]   # no seed uses AveragePooling2D: a sample
DEPTHWISE = [((h, h, c), 3, 1, "same") for h, c in
             [(44, 8), (44, 16), (22, 16), (22, 32), (11, 32), (11, 64), (6, 64), (6, 128)]]
# BatchNormalization and ReLU inputs: cnn4's four conv blocks and first dense block,
# mini-Xception's 46x46x8 .. 6x6x128, cnn8's 48x48x32
NORMALIZED = [(48, 48, 64), (24, 24, 128), (12, 12, 512), (6, 6, 512), (256,),
              (46, 46, 8), (44, 44, 16), (22, 22, 32), (11, 11, 64), (6, 6, 128), (48, 48, 32)]
NORMALIZED_ONE_IMAGE = [(46, 46, 8), (22, 22, 32), (12, 12, 512)]       # batch-1 inference
DROPPED = [(24, 24, 64), (12, 12, 128), (6, 6, 512), (256,), (24, 24, 32), (64,)]   # after cnn4/cnn8 pools
ADAM = [(5, 5, 64, 128), (3, 3, 128, 512), (3, 3, 512, 512), (4608, 256), (3, 3, 128, 256)]  # weight shapes
BATCHED = [(36, BATCH * 144, 32, 32), (36, BATCH * 36, 64, 64), (36, BATCH * 9, 128, 128),   # cnn8's F(4x4)
           (16, BATCH * 9, 256, 256), (36, BATCH * 9, 128, 512), (16, BATCH * 9, 512, 512)]  # F(2x2); cnn4's
WINOGRAD = [((12, 12, 128), 512), ((6, 6, 512), 512),                  # cnn4's 3x3 convs
            ((24, 24, 64), 64), ((12, 12, 128), 128), ((6, 6, 256), 256)]   # cnn8's wide ones


def cases(rng):
    """Yield (op, label, module, dispatcher name, args) for every benchmarked call."""
    def geometry(shape, k, s, padding):
        (h, w, c) = shape
        pads, _, _ = conv_geometry(h, w, (k, k), (s, s), padding)
        x = rng.standard_normal((BATCH, h, w, c)).astype(np.float32)
        return x, (k, k), (s, s), pads, f"{h}x{w}x{c} {k}x{k}/{s} {padding}"

    for spec in CONVS:
        x, ks, ss, pads, label = geometry(*spec)
        yield "im2col", label, im2col, "im2col", (x, ks, ss, pads)
        cols = rng.standard_normal(im2col.im2col(x, ks, ss, pads).shape).astype(np.float32)
        cols = cols.reshape(-1, ks[0] * ks[1] * x.shape[3])    # as conv backward passes it
        yield "col2im", label, im2col, "col2im", (cols, x.shape, ks, ss, pads)
    for spec in POOLS:
        x, ks, ss, pads, label = geometry(*spec)
        y, argmax = pooling.max_pool(x, ks, ss, pads)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        yield "max_pool", label, pooling, "max_pool", (x, ks, ss, pads)
        yield "max_pool_backward", label, pooling, "max_pool_backward", (dy, argmax, x.shape, ks, ss, pads)
    for spec in AVG_POOLS:
        x, ks, ss, pads, label = geometry(*spec)
        dy = rng.standard_normal(pooling.avg_pool(x, ks, ss, pads).shape).astype(np.float32)
        yield "avg_pool", label, pooling, "avg_pool", (x, ks, ss, pads)
        yield "avg_pool_backward", label, pooling, "avg_pool_backward", (dy, x.shape, ks, ss, pads)
    for spec in DEPTHWISE:
        x, ks, ss, pads, label = geometry(*spec)
        kernel = rng.standard_normal(ks + (x.shape[3], 1)).astype(np.float32)
        dy = rng.standard_normal(depthwise.depthwise_conv(x, kernel, ss, pads).shape).astype(np.float32)
        yield "depthwise_conv", label, depthwise, "depthwise_conv", (x, kernel, ss, pads)
        yield "depthwise_conv_backward", label, depthwise, "depthwise_conv_backward", (dy, x, kernel, ss, pads)
    for batch, shape in [(BATCH, s) for s in NORMALIZED] + [(1, s) for s in NORMALIZED_ONE_IMAGE]:
        label = "x".join(map(str, shape)) + (" (batch 1)" if batch == 1 else "")
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        c = shape[-1]
        gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
        mean, var = batchnorm.moments(x)
        inv_std = 1 / np.sqrt(var + np.float32(1e-3))
        yield "bn_moments", label, batchnorm, "moments", (x,)
        yield "bn_normalize", label, batchnorm, "normalize", (x, mean, inv_std, gamma, beta)
        yield "bn_normalize_backward", label, batchnorm, "normalize_backward", (dy, x, mean, inv_std, gamma, True)
        y = np.maximum(x, 0)
        yield "relu", label, elementwise, "relu", (x,)
        yield "relu_backward", label, elementwise, "relu_backward", (dy, y)
        # BatchNormalization + ReLU in one pass (training): compare with the rows above summed
        yield "bn_relu", label, batchnorm, "normalize", (x, mean, inv_std, gamma, beta, True)
        yield "bn_relu_backward", label, batchnorm, "normalize_backward", (dy, x, mean, inv_std, gamma, True, True, beta)
    for shape in DROPPED:
        label = "x".join(map(str, shape))
        x = rng.standard_normal((BATCH,) + shape).astype(np.float32)
        bits = elementwise.random_bits(rng, x.shape)
        yield "dropout", label, elementwise, "dropout", (x, bits, 0.25)
        yield "dropout_backward", label, elementwise, "dropout_backward", (x, bits >= 2**30, 0.25)
    for (h, w, c), f in WINOGRAD:                   # 3x3 "same": tiles start 1 pixel above/left
        label = f"{h}x{w}x{c}->{f}"
        th, tw = winograd.tiles_hw(h, w)
        x = rng.standard_normal((BATCH, h, w, c)).astype(np.float32)
        m = rng.standard_normal((16, BATCH * th * tw, f)).astype(np.float32)
        dy = rng.standard_normal((BATCH, h, w, f)).astype(np.float32)
        dv = rng.standard_normal((16, BATCH * th * tw, c)).astype(np.float32)
        yield "winograd_input", label, winograd, "input_transform", (x, 1, 1, h, w)
        yield "winograd_output", label, winograd, "output_transform", (m, BATCH, h, w)
        yield "winograd_output_adj", label, winograd, "output_adjoint", (dy,)
        yield "winograd_input_adj", label, winograd, "input_adjoint", (dv, x.shape, 1, 1, h, w)
    for a2, tiles, c, f in BATCHED:                 # Winograd's products: M = V U, dU = V^T dM, dV = dM U^T
        label = f"{a2}x({tiles}x{c}@{c}x{f})"
        v, u = rng.standard_normal((a2, tiles, c)).astype(np.float32), rng.standard_normal((a2, c, f)).astype(np.float32)
        dm = rng.standard_normal((a2, tiles, f)).astype(np.float32)
        yield "batched_matmul", label, gemm, "batched_matmul", (v, u)
        yield "batched_matmul", label + " dU", gemm, "batched_matmul", (v.transpose(0, 2, 1), dm)
        yield "batched_matmul", label + " dV", gemm, "batched_matmul", (dm, u.transpose(0, 2, 1))
    for shape in ADAM:
        label = "x".join(map(str, shape)) + " weight"
        w = rng.standard_normal(shape).astype(np.float32)
        g, m, v = (rng.standard_normal(shape).astype(np.float32) * 1e-3 for _ in range(3))
        yield "adam_update", label, elementwise, "adam_update", (w, g, m, np.abs(v), 1e-3, 0.9, 0.999, 1e-7)


def versions(module, name):
    """{"reference": fn, fast kind: fn}: an op's two versions; the fast one is `_numba`, or
    `_threads` for an op that shares work among threads without a kernel of its own."""
    fast = "numba" if hasattr(module, f"{name}_numba") else "threads"
    return {kind: getattr(module, f"{name}_{kind}") for kind in ("reference", fast)}


def default_of(module, name, args):
    """Which version the dispatcher `module.name` calls for these args: swap both for stubs."""
    saved = versions(module, name)
    switch = os.environ.pop("MINICNN_REFERENCE", None)     # the default, not the override
    try:
        for kind in saved:
            setattr(module, f"{name}_{kind}", lambda *a, kind=kind, **k: kind)
        return getattr(module, name)(*args)
    finally:
        for kind, fn in saved.items():
            setattr(module, f"{name}_{kind}", fn)
        if switch is not None:
            os.environ["MINICNN_REFERENCE"] = switch


def main():
    perf.enable()                  # as the scripts run minicnn (minicnn/perf.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="numba threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    wanted = set(filter(None, args.ops.split(",")))

    print(f"minicnn kernel benchmark: batch {BATCH}, float32, median of {args.repeats}")
    env = {name: os.environ.get(name, "(unset)") for name in
           ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_WAIT_POLICY")}
    print(" ".join(f"{name}={value}" for name, value in env.items()))
    print(f"numba threads={numba.get_num_threads()} (threading layer "
          f"{numba.config.THREADING_LAYER}), cpus={os.cpu_count()}, "
          f"load average={os.getloadavg()[0]:.2f} (other jobs add noise)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}")
    header = f"{'op':<24} {'shape':<24} {'reference ms':>12} {'numba ms':>9} {'ratio':>6}  default"
    print(header)
    print("-" * len(header))
    totals = {}
    rng = np.random.default_rng(0)
    for op, label, module, name, call_args in cases(rng):
        if wanted and op not in wanted:
            continue
        ref, fast = versions(module, name).values()
        t_ref, t_numba = median_ms([lambda: ref(*call_args), lambda: fast(*call_args)], args.repeats)
        default = default_of(module, name, call_args)
        total = totals.setdefault(op, [0.0, 0.0])
        total[0] += t_ref
        total[1] += t_numba
        print(f"{op:<24} {label:<24} {t_ref:12.2f} {t_numba:9.2f} {t_ref / t_numba:6.2f}  {default}",
              flush=True)
    print("-" * len(header))
    for op, (t_ref, t_numba) in totals.items():
        print(f"{op:<24} {'sum over shapes':<24} {t_ref:12.2f} {t_numba:9.2f} {t_ref / t_numba:6.2f}")


if __name__ == "__main__":
    main()
