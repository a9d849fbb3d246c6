"""Matrix products for the layers: NumPy's matmul, with small products kept on one thread
and tall, thin ones cut into row tiles on numba's threads.

    matmul(a, b, out=None, bias=None)  ==  a @ b (+ bias)        (M, K) @ (K, F) -> (M, F)

Every convolution and dense layer ends in one of these (forward, kernel gradient, input
gradient), and NumPy hands them to OpenBLAS, which splits a product over its threads and
waits for all of them. On a machine shared with other jobs that wait can cost a scheduler
tick, far more than a small product takes on one thread. So, once `minicnn.perf.enable()`
has found OpenBLAS's per-call thread setting, a product runs on the calling thread alone
unless it is large (perf.BLAS_PARALLEL_FLOPS) or large-ish and wide (perf.BLAS_WIDE_*),
where the threads pay for themselves. In NumPy's pthreads build of OpenBLAS the setting
is library-wide, so matmul restores it before returning.

A tall, thin product (a 1x1 or pointwise convolution over a batch: M = N*H*W rows of a few
channels) is below those sizes but long enough to share: its rows are cut into tiles
(perf.TALL_PRODUCT_*) and numba's threads each make one single-threaded OpenBLAS call a tile
(numba's np.dot, through scipy), so the threads never wait on OpenBLAS's own. Where the long
dimension is the one summed over (a kernel gradient, x^T @ dz), each of a fixed number of
blocks of tiles sums on one thread and the blocks' sums are added at the end: the same
result whatever the thread count.

A short, wide product (Winograd's kernel transform, kron(G, G) @ the kernels as (r^2, C*F)) runs
on numba's threads in blocks of columns, each output row a sum of the right side's rows scaled by
the left side's numbers, its zeros skipped (`wide_product`).

A batch of products (Winograd's a^2, `batched_matmul`) is shared among the threads whole:
each thread makes its products' OpenBLAS calls on one thread, so no product's threads wait
on each other (OpenBLAS never splits the summed dimension, which is the long one in a
kernel gradient). Those threads are numba's own, as for the tall products, where the operands
suit numba's np.dot; a pool of Python threads calling NumPy otherwise.

Apart from the wide products, whose left side is a few hundred numbers with many zeros, no loop
written in numba does the arithmetic: none comes near OpenBLAS. The "reference" is the plain
call; MINICNN_REFERENCE=1 makes every product use it.
"""
from contextlib import contextmanager

import numpy as np

from .. import backend, perf
from .jit import lane_kernels_run, njit, numba_dot_runs, pick, prange

BLOCKS = 16    # blocks of tiles summed apart in x^T @ dz (fixed: results do not depend on the threads)


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
    with openblas_one_thread():
        return np.matmul(a, b, out=out)


@contextmanager
def openblas_one_thread():
    """OpenBLAS calls inside run on one thread each (library-wide in NumPy's pthreads build, so
    also those other Python threads make meanwhile); nothing changes before perf.enable()."""
    set_local_threads = perf.openblas_set_num_threads_local
    if set_local_threads is None:
        yield
        return
    before = set_local_threads(1)
    try:
        yield
    finally:
        set_local_threads(before)


def batched_matmul_reference(a, b):
    """(B, M, K) @ (B, K, F) -> (B, M, F), as NumPy does it: B OpenBLAS calls, each on all its threads."""
    return a @ b


def batched_matmul_threads(a, b, out=None):
    """The same products, the batch shared among the kernels' threads (_batch_threads), each
    product one OpenBLAS call on one thread: the same numbers, as OpenBLAS never splits a sum.
    On numba's own threads (numba's np.dot) where a is C-contiguous and b is or is a transposed
    view of one, once perf.enable() has set numba's BLAS to one thread; else on a pool of threads."""
    out = np.empty((len(a), a.shape[1], b.shape[2]), np.result_type(a, b)) if out is None else out
    on_numba = (perf.numba_blas_one_thread and a.dtype == b.dtype == out.dtype and out.flags.c_contiguous
                and a.dtype in (np.float32, np.float64))
    if on_numba and a.flags.c_contiguous and b.flags.c_contiguous:
        _batch_kernel(a, b, out)
        return out
    if on_numba and a.flags.c_contiguous and b.transpose(0, 2, 1).flags.c_contiguous:
        _batch_transposed_kernel(a, b.transpose(0, 2, 1), out)
        return out
    return _batch_on_pool(a, b, out)


@njit(cache=True, parallel=True)
def _batch_kernel(a, b, out):
    # out[p] = a[p] @ b[p], one product a task
    for p in prange(a.shape[0]):
        np.dot(a[p], b[p], out[p])


@njit(cache=True, parallel=True)
def _batch_transposed_kernel(a, b_t, out):
    # out[p] = a[p] @ b_t[p].T, one product a task
    for p in prange(a.shape[0]):
        np.dot(a[p], b_t[p].T, out[p])


def _batch_on_pool(a, b, out):
    """batched_matmul_threads on the pool's threads, NumPy's OpenBLAS on one thread in each."""
    threads = _batch_threads(len(a))
    bounds = [len(a) * i // threads for i in range(threads + 1)]
    with openblas_one_thread():          # library-wide in NumPy's pthreads build
        parts = [perf.worker_pool().submit(_one_thread_product, a[lo:hi], b[lo:hi], out[lo:hi])
                 for lo, hi in zip(bounds, bounds[1:])]
        for part in parts:
            part.result()
    return out


def _one_thread_product(a, b, out):
    """np.matmul on this worker thread with OpenBLAS on it alone (per thread in OpenMP builds of
    OpenBLAS; the worker threads do nothing else, so it is never restored)."""
    perf.openblas_set_num_threads_local(1)
    return np.matmul(a, b, out=out)


def batched_matmul(a, b, out=None):
    """(B, M, K) @ (B, K, F) -> (B, M, F): B products (Winograd's a^2). OpenBLAS splits a product
    over its threads by rows and columns, never along the sum, so Winograd's kernel gradient
    V^T dM (32 x 9216 @ 9216 x 32 in cnn8) leaves its threads waiting on each other, and between
    products they hold the cores numba's kernels need: the products go whole to the threads
    instead (perf.BATCHED_PRODUCTS_SHARED; benchmarks/environment_ab.py times whole steps both
    ways). Written into `out` when given (the reference does not take it: np.matmul writes there
    on OpenBLAS's threads). Narrow float32 products run on ops.panels' registers instead
    (panels.batch_pays)."""
    panels = _panels()
    if panels is not None and panels.batch_pays(a, b, out):
        return panels.batched_product(a, b, out)
    shared = perf.BATCHED_PRODUCTS_SHARED and _batch_threads(len(a)) > 1
    product = pick(batched_matmul_reference, batched_matmul_threads, shared)
    if product is batched_matmul_threads:
        return batched_matmul_threads(a, b, out)
    return product(a, b) if out is None else np.matmul(a, b, out=out)


def _batch_threads(batch):
    """How many threads share a batch of products: numba's thread count (1 inside
    perf.one_thread()), at most the batch; 1 before perf.enable() has found OpenBLAS's per-call
    thread setting, or without numba."""
    if perf.openblas_set_num_threads_local is None or batch < 2 or backend.use_reference():
        return 1
    import numba

    return min(batch, numba.get_num_threads())


def on_all_threads(m, k, f):
    """Whether an (M, K) @ (K, F) product pays for OpenBLAS's threads (see the top)."""
    flops = 2.0 * m * k * f
    return flops >= perf.BLAS_PARALLEL_FLOPS or (flops >= perf.BLAS_WIDE_PARALLEL_FLOPS
                                                 and min(k, f) >= perf.BLAS_WIDE_MIN_SIZE)


@njit(cache=True, parallel=True)
def _row_tiles_kernel(a, b, out, rows, bias):
    # out[lo:hi] = a[lo:hi] @ b (+ bias, added while the tile is in cache; bias empty: none), one
    # tile of `rows` rows per call
    m = a.shape[0]
    for tile in prange((m + rows - 1) // rows):
        lo = tile * rows
        tile_out = out[lo:min(m, lo + rows)]
        np.dot(a[lo:min(m, lo + rows)], b, tile_out)
        if bias.size:
            for r in range(tile_out.shape[0]):
                for f in range(tile_out.shape[1]):
                    tile_out[r, f] += bias[f]


@njit(cache=True, parallel=True)
def _summed_tiles_kernel(x, g, partial, rows):
    # partial[block] = sum over the block's tiles of x[lo:hi]^T @ g[lo:hi]; x (M, K), g (M, F)
    m, blocks = x.shape[0], partial.shape[0]
    step = (m + blocks - 1) // blocks
    for block in prange(blocks):
        for i in range(partial.shape[1]):
            for j in range(partial.shape[2]):
                partial[block, i, j] = 0
        end = min(m, (block + 1) * step)
        tile = np.empty((partial.shape[1], partial.shape[2]), dtype=partial.dtype)
        for lo in range(block * step, end, rows):
            np.dot(x[lo:min(end, lo + rows)].T, g[lo:min(end, lo + rows)], tile)
            for i in range(partial.shape[1]):
                for j in range(partial.shape[2]):
                    partial[block, i, j] += tile[i, j]


def _tile_rows(k, f):
    """Rows per tile of a product with K and F columns on its two sides: within
    perf.OPENBLAS_ONE_THREAD_WORK, and at most TALL_PRODUCT_TILE_MAX_ROWS (enough tiles for the threads)."""
    return min(perf.TALL_PRODUCT_TILE_MAX_ROWS, perf.OPENBLAS_ONE_THREAD_WORK // max(1, k * f))


def tall_product(a, b, out=None, bias=None):
    """a @ b (+ bias (F,) when given) by row tiles on numba's threads (see the top), or None where
    the shapes do not suit: (M, K) @ (K, F) with M long, or x^T @ g (a = x.T, x (M, K)
    C-contiguous, no bias) with M long; M*K*F at least perf.TALL_PRODUCT_MIN_WORK, K*F small
    enough for a tile of TALL_PRODUCT_TILE_MIN_ROWS rows; `out`, when given, an (M, F)
    C-contiguous array of a's dtype sharing no memory with a or b."""
    m, f = a.shape[0], b.shape[1]
    if max(m, a.shape[1]) < perf.TALL_PRODUCT_MIN_ROWS or m * a.shape[1] * f < perf.TALL_PRODUCT_MIN_WORK:
        return None                                   # short or small (most calls): the cheapest tests first
    if min(a.shape + b.shape) == 0:
        return None
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64) or not numba_dot_runs():
        return None
    if out is not None and (out.shape != (m, f) or out.dtype != a.dtype or not out.flags.c_contiguous
                            or np.may_share_memory(out, a) or np.may_share_memory(out, b)):
        return None
    rows, inner_rows = _tile_rows(a.shape[1], f), _tile_rows(m, f)     # (M, K) @ (K, F); x^T @ g
    if m >= perf.TALL_PRODUCT_MIN_ROWS and a.flags.c_contiguous and rows >= perf.TALL_PRODUCT_TILE_MIN_ROWS:
        out = np.empty((m, f), a.dtype) if out is None else out
        bias = np.zeros(0, a.dtype) if bias is None else np.ascontiguousarray(bias, dtype=a.dtype)
        _row_tiles_kernel(a, b if b.flags.f_contiguous else np.ascontiguousarray(b), out, rows, bias)
        return out
    tall_inner = (bias is None and a.shape[1] >= perf.TALL_PRODUCT_MIN_ROWS and a.T.flags.c_contiguous
                  and b.flags.c_contiguous)
    if tall_inner and inner_rows >= perf.TALL_PRODUCT_TILE_MIN_ROWS:
        partial = np.empty((BLOCKS, m, f), a.dtype)
        _summed_tiles_kernel(a.T, b, partial, inner_rows)
        return np.sum(partial, axis=0, out=out)
    return None


@njit(cache=True, parallel=True)
def _column_blocks_kernel(a, b, out, block):
    # out[:, lo:hi] = a @ b[:, lo:hi], one block of columns a task: each row of out a sum of b's
    # rows scaled by a's numbers (a zero of a skipped), the block's rows in cache
    n = b.shape[1]
    for task in prange((n + block - 1) // block):
        lo, hi = task * block, min(n, (task + 1) * block)
        for m in range(a.shape[0]):
            row = out[m, lo:hi]
            for j in range(hi - lo):
                row[j] = 0
            for k in range(a.shape[1]):
                scale = a[m, k]
                if scale != 0:
                    source = b[k, lo:hi]
                    for j in range(hi - lo):
                        row[j] += scale * source[j]


def wide_product(a, b, out=None):
    """a @ b in blocks of b's columns on numba's threads, or None where the shapes do not suit: a
    short a (M*K at most perf.WIDE_PRODUCT_MAX_LEFT) and at least perf.WIDE_PRODUCT_MIN_WORK
    multiply-adds, b C-contiguous, `out` as tall_product's. A zero of a is skipped, so a NaN or
    inf of b times it gives 0 there, not NaN."""
    (m, k), n = a.shape, b.shape[1]
    if m * k > perf.WIDE_PRODUCT_MAX_LEFT or m * k * n < perf.WIDE_PRODUCT_MIN_WORK:
        return None
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64) or not b.flags.c_contiguous:
        return None
    if out is not None and (out.shape != (m, n) or out.dtype != a.dtype or not out.flags.c_contiguous
                            or np.may_share_memory(out, a) or np.may_share_memory(out, b)):
        return None
    out = np.empty((m, n), a.dtype) if out is None else out
    _column_blocks_kernel(a, b, out, perf.WIDE_PRODUCT_BLOCK)
    return out


def matmul(a, b, out=None, bias=None):
    """(M, K) @ (K, F) -> (M, F), plus `bias` (F,) when given, written into `out` when given (a
    caller's reused buffer, which the reference does not take: the product goes there on
    OpenBLAS's threads); small products on one thread, tall ones in row tiles on numba's threads
    (which add the bias to each tile while it is in cache)."""
    product = pick(matmul_reference, _small_product, not on_all_threads(*a.shape, b.shape[1]))
    if product is _small_product:
        return _small_product(a, b, out, bias)
    return _plus(product(a, b) if out is None else np.matmul(a, b, out=out), bias)


def _small_product(a, b, out=None, bias=None):
    """A product below OpenBLAS's threads' worth: in row tiles or column blocks on numba's threads
    when tall or wide, else on this thread."""
    tall = tall_product(a, b, out, bias)
    if tall is not None:
        return tall
    wide = wide_product(a, b, out)
    return _plus(matmul_single_thread(a, b, out) if wide is None else wide, bias)


def _plus(z, bias):
    """z += bias (F,) when given; z."""
    if bias is not None:
        z += bias
    return z


def bind_batched_matmul(m, b):
    """batched_matmul by (B, M, K) @ b for a fixed b (B, K, F): product(a, out) -> out (compiler/plan.py),
    on ops.panels where it pays for each (M, K) @ (K, F)."""
    panels = _panels()
    if panels is not None and panels.panel_pays(m, *b.shape[1:], b.dtype):
        return panels.bind_batched_panel_product(b)
    return lambda a, out: batched_matmul(a, b, out)


def _panel_product(m, b):
    """ops.panels' product bound to b where it pays, else None."""
    panels = _panels()
    return panels.bind_panel_product(b) if panels is not None and panels.panel_pays(m, *b.shape, b.dtype) else None


def _panels():
    """ops.panels while jit.lane_kernels_run(), else None. Imported at first use: it defines a
    numba type, and MINICNN_REFERENCE=1 runs without numba."""
    if not lane_kernels_run():
        return None
    from . import panels
    return panels


def column_sums(a):
    """a's column sums, (M, F) -> (F,): a bias's gradient, as one product with a row of ones (BLAS
    reads the long axis in order; NumPy's sum over it, the reference, is slower: benchmarks/RESULTS.md)."""
    if backend.use_reference():
        return a.sum(axis=0)
    return matmul(np.ones((1, a.shape[0]), a.dtype), a)[0]


def bind_matmul(m, b):
    """matmul by (M, K) @ b for a fixed b, its method chosen once: product(a, out) -> a @ b in out
    (compiler/plan.py). A short product worth OpenBLAS's threads (at most
    perf.TRANSPOSED_PRODUCT_MAX_ROWS rows) runs as out^T = b^T @ a^T with b^T kept contiguous:
    OpenBLAS shares that one better between its threads. Where ops.panels pays (a few rows, float32),
    b is packed once into its panels instead."""
    packed = _panel_product(m, b)
    if packed is not None:
        return packed
    if not on_all_threads(m, *b.shape):
        return lambda a, out: _small_product(a, b, out)
    if m > perf.TRANSPOSED_PRODUCT_MAX_ROWS:
        return lambda a, out: np.matmul(a, b, out=out)
    bt, out_t = np.ascontiguousarray(b.T), np.empty((b.shape[1], m), b.dtype)

    def transposed(a, out):
        np.matmul(bt, a.T, out=out_t)
        out[...] = out_t.T
        return out
    return transposed
