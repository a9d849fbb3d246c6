"""Max and average pooling over kh x kw windows of NHWC input, and their gradients.

    max:     y[n, ho, wo, c] = max  over the window of x[n, ho*sh - top + i, wo*sw - left + j, c]
    average: y[n, ho, wo, c] = mean over the real (non-padded) cells of the same window

Shapes: x (N, H, W, C) -> y (N, Ho, Wo, C), Ho = (H + top + bottom - kh) // sh + 1 (same
for Wo), pads = ((top, bottom), (left, right)) from `padding.conv_geometry`; "valid" gives
Ho = (H - kh) // sh + 1, "same" gives Ho = ceil(H / sh).

As in TensorFlow, "same" padding never changes a value: max pooling pads with -inf (a
padded cell never wins, even if every real cell is negative) and average pooling divides
by the number of real cells in the window, not by kh*kw. Windows may overlap (3x3,
stride 2): in backward, a pixel that is the max of two windows gets both gradients.

`max_pool` also returns `argmax`, int64 (N, Ho, Wo, C): the position h*W + w in the
unpadded image of the winning cell; ties go to the first max in row-major window order.
Backward sends dy[n, ho, wo, c] to exactly that cell.

numba by default for all four: the references build a padded copy and full-size
temporaries, the kernels visit each window once and touch only its real cells (see
benchmarks/kernels.py).
"""
import numpy as np

from .. import perf
from .im2col import output_hw
from .jit import njit, pick, prange


def window_cells(h, w, pool_size, strides, pads):
    """Position h*W + w of every cell of every window, (Ho, Wo, kh*kw) in row-major window
    order; -1 where the cell is padding."""
    (kh, kw), (sh, sw) = pool_size, strides
    ho, wo = output_hw(h, w, pool_size, strides, pads)
    rows = (np.arange(ho) * sh - pads[0][0])[:, None] + np.arange(kh)        # (Ho, kh)
    cols = (np.arange(wo) * sw - pads[1][0])[:, None] + np.arange(kw)        # (Wo, kw)
    real = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[None, :, None, :]
    cells = rows[:, None, :, None] * w + cols[None, :, None, :]              # (Ho, Wo, kh, kw)
    return np.where(real, cells, -1).reshape(ho, wo, kh * kw)


# ----------------------------------------------------------------------------------------
# naive loops: the definitions, one window at a time
# ----------------------------------------------------------------------------------------

def max_pool_naive(x, pool_size, strides, pads):
    """y = the largest real cell of each window, argmax = its h*W + w (the first on ties)."""
    n_img, h, w, c_n = x.shape
    cells = window_cells(h, w, pool_size, strides, pads)
    y = np.empty((n_img,) + cells.shape[:2] + (c_n,), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.int64)
    flat = x.reshape(n_img, h * w, c_n)
    for n, ho, wo, c in np.ndindex(y.shape):
        real = [p for p in cells[ho, wo] if p >= 0]
        values = [flat[n, p, c] for p in real]
        first = int(np.argmax(values))                   # np.argmax: the first max on ties
        y[n, ho, wo, c], argmax[n, ho, wo, c] = values[first], real[first]
    return y, argmax


def max_pool_backward_naive(dy, argmax, x_shape):
    """dx[argmax of each window] += dy of that window."""
    n_img, h, w, c_n = x_shape
    dx = np.zeros((n_img, h * w, c_n), dtype=dy.dtype)
    for n, ho, wo, c in np.ndindex(dy.shape):
        dx[n, argmax[n, ho, wo, c], c] += dy[n, ho, wo, c]
    return dx.reshape(x_shape)


def avg_pool_naive(x, pool_size, strides, pads):
    """y = the mean of the real cells of each window."""
    n_img, h, w, c_n = x.shape
    cells = window_cells(h, w, pool_size, strides, pads)
    y = np.empty((n_img,) + cells.shape[:2] + (c_n,), dtype=x.dtype)
    flat = x.reshape(n_img, h * w, c_n)
    for n, ho, wo in np.ndindex(y.shape[:3]):
        real = [p for p in cells[ho, wo] if p >= 0]
        y[n, ho, wo] = sum(flat[n, p] for p in real) / len(real)
    return y


def avg_pool_backward_naive(dy, x_shape, pool_size, strides, pads):
    """dx[cell] += dy / count for every real cell of each window."""
    n_img, h, w, c_n = x_shape
    cells = window_cells(h, w, pool_size, strides, pads)
    dx = np.zeros((n_img, h * w, c_n), dtype=dy.dtype)
    for n, ho, wo in np.ndindex(dy.shape[:3]):
        real = [p for p in cells[ho, wo] if p >= 0]
        for p in real:
            dx[n, p] += dy[n, ho, wo] / len(real)
    return dx.reshape(x_shape)


# ----------------------------------------------------------------------------------------
# NumPy reference: max pooling gathers every window's cells at once, average pooling
# adds one strided slice per window offset (i, j)
# ----------------------------------------------------------------------------------------

def max_pool_reference(x, pool_size, strides, pads):
    """Max over each window, -inf padding: (N, H, W, C) -> (y (N, Ho, Wo, C), argmax)."""
    n, h, w, c = x.shape
    cells = window_cells(h, w, pool_size, strides, pads)                    # (Ho, Wo, kh*kw)
    real = cells >= 0
    values = np.where(real[..., None], x.reshape(n, h * w, c)[:, cells], -np.inf)   # (N, Ho, Wo, kh*kw, C)
    y = values.max(axis=3)
    # the first REAL cell holding the max: padding never wins, even in a window of -inf values
    first = np.argmax((values == y[:, :, :, None]) & real[..., None], axis=3)       # (N, Ho, Wo, C)
    ho, wo = np.ogrid[:cells.shape[0], :cells.shape[1]]
    return y, cells[ho[..., None], wo[..., None], first]                           # h*W + w of that cell


def max_pool_backward_reference(dy, argmax, x_shape, pool_size, strides, pads):
    """Gradient of max pooling: each dy added to its window's argmax cell -> (N, H, W, C)."""
    n, h, w, c = x_shape
    dx = np.zeros((n, h * w, c), dtype=dy.dtype)
    images, channels = np.arange(n)[:, None, None, None], np.arange(c)
    np.add.at(dx, (images, argmax, channels), dy)          # adds up where windows overlap
    return dx.reshape(x_shape)


def avg_pool_reference(x, pool_size, strides, pads):
    """Mean over the real cells of each window: (N, H, W, C) -> (N, Ho, Wo, C)."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = pool_size, strides
    ho, wo = output_hw(h, w, pool_size, strides, pads)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))             # zeros add nothing
    total = np.zeros((n, ho, wo, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            total += xp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :]
    return total / _real_counts(x.shape, pool_size, strides, pads, x.dtype)


def avg_pool_backward_reference(dy, x_shape, pool_size, strides, pads):
    """Gradient of average pooling: dy / count added to every real cell of the window."""
    n, h, w, c = x_shape
    (kh, kw), (sh, sw) = pool_size, strides
    (top, bottom), (left, right) = pads
    ho, wo = output_hw(h, w, pool_size, strides, pads)
    g = dy / _real_counts(x_shape, pool_size, strides, pads, dy.dtype)   # (N, Ho, Wo, C)
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :] += g
    return np.ascontiguousarray(dxp[:, top:top + h, left:left + w, :])   # padding dropped


def _real_counts(x_shape, pool_size, strides, pads, dtype):
    """Number of real (non-padded) cells in each window, shaped (Ho, Wo, 1) to broadcast."""
    cells = window_cells(x_shape[1], x_shape[2], pool_size, strides, pads)
    return (cells >= 0).sum(axis=2).astype(dtype)[:, :, None]


# ----------------------------------------------------------------------------------------
# numba kernels: one thread per image; each window visits only its real cells, C innermost
# ----------------------------------------------------------------------------------------

@njit(inline="always")          # inlined into each kernel: no call in the loop
def _real_span(out_index, stride, pad_before, kernel, size):
    """Real input rows (or columns) [lo, hi) under window `out_index`: the padding clipped off
    (what `window_cells` marks real, for one window)."""
    start = out_index * stride - pad_before
    return max(start, 0), min(start + kernel, size)


@njit(cache=True, parallel=True)
def _max_pool_kernel(x, y, argmax, kh, kw, sh, sw, top, left):
    n_img, h_in, w_in, c_n = x.shape
    ho_n, wo_n = y.shape[1], y.shape[2]
    for n in prange(n_img):
        for ho in range(ho_n):
            h_lo, h_hi = _real_span(ho, sh, top, kh, h_in)
            for wo in range(wo_n):
                w_lo, w_hi = _real_span(wo, sw, left, kw, w_in)
                for c in range(c_n):
                    y[n, ho, wo, c] = -np.inf
                    argmax[n, ho, wo, c] = h_lo * w_in + w_lo   # first real cell
                for h in range(h_lo, h_hi):                     # row-major window order
                    for w in range(w_lo, w_hi):
                        for c in range(c_n):
                            v = x[n, h, w, c]
                            if v > y[n, ho, wo, c]:             # strict: first max wins ties
                                y[n, ho, wo, c] = v
                                argmax[n, ho, wo, c] = h * w_in + w


@njit(cache=True, parallel=True)
def _max_pool_backward_kernel(dy, argmax, dx):
    # dx: (N, H*W, C) zeros; argmax holds h*W + w, the row of dx to add to.
    n_img, ho_n, wo_n, c_n = dy.shape
    for n in prange(n_img):
        for ho in range(ho_n):
            for wo in range(wo_n):
                for c in range(c_n):
                    dx[n, argmax[n, ho, wo, c], c] += dy[n, ho, wo, c]


@njit(cache=True, parallel=True)
def _avg_pool_kernel(x, y, kh, kw, sh, sw, top, left):
    n_img, h_in, w_in, c_n = x.shape
    ho_n, wo_n = y.shape[1], y.shape[2]
    for n in prange(n_img):
        for ho in range(ho_n):
            h_lo, h_hi = _real_span(ho, sh, top, kh, h_in)
            for wo in range(wo_n):
                w_lo, w_hi = _real_span(wo, sw, left, kw, w_in)
                for c in range(c_n):
                    y[n, ho, wo, c] = 0
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        for c in range(c_n):
                            y[n, ho, wo, c] += x[n, h, w, c]
                count = (h_hi - h_lo) * (w_hi - w_lo)           # real cells only
                for c in range(c_n):
                    y[n, ho, wo, c] /= count


@njit(cache=True, parallel=True)
def _avg_pool_backward_kernel(g, dx, kh, kw, sh, sw, top, left):
    # g = dy / count (N, Ho, Wo, C); dx (N, H, W, C) zeros, written only by the thread
    # that owns image n.
    n_img, h_in, w_in, c_n = dx.shape
    ho_n, wo_n = g.shape[1], g.shape[2]
    for n in prange(n_img):
        for ho in range(ho_n):
            h_lo, h_hi = _real_span(ho, sh, top, kh, h_in)
            for wo in range(wo_n):
                w_lo, w_hi = _real_span(wo, sw, left, kw, w_in)
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        for c in range(c_n):
                            dx[n, h, w, c] += g[n, ho, wo, c]


def max_pool_numba(x, pool_size, strides, pads):
    """numba version of `max_pool_reference` (same arguments, same result)."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    ho, wo = output_hw(h, w, pool_size, strides, pads)
    y = np.empty((n, ho, wo, c), dtype=x.dtype)
    argmax = np.empty((n, ho, wo, c), dtype=np.int64)
    with perf.kernel_threads(x.size):                 # one thread for a small batch
        _max_pool_kernel(x, y, argmax, *pool_size, *strides, pads[0][0], pads[1][0])
    return y, argmax


def max_pool_backward_numba(dy, argmax, x_shape, pool_size, strides, pads):
    """numba version of `max_pool_backward_reference` (same arguments, same result)."""
    n, h, w, c = x_shape
    dx = np.zeros((n, h * w, c), dtype=dy.dtype)
    with perf.kernel_threads(dx.size):
        _max_pool_backward_kernel(np.ascontiguousarray(dy), np.ascontiguousarray(argmax), dx)
    return dx.reshape(n, h, w, c)


def avg_pool_numba(x, pool_size, strides, pads):
    """numba version of `avg_pool_reference` (same arguments, same result)."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    ho, wo = output_hw(h, w, pool_size, strides, pads)
    y = np.empty((n, ho, wo, c), dtype=x.dtype)
    with perf.kernel_threads(x.size):
        _avg_pool_kernel(x, y, *pool_size, *strides, pads[0][0], pads[1][0])
    return y


def avg_pool_backward_numba(dy, x_shape, pool_size, strides, pads):
    """numba version of `avg_pool_backward_reference` (same arguments, same result)."""
    g = dy / _real_counts(x_shape, pool_size, strides, pads, dy.dtype)   # (N, Ho, Wo, C)
    dx = np.zeros(x_shape, dtype=dy.dtype)
    with perf.kernel_threads(dx.size):
        _avg_pool_backward_kernel(g, dx, *pool_size, *strides, pads[0][0], pads[1][0])
    return dx


# ----------------------------------------------------------------------------------------
# dispatch: the numba kernels (MINICNN_REFERENCE=1: the NumPy references)
# ----------------------------------------------------------------------------------------

def max_pool(x, pool_size, strides, pads):
    """Max pooling with -inf padding: (N, H, W, C) -> (y (N, Ho, Wo, C), argmax int64)."""
    return pick(max_pool_reference, max_pool_numba)(x, pool_size, strides, pads)


def max_pool_backward(dy, argmax, x_shape, pool_size, strides, pads):
    """dy (N, Ho, Wo, C) -> dx (N, H, W, C): each dy added to its window's argmax cell."""
    return pick(max_pool_backward_reference, max_pool_backward_numba)(dy, argmax, x_shape, pool_size, strides, pads)


def avg_pool(x, pool_size, strides, pads):
    """Average pooling over real cells: (N, H, W, C) -> (N, Ho, Wo, C)."""
    return pick(avg_pool_reference, avg_pool_numba)(x, pool_size, strides, pads)


def avg_pool_backward(dy, x_shape, pool_size, strides, pads):
    """dy (N, Ho, Wo, C) -> dx (N, H, W, C): dy / count spread over each window's real cells."""
    return pick(avg_pool_backward_reference, avg_pool_backward_numba)(dy, x_shape, pool_size, strides, pads)
