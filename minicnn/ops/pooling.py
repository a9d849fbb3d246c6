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

Speed, measured with benchmarks/kernels.py (batch 64, float32, numba on 2 threads, 2-core VM
shared with other jobs, so +-30%, and see the OpenMP note in im2col.py; "x" = reference
time / numba time); numba is the default for all four:
  max_pool           11-25x faster, e.g. 48x48x64 2x2: 80 ms -> 4-5 ms
  max_pool_backward  5-27x faster,  e.g. 48x48x64 2x2: 44 ms -> 4-10 ms
  avg_pool           1.8-5.7x faster, e.g. 48x48x64 2x2: 11-18 ms -> 3-5 ms
  avg_pool_backward  1.5-5.5x faster, e.g. 48x48x64 2x2: 14-17 ms -> 5-11 ms
(the reference builds a padded copy and kh*kw full-size temporaries; the kernels visit
each window once and touch only its real cells).
"""
import numpy as np
from .jit import njit, prange

from .. import backend
from .im2col import output_hw


def _window_starts(size, kernel, stride, pad_before, out):
    """First input row (or column) of each window, and how many of its cells are real."""
    start = np.arange(out) * stride - pad_before               # may be negative (padding)
    real = np.minimum(start + kernel, size) - np.maximum(start, 0)
    return start, real


# ----------------------------------------------------------------------------------------
# NumPy reference: the offset loop (one strided slice per window offset (i, j))
# ----------------------------------------------------------------------------------------

def max_pool_reference(x, pool_size, strides, pads):
    """Max over each window, -inf padding: (N, H, W, C) -> (y (N, Ho, Wo, C), argmax)."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = pool_size, strides
    (top, _), (left, _) = pads
    ho, wo = output_hw(h, w, pool_size, strides, pads)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    row0, _ = _window_starts(h, kh, sh, top, ho)
    col0, _ = _window_starts(w, kw, sw, left, wo)
    y = np.full((n, ho, wo, c), -np.inf, dtype=x.dtype)
    # Start argmax at the first real cell of each window, so that a window of -inf values
    # still points at a real pixel, never at the padding.
    first = np.maximum(row0, 0)[:, None] * w + np.maximum(col0, 0)[None, :]      # (Ho, Wo)
    argmax = np.broadcast_to(first[None, :, :, None], (n, ho, wo, c)).astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            win = xp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :]     # cell (i, j) of every window
            better = win > y                # strict: on a tie the earlier cell keeps the max
            y = np.where(better, win, y)
            pos = (row0 + i)[:, None] * w + (col0 + j)[None, :]    # (Ho, Wo), h*W + w
            argmax = np.where(better, pos[None, :, :, None], argmax)
    return y, argmax


def max_pool_backward_reference(dy, argmax, x_shape, pool_size, strides, pads):
    """Gradient of max pooling: each dy goes to its window's argmax cell -> (N, H, W, C)."""
    n, h, w, c = x_shape
    (kh, kw), (sh, sw) = pool_size, strides
    (top, bottom), (left, right) = pads
    ho, wo = output_hw(h, w, pool_size, strides, pads)
    row0, _ = _window_starts(h, kh, sh, top, ho)
    col0, _ = _window_starts(w, kw, sw, left, wo)
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, cols = row0 + i, col0 + j
            pos = rows[:, None] * w + cols[None, :]                 # (Ho, Wo), h*W + w
            # A padded cell never wins; mark it -1 so that its h*W + w cannot alias a real one.
            inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
            pos = np.where(inside, pos, -1)
            won = argmax == pos[None, :, :, None]                   # (N, Ho, Wo, C)
            dxp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :] += np.where(won, dy, 0)
    return np.ascontiguousarray(dxp[:, top:top + h, left:left + w, :])


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
    _, h, w, _ = x_shape
    ho, wo = output_hw(h, w, pool_size, strides, pads)
    _, rows = _window_starts(h, pool_size[0], strides[0], pads[0][0], ho)
    _, cols = _window_starts(w, pool_size[1], strides[1], pads[1][0], wo)
    return (rows[:, None] * cols[None, :]).astype(dtype)[:, :, None]


# ----------------------------------------------------------------------------------------
# numba kernels: one thread per image; each window visits only its real cells, C innermost
# ----------------------------------------------------------------------------------------

@njit(inline="always")          # inlined into each kernel: no call in the loop
def _real_span(out_index, stride, pad_before, kernel, size):
    """Real input rows (or columns) [lo, hi) under window `out_index`: the padding clipped off
    (the one-window form of `_window_starts`: hi - lo is its `real`)."""
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
    with backend.kernel_threads(x.size):                 # one thread for a small batch
        _max_pool_kernel(x, y, argmax, *pool_size, *strides, pads[0][0], pads[1][0])
    return y, argmax


def max_pool_backward_numba(dy, argmax, x_shape, pool_size, strides, pads):
    """numba version of `max_pool_backward_reference` (same arguments, same result)."""
    n, h, w, c = x_shape
    dx = np.zeros((n, h * w, c), dtype=dy.dtype)
    with backend.kernel_threads(dx.size):
        _max_pool_backward_kernel(np.ascontiguousarray(dy), np.ascontiguousarray(argmax), dx)
    return dx.reshape(n, h, w, c)


def avg_pool_numba(x, pool_size, strides, pads):
    """numba version of `avg_pool_reference` (same arguments, same result)."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    ho, wo = output_hw(h, w, pool_size, strides, pads)
    y = np.empty((n, ho, wo, c), dtype=x.dtype)
    with backend.kernel_threads(x.size):
        _avg_pool_kernel(x, y, *pool_size, *strides, pads[0][0], pads[1][0])
    return y


def avg_pool_backward_numba(dy, x_shape, pool_size, strides, pads):
    """numba version of `avg_pool_backward_reference` (same arguments, same result)."""
    g = dy / _real_counts(x_shape, pool_size, strides, pads, dy.dtype)   # (N, Ho, Wo, C)
    dx = np.zeros(x_shape, dtype=dy.dtype)
    with backend.kernel_threads(dx.size):
        _avg_pool_backward_kernel(g, dx, *pool_size, *strides, pads[0][0], pads[1][0])
    return dx


# ----------------------------------------------------------------------------------------
# dispatch: MINICNN_REFERENCE=1 runs the NumPy reference, otherwise the measured winner
# ----------------------------------------------------------------------------------------

def max_pool(x, pool_size, strides, pads):
    """Max pooling with -inf padding: (N, H, W, C) -> (y (N, Ho, Wo, C), argmax int64)."""
    if backend.use_reference():
        return max_pool_reference(x, pool_size, strides, pads)
    return max_pool_numba(x, pool_size, strides, pads)


def max_pool_backward(dy, argmax, x_shape, pool_size, strides, pads):
    """dy (N, Ho, Wo, C) -> dx (N, H, W, C): each dy added to its window's argmax cell."""
    if backend.use_reference():
        return max_pool_backward_reference(dy, argmax, x_shape, pool_size, strides, pads)
    return max_pool_backward_numba(dy, argmax, x_shape, pool_size, strides, pads)


def avg_pool(x, pool_size, strides, pads):
    """Average pooling over real cells: (N, H, W, C) -> (N, Ho, Wo, C)."""
    if backend.use_reference():
        return avg_pool_reference(x, pool_size, strides, pads)
    return avg_pool_numba(x, pool_size, strides, pads)


def avg_pool_backward(dy, x_shape, pool_size, strides, pads):
    """dy (N, Ho, Wo, C) -> dx (N, H, W, C): dy / count spread over each window's real cells."""
    if backend.use_reference():
        return avg_pool_backward_reference(dy, x_shape, pool_size, strides, pads)
    return avg_pool_backward_numba(dy, x_shape, pool_size, strides, pads)
