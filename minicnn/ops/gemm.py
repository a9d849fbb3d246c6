"""Matrix products for the layers: NumPy's matmul, with small products kept on one thread.

    matmul(a, b, out=None)  ==  np.matmul(a, b, out=out)        (M, K) @ (K, F) -> (M, F)

Every convolution and dense layer ends in one of these (forward, kernel gradient, input
gradient), and NumPy hands them to OpenBLAS, which splits a product over its threads and
waits for all of them. On a machine shared with other jobs that wait can cost a scheduler
tick, far more than a small product takes on one thread. So, once `minicnn.perf.enable()`
has found OpenBLAS's per-call thread setting, a product runs on the calling thread alone
unless it is large (perf.BLAS_PARALLEL_FLOPS) or large-ish and wide (perf.BLAS_WIDE_*),
where the threads pay for themselves. In NumPy's pthreads build of OpenBLAS the setting
is library-wide, so matmul restores it before returning.

There is no numba kernel here: no loop written in numba comes near OpenBLAS. The
"reference" is the plain call; MINICNN_REFERENCE=1 makes every product use it.
"""
import numpy as np

from .. import perf
from .jit import pick


def matmul_naive(a, b):
    """The definition: out[m, f] = sum_k a[m, k] * b[k, f], one multiply-add at a time."""
    m_n, k_n = a.shape
    out = np.zeros((m_n, b.shape[1]), dtype=np.result_type(a, b))
    for m in range(m_n):
        for f in range(b.shape[1]):
            for k in range(k_n):
                out[m, f] += a[m, k] * b[k, f]
    return out


def matmul_reference(a, b):
    """a @ b, as NumPy does it (OpenBLAS with its default threads)."""
    return a @ b


def matmul_single_thread(a, b, out=None):
    """a @ b on the calling thread only (the plain call until perf.enable() has found OpenBLAS)."""
    set_local_threads = perf.openblas_set_num_threads_local
    if set_local_threads is None:
        return np.matmul(a, b, out=out)
    before = set_local_threads(1)
    try:
        return np.matmul(a, b, out=out)
    finally:
        set_local_threads(before)


def batched_matmul(a, b, out=None):
    """(B, M, K) @ (B, K, F) -> (B, M, F): B products (Winograd's 16), each one OpenBLAS call
    on all its threads, even where `matmul` would keep one product on one thread: sixteen in
    a row keep the threads busy (measured on cnn8 by benchmarks/models.py)."""
    return np.matmul(a, b, out=out)


def on_all_threads(m, k, f):
    """Whether an (M, K) @ (K, F) product pays for OpenBLAS's threads (see the top)."""
    flops = 2.0 * m * k * f
    return flops >= perf.BLAS_PARALLEL_FLOPS or (flops >= perf.BLAS_WIDE_PARALLEL_FLOPS
                                                 and min(k, f) >= perf.BLAS_WIDE_MIN_SIZE)


def matmul(a, b, out=None):
    """(M, K) @ (K, F) -> (M, F), written into `out` when given (a caller's reused buffer, which
    the reference does not take: the product goes there on OpenBLAS's threads); small products
    on one thread."""
    product = pick(matmul_reference, matmul_single_thread, not on_all_threads(*a.shape, b.shape[1]))
    if out is None:
        return product(a, b)
    return matmul_single_thread(a, b, out) if product is matmul_single_thread else np.matmul(a, b, out=out)
