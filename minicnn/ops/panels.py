"""Matrix products on blocks of vector registers: a face's few-row products on weights packed once
into panels, and Winograd's narrow batches of products in training.

    out[m, n] = sum_k a[m, k] * b[k, n]          a (M, K), b (K, N) -> out (M, N)

Each 32 columns of out are made ROWS rows at a time (six, or three on a CPU with 16 vector
registers): the 6 x 32 block of out stays in 24 registers (ops/lanes.py) while k runs over
DEPTH numbers of the sum, each step a rank-one update (lanes.outer_multiply_add): four loads of
b's row k, six broadcasts of a[r, k], 24 fused multiply-adds. Rows left over go three, two and
one at a time. a is read where it lies, rows and columns at any steps, so a transposed a (Winograd's
V^T) needs no copy.

A face's convolutions and dense layers multiply a few dozen rows by a large fixed b (cnn4's
conv2d_4: 36 x 4608 @ 4608 x 512, b a layer's weights), and OpenBLAS copies b into its own blocked
layout on every call, a large share of the call with few rows. An inference plan packs b once
instead (`bind_panel_product`, and `bind_batched_panel_product` for Winograd's kept transform):

    panels[p, k, :] = b[k, 32p : 32p + 32]       (N/32, K, 32), each panel one contiguous run

and a face's pass, which keeps numba's threads asleep (perf.inference_threads), shares a large
product's panels with perf.worker_pool's threads. In training, Winograd's products on 32 channels
(`batched_product`) read b's rows where they lie, the products shared among numba's threads.
`panel_pays` and `batch_pays` (perf.PANEL_PRODUCT_*, perf.LANE_PRODUCT_MAX_WIDTH) say where this beats
OpenBLAS, as benchmarks/kernels_panels.py and settings_ab.py measure; float32 only.
"""
import os

import numpy as np

from .. import perf
from .buffers import reuse_or_new
from .jit import njit, prange
from .lanes import FAST, add_rows, load_all, outer_multiply_add, store_rows, vector_registers, zeros

COLUMNS = 32        # a panel's columns: four Lanes of eight
# rows of a a block: its ROWS x 4 Lanes of sums, 4 of b's panel and a broadcast number of a fit the vector registers
ROWS = 6 if vector_registers() >= 32 else 3
BLOCK = 4 * ROWS
DEPTH = 256         # the sum's k a pass: a pass's rows of a (6 x 256) and of the panel (256 x 32) stay in the L1 cache


def panel_pays(m, k, n, dtype):
    """Whether a (M, K) @ (K, N) product with b fixed runs faster packed: float32, N a multiple of
    COLUMNS, and a (M*K numbers, read once a panel) at most perf.PANEL_PRODUCT_MAX_LEFT."""
    return np.dtype(dtype) == np.float32 and n % COLUMNS == 0 and m * k <= perf.PANEL_PRODUCT_MAX_LEFT


def pack(b):
    """b (K, N) as (N/32, K, 32) float32 panels."""
    k, n = b.shape
    return np.ascontiguousarray(np.asarray(b, np.float32).reshape(k, n // COLUMNS, COLUMNS).transpose(1, 0, 2))


@njit(inline="always")
def _block(a, a_row, a_k, r0, b, b_k, b_column, k0, k1, block):
    """block + a[r0:r0 + R, k0:k1] @ b[k0:k1, b_column:b_column + 32] over flat arrays, a[r, k] at
    r*a_row + k*a_k and b[k, n] at k*b_k + n, R = len(block) // 4 rows: a rank-one update a k."""
    for k in range(k0, k1):
        block = outer_multiply_add(block, a, r0 * a_row + k * a_k, a_row, load_all(b, k * b_k + b_column, 8, 4))
    return block


@njit(inline="always")
def _put(block, out, start, n_n, first):
    """The block into its rows of out (flat, rows n_n apart): stored by the first pass over the sum,
    added by the others."""
    if first:
        store_rows(block, out, start, n_n, 4)
    else:
        add_rows(block, out, start, n_n, 4)


@njit(fastmath=FAST)
def _columns_product(a, a_row, a_k, m_n, k_n, b, b_k, b_column, out, n_n, column):
    """out[:, column:column + 32] = a @ b[:, b_column:b_column + 32] (as _block reads a and b; out
    flat, rows n_n apart): DEPTH of the sum a pass, in each ROWS rows at a time, then the rows left
    in blocks of three, two and one (a block of one row makes its sums one after another)."""
    for k0 in range(0, k_n, DEPTH):
        k1, first = min(k_n, k0 + DEPTH), k0 == 0
        r = 0
        while r + ROWS <= m_n:
            _put(_block(a, a_row, a_k, r, b, b_k, b_column, k0, k1, zeros(BLOCK)), out, r * n_n + column, n_n, first)
            r += ROWS
        if r + 3 <= m_n and ROWS > 3:
            _put(_block(a, a_row, a_k, r, b, b_k, b_column, k0, k1, zeros(12)), out, r * n_n + column, n_n, first)
            r += 3
        if r + 2 <= m_n:
            _put(_block(a, a_row, a_k, r, b, b_k, b_column, k0, k1, zeros(8)), out, r * n_n + column, n_n, first)
            r += 2
        if r < m_n:
            _put(_block(a, a_row, a_k, r, b, b_k, b_column, k0, k1, zeros(4)), out, r * n_n + column, n_n, first)


@njit(cache=True, nogil=True)
def _panels_kernel(a, panels, out, first, last):
    # out[:, 32p:32p + 32] = a @ panels[p] for p in [first, last): a (M, K) and out (M, N)
    # C-contiguous, panels (N/32, K, 32); without the GIL, so that threads share a product
    (m_n, k_n), n_n, rows = a.shape, out.shape[1], a.reshape(-1)
    for p in range(first, last):
        _columns_product(rows, k_n, 1, m_n, k_n, panels[p].reshape(-1), COLUMNS, 0, out.reshape(-1), n_n, p * COLUMNS)


@njit(cache=True, nogil=True)
def _batch_kernel(a, panels, out, first, last):
    # out[i] = a[i] @ b[i] for i in [first, last): a (B, M, K), panels (B, N/32, K, 32), out (B, M, N)
    m_n, k_n, n_n = a.shape[1], a.shape[2], out.shape[2]
    for i in range(first, last):
        rows, out_i = a[i].reshape(-1), out[i].reshape(-1)
        for p in range(panels.shape[1]):
            _columns_product(rows, k_n, 1, m_n, k_n, panels[i, p].reshape(-1), COLUMNS, 0, out_i, n_n, p * COLUMNS)


@njit(cache=True, parallel=True)
def _batch_rows_kernel(a, a_row, a_k, m_n, k_n, b, out):
    # out[i] = a[i] @ b[i]: a (B, M*K) flat with a[i][r, k] at r*a_row + k*a_k, b (B, K*N) and out
    # (B, M*N) row-major; the products shared among numba's threads whole
    n_n = out.shape[1] // m_n
    for i in prange(a.shape[0]):
        for column in range(0, n_n, COLUMNS):
            _columns_product(a[i], a_row, a_k, m_n, k_n, b[i], n_n, column, out[i], n_n, column)


def batch_pays(a, b, out):
    """Whether batched_product takes out = a @ b (B products): float32, N a multiple of COLUMNS, out
    C-contiguous (or None), a C-contiguous or the transpose of a C-contiguous array, and narrow
    products: N and the smaller of M and K at most perf.LANE_PRODUCT_MAX_WIDTH (a Winograd layer's
    channels)."""
    (_, m, k), n = a.shape, b.shape[2]
    dtypes = a.dtype == b.dtype == np.float32 and (out is None or out.dtype == np.float32)
    a_readable = a.flags.c_contiguous or a.transpose(0, 2, 1).flags.c_contiguous
    layout = a_readable and (out is None or out.flags.c_contiguous)
    narrow = min(m, k) <= perf.LANE_PRODUCT_MAX_WIDTH and n <= perf.LANE_PRODUCT_MAX_WIDTH
    return dtypes and layout and n % COLUMNS == 0 and narrow


def batched_product(a, b, out=None):
    """out[i] = a[i] @ b[i] for (B, M, K) @ (B, K, N) -> out (B, M, N), as batch_pays takes them, on
    numba's threads: a's rows read where they lie (its transpose, Winograd's V^T, needs no copy),
    b's rows k*N apart (a transposed b, Winograd's U^T, copied first: it is small); into `out`
    when given."""
    n_b, m, k = a.shape
    out = np.empty((n_b, m, b.shape[2]), np.float32) if out is None else out
    if a.flags.c_contiguous:
        flat, a_row, a_k = a.reshape(n_b, -1), k, 1
    else:
        flat, a_row, a_k = a.transpose(0, 2, 1).reshape(n_b, -1), 1, m
    b = np.ascontiguousarray(b)
    _batch_rows_kernel(flat, a_row, a_k, m, k, b.reshape(n_b, -1), out.reshape(n_b, -1))
    return out


def _shared(kernel, tasks, work, *args):
    """kernel(*args, first, last) over tasks [0, tasks): on this thread alone below
    perf.PANEL_PRODUCT_SHARED_MIN_WORK multiply-adds, else cut among it and perf.worker_pool's threads."""
    threads = min(tasks, os.cpu_count() or 1) if work >= perf.PANEL_PRODUCT_SHARED_MIN_WORK else 1
    bounds = [tasks * t // threads for t in range(threads + 1)]
    parts = [perf.worker_pool().submit(kernel, *args, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    kernel(*args, bounds[0], bounds[1])
    for part in parts:
        part.result()


def panel_product(a, panels, out=None):
    """a @ b for b packed by `pack`: (M, K) @ (K, N) -> (M, N) float32, into `out` when given. The
    panels are shared between this thread and perf.worker_pool's threads (one a core): a face's pass
    keeps numba's own threads asleep (perf.inference_threads), and these products are worth waking
    others for."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.shape[1] != panels.shape[1]:
        raise ValueError(f"panel_product: a has {a.shape[1]} columns, the packed b {panels.shape[1]} rows")
    out = reuse_or_new(out, (a.shape[0], panels.shape[0] * COLUMNS), np.float32, "panel_product: out")
    _shared(_panels_kernel, len(panels), out.size * a.shape[1], a, panels, out)
    return out


def bind_panel_product(b):
    """product(a, out) -> a @ b in out, b packed once (compiler/plan.py's inference plans)."""
    panels = pack(b)
    return lambda a, out: panel_product(a, panels, out)


def bind_batched_panel_product(b):
    """product(a, out) -> out[i] = a[i] @ b[i] for a batch of products with b (B, K, N) packed once
    (Winograd's a^2 products with a kept kernel transform); a (B, M, K) and out (B, M, N) float32,
    C-contiguous. The products are shared among the threads whole."""
    panels = np.stack([pack(matrix) for matrix in b])                 # (B, N/32, K, 32)

    def product(a, out):
        if a.dtype != np.float32 or a.shape[0] != len(panels) or a.shape[2] != panels.shape[2] \
                or not a.flags.c_contiguous:
            raise ValueError(f"batched panel product: a must be a C-contiguous float32 ({len(panels)}, M, "
                             f"{panels.shape[2]}) array, received {a.dtype} {a.shape}")
        out = reuse_or_new(out, a.shape[:2] + (panels.shape[1] * COLUMNS,), np.float32, "batched panel product: out")
        _shared(_batch_kernel, len(a), out.size * a.shape[2], a, panels, out)
        return out
    return product
