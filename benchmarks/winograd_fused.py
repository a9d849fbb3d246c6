"""Winograd's convolution for training, one cache-sized block of tiles at a time: a candidate
for minicnn/ops, kept beside its benchmark (kernels_winograd_fused.py) until it pays there.

ops/winograd.py runs each step over the whole batch: the input transform writes V (a^2, tiles, C)
to memory, a^2 products read it and write M (a^2, tiles, F), the output transform reads M back
(and the backward does the same with dM and dV). Those arrays hold a^2 / m^2 times as many
numbers as the activations, and on narrow layers moving them costs more than the products.
Here every step runs on a block of whole tile rows, few enough that the block's V and M fit in
a core's L2 cache (BLOCK_BYTES), and each of numba's threads takes its share of the blocks:

    forward   patches -> V (block) -> M[xi] = V[xi] @ U[xi] -> A^T M A written into z
    backward  dz -> dM (block);  V again from x;  dU[xi] += V[xi]^T @ dM[xi];
              dV[xi] = dM[xi] @ U[xi]^T -> B dV B^T added onto dx

The same numbers as ops/winograd.py, in another order. `saved` keeps x and U, not V. Each thread
(a "lane") sums its blocks' dU in its own array, added up at the end, so dK's rounding depends
on the thread count. Tiles overlap in the input (r - 1 rows and columns), so two blocks next to
each other add onto the same rows of dx: the backward runs the even blocks, then the odd ones,
and blocks that run at once are a whole block apart.

The a^2 products of a block are np.dot calls (numba calls scipy's OpenBLAS): loops written in
numba come nowhere near them (the second table of benchmarks/kernels_winograd_fused.py). OpenBLAS
must run them on the calling thread: its own threads, woken from inside numba's, make every
product wait. So every OpenBLAS in the process is set to one thread while the kernels run; where
that setting cannot be found, blocks shrink to products OpenBLAS keeps on one thread by itself
(perf.OPENBLAS_ONE_THREAD_WORK). Without scipy, and under MINICNN_REFERENCE=1, conv and
conv_backward run ops/winograd.py's unfused steps.
"""
import ctypes
import functools
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from minicnn import backend, perf
from minicnn.ops import winograd
from minicnn.ops.buffers import reuse_or_new
from minicnn.ops.jit import njit, numba_dot_runs, prange
from minicnn.ops.winograd import F2, Tiling, kernel_transform, kernel_transform_adjoint, tiles_hw

BLOCK_BYTES = 1 << 20    # a block's V and M (backward: V/dV and dM): half a core's L2, the rest for U[xi]


# ----------------------------------------------------------------------------------------
# one tile: the transforms of ops/winograd.py's kernels, between a tile and its rows of V / M
# ----------------------------------------------------------------------------------------

@njit(cache=True)
def _rows(mat, src, dst):
    """dst[i, j, :] = sum_k mat[i, k] src[k, j, :]: a small matrix on a tile's first axis
    (its zeros skipped: the transforms' matrices are half zeros)."""
    for i in range(mat.shape[0]):
        for j in range(src.shape[1]):
            for c in range(src.shape[2]):
                dst[i, j, c] = 0
            for k in range(mat.shape[1]):
                coef = mat[i, k]
                if coef != 0:
                    for c in range(src.shape[2]):
                        dst[i, j, c] += coef * src[k, j, c]


@njit(cache=True)
def _cols(mat, src, dst):
    """dst[i, j, :] = sum_k mat[j, k] src[i, k, :]: the same on the second axis (src mat^T)."""
    for i in range(src.shape[0]):
        for j in range(mat.shape[0]):
            for c in range(src.shape[2]):
                dst[i, j, c] = 0
            for k in range(mat.shape[1]):
                coef = mat[j, k]
                if coef != 0:
                    for c in range(src.shape[2]):
                        dst[i, j, c] += coef * src[i, k, c]


@njit(cache=True)
def _tile_input_transform(x, bt, n, r0, s0, v, b, d, e):
    # v[:, b] = B^T d B for the a x a patch d of image n from row r0, column s0 (zeros outside)
    h, w, c_n = x.shape[1], x.shape[2], x.shape[3]
    a = bt.shape[0]
    for i in range(a):
        for j in range(a):
            if 0 <= r0 + i < h and 0 <= s0 + j < w:
                pixel = x[n, r0 + i, s0 + j]         # one bounds check a pixel, then a plain copy
                for c in range(c_n):
                    d[i, j, c] = pixel[c]
            else:
                for c in range(c_n):
                    d[i, j, c] = 0
    _rows(bt, d, e)                                  # B^T d
    _cols(bt, e, d)                                  # (B^T d) B
    for i in range(a):
        for j in range(a):
            for c in range(c_n):
                v[a * i + j, b, c] = d[i, j, c]


@njit(cache=True)
def _tile_output_transform(mm, b, at, y, n, r0, s0, sums, squares, g, s, o):
    # y[n, r0:r0 + m, s0:s0 + m] = A^T M A for tile b (cropped to y), its sums and squares added
    ho, wo, f_n = y.shape[1], y.shape[2], y.shape[3]
    m, a = at.shape
    for i in range(a):
        for j in range(a):
            for f in range(f_n):
                g[i, j, f] = mm[a * i + j, b, f]
    _rows(at, g, s)                                  # A^T M
    _cols(at, s, o)                                  # (A^T M) A
    for u in range(min(m, ho - r0)):
        for v in range(min(m, wo - s0)):
            pixel = y[n, r0 + u, s0 + v]
            for f in range(f_n):
                pixel[f] = o[u, v, f]
            if sums.shape[0]:                        # float64, as BatchNormalization wants them
                for f in range(f_n):
                    value = np.float64(o[u, v, f])
                    sums[f] += value
                    squares[f] += value * value


@njit(cache=True)
def _tile_output_adjoint(dz, a_mat, n, r0, s0, dm, b, g, e, o):
    # dm[:, b] = A dz A^T for the m x m tile of dz at row r0, column s0 (zeros past the edge)
    ho, wo, f_n = dz.shape[1], dz.shape[2], dz.shape[3]
    a, m = a_mat.shape
    for u in range(m):
        for v in range(m):
            if r0 + u < ho and s0 + v < wo:
                pixel = dz[n, r0 + u, s0 + v]
                for f in range(f_n):
                    g[u, v, f] = pixel[f]
            else:
                for f in range(f_n):
                    g[u, v, f] = 0
    _rows(a_mat, g, e)                               # A dz
    _cols(a_mat, e, o)                               # (A dz) A^T
    for i in range(a):
        for j in range(a):
            for f in range(f_n):
                dm[a * i + j, b, f] = o[i, j, f]


@njit(cache=True)
def _tile_input_adjoint(dv, b, b_mat, dx, n, r0, s0, g, e):
    # dx[n, r0:r0 + a, s0:s0 + a] += B dV B^T for tile b, inside the image only
    h, w, c_n = dx.shape[1], dx.shape[2], dx.shape[3]
    a = b_mat.shape[0]
    for i in range(a):
        for j in range(a):
            for c in range(c_n):
                g[i, j, c] = dv[a * i + j, b, c]
    _rows(b_mat, g, e)                               # B dV
    _cols(b_mat, e, g)                               # (B dV) B^T
    for i in range(a):
        for j in range(a):
            if 0 <= r0 + i < h and 0 <= s0 + j < w:
                pixel = dx[n, r0 + i, s0 + j]
                for c in range(c_n):
                    pixel[c] += g[i, j, c]


# ----------------------------------------------------------------------------------------
# one block: tile rows lo .. hi - 1 of the batch (row n * th + p is image n's tile row p)
# ----------------------------------------------------------------------------------------

@njit(cache=True)
def _block_input_transform(x, bt, m, top, left, th, tw, lo, hi, v):
    # v[:, b] for the block's tiles, b = (row - lo) * tw + q
    a, c_n = bt.shape[0], x.shape[3]
    d, e = np.empty((a, a, c_n), x.dtype), np.empty((a, a, c_n), x.dtype)
    for row in range(lo, hi):
        n, p = row // th, row % th
        for q in range(tw):
            _tile_input_transform(x, bt, n, m * p - top, m * q - left, v, (row - lo) * tw + q, d, e)


@njit(cache=True)
def _forward_block(x, u, bt, at, top, left, th, tw, lo, hi, v, mm, y, sums, squares):
    # z's tiles of the block: V, the a^2 products, then A^T M A into y
    m, a = at.shape
    f_n, tiles = y.shape[3], (hi - lo) * tw
    _block_input_transform(x, bt, m, top, left, th, tw, lo, hi, v)
    for xi in range(a * a):
        np.dot(v[xi, :tiles], u[xi], mm[xi, :tiles])         # (tiles, C) @ (C, F)
    g, s, o = np.empty((a, a, f_n), y.dtype), np.empty((m, a, f_n), y.dtype), np.empty((m, m, f_n), y.dtype)
    for row in range(lo, hi):
        n, p = row // th, row % th
        for q in range(tw):
            _tile_output_transform(mm, (row - lo) * tw + q, at, y, n, m * p, m * q, sums, squares, g, s, o)


@njit(cache=True)
def _backward_block(x, dz, u, bt, b_mat, a_mat, top, left, th, tw, lo, hi, v, dm, du, dx):
    # the block's share of dU (added to du), and of dx (when dx is not None); v holds V, then dV
    a, m = a_mat.shape
    c_n, f_n, tiles = x.shape[3], dz.shape[3], (hi - lo) * tw
    g, e, o = np.empty((m, m, f_n), dz.dtype), np.empty((a, m, f_n), dz.dtype), np.empty((a, a, f_n), dz.dtype)
    for row in range(lo, hi):
        n, p = row // th, row % th
        for q in range(tw):
            _tile_output_adjoint(dz, a_mat, n, m * p, m * q, dm, (row - lo) * tw + q, g, e, o)
    _block_input_transform(x, bt, m, top, left, th, tw, lo, hi, v)
    du_block = np.empty((c_n, f_n), dz.dtype)
    for xi in range(a * a):
        np.dot(v[xi, :tiles].T, dm[xi, :tiles], du_block)     # (C, tiles) @ (tiles, F)
        for c in range(c_n):
            for f in range(f_n):
                du[xi, c, f] += du_block[c, f]
        if dx is not None:
            np.dot(dm[xi, :tiles], u[xi].T, v[xi, :tiles])     # dV[xi] over V[xi]: (tiles, F) @ (F, C)
    if dx is not None:
        g, e = np.empty((a, a, c_n), dz.dtype), np.empty((a, a, c_n), dz.dtype)
        for row in range(lo, hi):
            n, p = row // th, row % th
            for q in range(tw):
                _tile_input_adjoint(v, (row - lo) * tw + q, b_mat, dx, n, m * p - top, m * q - left, g, e)


# ----------------------------------------------------------------------------------------
# the batch: each lane (one per thread) takes a run of blocks, with its own V and M for them
# ----------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _forward_kernel(x, u, bt, at, top, left, th, tw, rows, y, sums, squares):
    # y (N, Ho, Wo, F) from x (N, H, W, C) and u (a^2, C, F); sums, squares (lanes, F) float64
    # zeros, or (lanes, 0) for none
    lanes, a2, total = sums.shape[0], u.shape[0], x.shape[0] * th
    blocks = (total + rows - 1) // rows
    for lane in prange(lanes):
        v = np.empty((a2, rows * tw, u.shape[1]), x.dtype)
        mm = np.empty((a2, rows * tw, u.shape[2]), x.dtype)
        for k in range(lane * blocks // lanes, (lane + 1) * blocks // lanes):
            _forward_block(x, u, bt, at, top, left, th, tw, k * rows, min(total, (k + 1) * rows), v, mm, y,
                           sums[lane], squares[lane])


@njit(cache=True, parallel=True)
def _backward_kernel(x, dz, u, bt, b_mat, a_mat, top, left, th, tw, rows, parity, du, dx):
    # the blocks k with k % 2 == parity (every block: parity -1) add onto du (lanes, a^2, C, F), dx
    lanes, a2, total = du.shape[0], u.shape[0], x.shape[0] * th
    blocks = (total + rows - 1) // rows
    for lane in prange(lanes):
        v = np.empty((a2, rows * tw, u.shape[1]), x.dtype)
        dm = np.empty((a2, rows * tw, u.shape[2]), x.dtype)
        for k in range(lane * blocks // lanes, (lane + 1) * blocks // lanes):
            if parity < 0 or k % 2 == parity:
                _backward_block(x, dz, u, bt, b_mat, a_mat, top, left, th, tw, k * rows,
                                min(total, (k + 1) * rows), v, dm, du[lane], dx)


# ----------------------------------------------------------------------------------------
# OpenBLAS on one thread, and the block size
# ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _openblas_thread_setters():
    """`openblas_set_num_threads_local` of every OpenBLAS loaded (NumPy's and scipy's, which numba's
    np.dot calls), found in /proc/self/maps; () where there is none or no such file."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (numba's np.dot calls its BLAS: have it loaded)
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line and ".so" in line})
    except (ImportError, OSError):
        return ()
    setters = []
    for path in paths:
        try:
            setter = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            return ()                                # an OpenBLAS we cannot set: shrink the blocks instead
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        setters.append(setter)
    return tuple(setters)


@contextmanager
def _one_blas_thread():
    """Every OpenBLAS of the process on one thread inside, restored on exit."""
    setters = _openblas_thread_setters()
    before = [setter(1) for setter in setters]
    try:
        yield
    finally:
        for setter, threads in zip(setters, before):
            setter(threads)


def block_rows(tw, c, f, tiling, itemsize):
    """Tile rows per block: the block's V and M, a^2 * rows * tw * (C + F) numbers, within
    BLOCK_BYTES; where OpenBLAS's threads cannot be set, also products (rows * tw, C) @ (C, F)
    within perf.OPENBLAS_ONE_THREAD_WORK. At least one row, and enough that blocks two apart
    (which the backward runs at once) share no input row: m * (rows + 1) >= a."""
    t = tiling
    rows = BLOCK_BYTES // (t.a ** 2 * tw * (c + f) * itemsize)
    if not _openblas_thread_setters():
        rows = min(rows, perf.OPENBLAS_ONE_THREAD_WORK // (tw * c * f))
    return max(1, -(-(t.r - 1) // t.m), rows)


def _lanes(blocks):
    """How many runs of blocks: one a numba thread (this thread's setting), at most one a block."""
    import numba

    return max(1, min(numba.get_num_threads(), blocks))


# ----------------------------------------------------------------------------------------
# the convolution
# ----------------------------------------------------------------------------------------

class Saved(NamedTuple):
    """What conv_backward needs from conv."""
    x: np.ndarray        # (N, H, W, C) the input, C-contiguous
    u: np.ndarray        # (a^2, C, F) the transformed kernel
    tiling: Tiling


def fused_runs():
    """Whether the fused kernels run: numba's np.dot has scipy, and MINICNN_REFERENCE is not set."""
    return numba_dot_runs() and not backend.use_reference()


def _matrix(matrix, dtype):
    """A transform's matrix as the kernels read it: contiguous, in the data's dtype."""
    return np.ascontiguousarray(matrix, dtype=dtype)


def conv(x, kernel, top, left, ho, wo, tiling=F2, moments=None, out=None):
    """z = conv(x, kernel), no bias, by `tiling`, block by block: (N, H, W, C), (r, r, C, F) ->
    (z (N, Ho, Wo, F), saved) for conv_backward; `moments`: a float64 (2, F) array that receives
    z's per-channel sum and sum of squares; `out`: z's buffer. As winograd.conv, without V and M."""
    t, n, c, f = tiling, x.shape[0], x.shape[3], kernel.shape[3]
    if kernel.shape[:2] != (t.r, t.r):
        raise ValueError(f"winograd_fused: {t} takes a {t.r}x{t.r} kernel, received kernel.shape={kernel.shape}")
    x = np.ascontiguousarray(x)
    u = kernel_transform(kernel, t).astype(x.dtype, copy=False)
    if not fused_runs():
        z, _ = winograd.conv(x, kernel, top, left, ho, wo, tiling=t, out=out, moments=moments)
        return z, Saved(x, u, t)
    th, tw = tiles_hw(ho, wo, t.m)
    rows = block_rows(tw, c, f, t, x.itemsize)
    z = reuse_or_new(out, (n, ho, wo, f), x.dtype, "winograd_fused: out")
    with perf.kernel_threads(t.a ** 2 * n * th * tw * (c + f)), _one_blas_thread():
        lanes = _lanes(-(-n * th // rows))
        sums, squares = (np.zeros((lanes, f if moments is not None else 0)) for _ in range(2))
        _forward_kernel(x, u, _matrix(t.BT, x.dtype), _matrix(t.AT, x.dtype), top,
                        left, th, tw, rows, z, sums, squares)
    if moments is not None:
        moments = reuse_or_new(moments, (2, f), np.float64, "winograd_fused: moments")
        moments[0], moments[1] = sums.sum(axis=0), squares.sum(axis=0)
    return z, Saved(x, u, t)


def conv_backward(dz, saved, x_shape, top, left, need_input_gradient=True, out=None):
    """dz (N, Ho, Wo, F) -> (dx (N, H, W, C) or None when need_input_gradient is False,
    dkernel (r, r, C, F)) for conv; `out`: dx's buffer. As winograd.conv_backward, without dM and dV."""
    x, u, t = saved
    dz = np.ascontiguousarray(dz, dtype=x.dtype)     # dx and dkernel in the layer's dtype, as z was
    if not fused_runs():
        v = winograd.input_transform(x, top, left, dz.shape[1], dz.shape[2], t)
        return winograd.conv_backward(dz, winograd.Saved(v, u, t), x_shape, top, left,
                                      need_input_gradient=need_input_gradient, out=out)
    (n, ho, wo, f), c = dz.shape, x.shape[3]
    th, tw = tiles_hw(ho, wo, t.m)
    rows = block_rows(tw, c, f, t, x.itemsize)
    dx = None
    if need_input_gradient:
        dx = reuse_or_new(out, tuple(x_shape), x.dtype, "winograd_fused: out")
        dx[...] = 0                                  # the tiles add their patches on
    matrices = _matrix(t.BT, x.dtype), _matrix(t.BT.T, x.dtype), _matrix(t.AT.T, x.dtype)
    with perf.kernel_threads(t.a ** 2 * n * th * tw * (c + f)), _one_blas_thread():
        du = np.zeros((_lanes(-(-n * th // rows)),) + u.shape, x.dtype)
        for parity in ((0, 1) if need_input_gradient else (-1,)):      # blocks side by side never at once
            _backward_kernel(x, dz, u, *matrices, top, left, th, tw, rows, parity, du, dx)
    return dx, kernel_transform_adjoint(du.sum(axis=0), t)
