"""Matrix products for the layers: NumPy's matmul, with OpenBLAS held to one thread for small ones.

    matmul(a, b, out=None)  ==  np.matmul(a, b, out=out)        (M, K) @ (K, F) -> (M, F)

Every convolution and dense layer ends in one of these (forward, kernel gradient, input
gradient), and NumPy hands them to OpenBLAS, which splits a product over its threads and
waits for all of them. On a 2-core machine shared with other jobs, that wait is the
problem: when the helper thread is not running, a product that takes 0.05 ms alone took a
scheduler tick, 8 ms, and mini-Xception makes about 30 such small products per step.
Below PARALLEL_FLOPS the product is run on the calling thread alone
(`openblas_set_num_threads_local`, OpenBLAS >= 0.3.27; in NumPy's pthreads build it sets
the count for the whole library, so matmul restores it before returning); above it the
threads pay for themselves (a 15 GFLOP conv product: 2x on a quiet machine). Measured on a
busy machine: this was the largest part of taking mini-Xception training from 26 to
500-600 images/s (its layer times fell from 8-600 ms to 1-13 ms).

Between WIDE_PARALLEL_FLOPS and PARALLEL_FLOPS, a product whose inner and output sizes are
both at least WIDE_MIN_SIZE also gets both threads: cnn4's batch-1 products (576x1600x128,
144x1152x512, 36x4608x512; 0.17-0.24 GFLOP) run 1.5-1.9x faster on two, and its batch-1
inference fell from 6.0 to 5.0 ms (medians of 300, the two rules alternating in one run);
mini-Xception's and cnn4's training did not change (624-632 and 127-128 images/s). Narrow
products stay on one thread: with every product from 1e8 FLOP on two threads,
mini-Xception (whose 123904x72x8 and 123904x8x72 products, 0.14 GFLOP, are the ones that
moved) trained at 553 instead of 644 images/s.

There is no numba kernel here: no loop written in numba comes near OpenBLAS. "reference"
is the plain call; MINICNN_REFERENCE=1 makes every product use it.
"""
import ctypes
import numpy as np

from .. import backend

PARALLEL_FLOPS = 1e9   # 2*M*K*F: about 5 ms on one thread, less than a lost tick or two
WIDE_PARALLEL_FLOPS = 1e8
WIDE_MIN_SIZE = 64     # K and F at least this: see above


def matmul_reference(a, b, out=None):
    """a @ b, as NumPy does it (OpenBLAS with its default threads)."""
    return np.matmul(a, b, out=out)


def _find_openblas_local_threads():
    """OpenBLAS's `openblas_set_num_threads_local` from the library NumPy loaded, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and ".so" in line}
    except OSError:                  # not Linux: products keep OpenBLAS's own choice
        return None
    for path in sorted(paths):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


np.ones((2, 2)) @ np.ones((2, 2))    # make sure NumPy has loaded its BLAS before we look
_set_local_threads = _find_openblas_local_threads()


def matmul_single_thread(a, b, out=None):
    """a @ b on the calling thread only (falls back to the plain call without OpenBLAS)."""
    if _set_local_threads is None:
        return np.matmul(a, b, out=out)
    before = _set_local_threads(1)
    try:
        return np.matmul(a, b, out=out)
    finally:
        _set_local_threads(before)


def batched_matmul(a, b, out=None):
    """(B, M, K) @ (B, K, F) -> (B, M, F): B products (Winograd's 16), each one OpenBLAS call
    on its threads, as NumPy's matmul makes them for stacked matrices. Always on all threads,
    even for products `matmul` would keep on one: sixteen in a row keep the threads busy, and
    cnn8's (2304x128x128 and the like, 75 MFLOP each) trained at 205 images/s against 172
    with each on one thread (medians of 36 steps, alternating in one run)."""
    return np.matmul(a, b, out=out)


def on_all_threads(m, k, f):
    """Whether an (M, K) @ (K, F) product pays for OpenBLAS's threads (see above)."""
    flops = 2.0 * m * k * f
    return flops >= PARALLEL_FLOPS or (flops >= WIDE_PARALLEL_FLOPS and min(k, f) >= WIDE_MIN_SIZE)


def matmul(a, b, out=None):
    """(M, K) @ (K, F) -> (M, F), written into `out` when given; small products on one thread."""
    if backend.use_reference() or on_all_threads(*a.shape, b.shape[1]):
        return matmul_reference(a, b, out)
    return matmul_single_thread(a, b, out)
