"""Time a face's products on packed panels (minicnn/ops/panels.py) against OpenBLAS.

    python benchmarks/kernels_panels.py                       # the seed models' batch-1 products
    python benchmarks/kernels_panels.py --repeats 21
    python benchmarks/settings_ab.py cnn4 LANE_KERNELS 0 1 --face    # a whole face, both ways
    python benchmarks/kernels_panels.py --training            # Winograd's batches in cnn8's training step

An inference plan binds each product with a fixed right side once (ops.gemm.bind_matmul): with
perf.LANE_KERNELS off it is NumPy's matmul (OpenBLAS, on its threads where the product is large,
b^T @ a^T for a few rows), on, the packed panels where `panel_pays`. For every product below both
bound forms take turns, a round of calls each, inside a face's settings (fer.process.set_environment(one_face=True),
numba on one thread as perf.inference_threads runs a face); the table gives medians and the
ratio OpenBLAS / panels (> 1: the panels are faster). A product timed alone, its b in the cache
and OpenBLAS's threads awake, flatters OpenBLAS: in a face's pass other kernels run between the
products, so perf.PANEL_PRODUCT_* is settled on whole faces (settings_ab.py --face). Record the
figures in benchmarks/RESULTS.md with the machine, date and command. `--training` times instead
ops.gemm.batched_matmul on the batches of products cnn8's training step makes (Winograd's
V @ U, dM @ U^T and V^T @ dM at batch 64) with numba's threads, both ways; perf.LANE_PRODUCT_MAX_WIDTH
comes from that table and whole steps (settings_ab.py cnn8 LANE_PRODUCT_MAX_WIDTH 0 32).
"""
import argparse
import os
import platform
import sys
import time

from fer.process import set_environment

set_environment(one_face="--training" not in sys.argv)      # before NumPy and numba load, which read them then

import numba  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minicnn import perf  # noqa: E402
from minicnn.ops import gemm, panels  # noqa: E402
from timing import median_ms, with_setting  # noqa: E402

SETTLE, CALLS = 0.05, 9      # seconds of quiet before each round; calls a round (their median)

# (label, M, K, N): the products a face's pass binds (ops.gemm.bind_matmul) in the seed models
PRODUCTS = [
    ("cnn4 conv2d_3", 144, 1152, 512),
    ("cnn4 conv2d_4", 36, 4608, 512),
    ("cnn4 dense_1", 1, 4608, 256),
    ("cnn4 dense_2", 1, 256, 512),
    ("cnn8 3x3 256 at 6x6", 36, 2304, 256),
    ("cnn8 dense_1", 1, 2304, 64),
    ("mini_xception 1x1 at 11x11", 121, 16, 32),
]


# (label, B, M, K, N, which operand is a transposed view): cnn8's Winograd products at batch 64
BATCHES = [
    ("48x48 32->32 forward", 36, 9216, 32, 32, ""),
    ("48x48 32->32 input gradient", 36, 9216, 32, 32, "b"),
    ("48x48 32->32 kernel gradient", 36, 32, 9216, 32, "a"),
    ("24x24 64->64 forward", 36, 2304, 64, 64, ""),
    ("24x24 64->64 kernel gradient", 36, 64, 2304, 64, "a"),
    ("12x12 128->128 forward", 36, 576, 128, 128, ""),
    ("12x12 128->128 kernel gradient", 36, 128, 576, 128, "a"),
    ("6x6 256->256 forward", 16, 576, 256, 256, ""),
]


def batch_timings(n_b, m, k, n, transposed, repeats):
    """(ms with perf.LANE_KERNELS off, on) of gemm.batched_matmul on one batch, in turns."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n_b, k, m) if transposed == "a" else (n_b, m, k)).astype(np.float32)
    b = rng.standard_normal((n_b, n, k) if transposed == "b" else (n_b, k, n)).astype(np.float32)
    a, b = (a.transpose(0, 2, 1) if transposed == "a" else a), (b.transpose(0, 2, 1) if transposed == "b" else b)
    out = np.empty((n_b, m, n), np.float32)

    product = lambda: gemm.batched_matmul(a, b, out)      # noqa: E731
    return median_ms([with_setting(perf, "LANE_KERNELS", lanes, product) for lanes in (False, True)], repeats)


def print_training(args):
    """The --training table."""
    print(f"Winograd's batches in training: OpenBLAS (LANE_KERNELS off) vs lanes, medians of {args.repeats} "
          f"calls in turns, numba threads={numba.get_num_threads()}")
    header = f"{'batch':<32} {'(B, M, K) @ (B, K, N)':<26} {'OpenBLAS ms':>11} {'lanes ms':>9} {'ratio':>6}  pays"
    print(header)
    print("-" * len(header))
    for label, n_b, m, k, n, transposed in BATCHES:
        blas, lanes = batch_timings(n_b, m, k, n, transposed, args.repeats)
        shape = f"({n_b}, {m}, {k}) @ (., ., {n})"
        pays = min(m, k) <= perf.LANE_PRODUCT_MAX_WIDTH and n <= perf.LANE_PRODUCT_MAX_WIDTH
        print(f"{label:<32} {shape:<26} {blas:11.3f} {lanes:9.3f} {blas / lanes:6.2f}  {pays}", flush=True)


def bound(m, b, lanes):
    """gemm.bind_matmul(m, b) made with perf.LANE_KERNELS = lanes."""
    return with_setting(perf, "LANE_KERNELS", lanes, lambda: gemm.bind_matmul(m, b))()


def timings(m, k, n, repeats):
    """(OpenBLAS ms, panels ms) for one product, inside a face's numba setting: rounds of CALLS
    calls of each in turns, each after SETTLE seconds of quiet (OpenBLAS's threads spin on the
    cores for a while after its products, where the panels' threads would meet them: in a face's
    pass with the panels no OpenBLAS product runs)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    products = [bound(m, b, lanes) for lanes in (False, True)]
    rounds = [[], []]
    with perf.one_thread():
        for _ in range(repeats):
            for product, times in zip(products, rounds):
                time.sleep(SETTLE)
                times.append(median_ms([lambda: product(a, out)], CALLS)[0])
    return [float(np.median(times)) for times in rounds]


def main():
    perf.enable()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="rounds (the median is shown)")
    parser.add_argument("--training", action="store_true", help="Winograd's batches of products in training")
    args = parser.parse_args()
    if args.training:
        return print_training(args)
    print(f"packed panels vs OpenBLAS: float32, medians of {args.repeats} rounds of {CALLS} calls in turns")
    env = {name: os.environ.get(name, "(unset)") for name in
           ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_THREAD_TIMEOUT", "NUMBA_CPU_FEATURES")}
    print(" ".join(f"{name}={value if len(value) < 40 else value[:37] + '...'}" for name, value in env.items()))
    print(f"cpus={os.cpu_count()}, panel rows={panels.ROWS}, load average={os.getloadavg()[0]:.2f}, "
          f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}")
    header = f"{'product':<28} {'(M, K) @ (K, N)':<24} {'OpenBLAS ms':>11} {'panels ms':>9} {'ratio':>6}  pays"
    print(header)
    print("-" * len(header))
    for label, m, k, n in PRODUCTS:
        blas, packed = timings(m, k, n, args.repeats)
        shape = f"({m}, {k}) @ ({k}, {n})"
        print(f"{label:<28} {shape:<24} {blas:11.3f} {packed:9.3f} {blas / packed:6.2f}  "
              f"{panels.panel_pays(m, k, n, np.float32)}", flush=True)


if __name__ == "__main__":
    main()
