"""Separable convolution in one pass: depthwise kxk, then pointwise 1x1, tile by tile.

    d[n, h, w, c] = sum_{i, j} x_padded[n, h + i, w + j, c] * depthwise_kernel[i, j, c, 0]
    y[n, h, w, f] = sum_c d[n, h, w, c] * pointwise_kernel[0, 0, c, f]

Shapes: x (N, H, W, C), depthwise_kernel (kh, kw, C, 1), pointwise_kernel (1, 1, C, F) ->
y (N, Ho, Wo, F); stride 1, depth_multiplier 1, zero padding pads = ((top, bottom),
(left, right)): "valid" Ho = H - kh + 1, "same" Ho = H. No bias and no activation: the
caller adds them (SeparableConv2D's `d @ Kp + b`, then its activation).

statistics=True also returns, per output channel, sum_r y[r, f] and sum_r y[r, f]**2 over
the N*Ho*Wo rows r, summed in float64: a BatchNormalization that follows gets its batch mean
and variance without a pass of its own (a bias b added to y shifts the mean by b and leaves
the variance as it is).

Backward, with g = dy seen as rows r = (n, h, w):
    dpointwise[c, f] = sum_r d[r, c] * g[r, f]
    dd[r, c]         = sum_f g[r, f] * pointwise[c, f]
and ops/depthwise.py's rule takes dd to ddepthwise and dx (dx skipped, None, with
need_input_gradient=False).

The kernels work on tiles of whole output rows of one image, about ops.pointwise.TILE_PIXELS
pixels: the tile of d (and of dd) is made in a small buffer that stays in cache and is used at
once, so d is never written to memory as a whole; each of its rows is made by ops.depthwise's
row kernel (an image row as one run of W*C numbers, one long loop per tap), or, for float32 3x3
kernels on a multiple of eight channels, by ops.separable_lanes' (eight channels a vector
register) while jit.lane_kernels_run(). The backward
recomputes its tile of d from x (kh*kw multiply-adds per number), or reads the d a forward
given depthwise_out= kept: a write and a read of the whole of d instead
(benchmarks/kernels_separable.py measures both). The numba kernels need scipy (numba's
np.dot calls its BLAS); without it the references run.
separable_pays says where the fused op beats the textbook (ops.depthwise, then one matrix
product over the whole batch through OpenBLAS).
"""
import numpy as np

from .. import perf
from .batchnorm import channel_sums, widening
from .buffers import reuse_or_new
from .depthwise import (depthwise_conv_backward_reference, depthwise_conv_reference, depthwise_row,
                        depthwise_row_backward, kernel_rows, runs)
from .im2col import output_hw
from .jit import lane_kernels_run, njit, numba_dot_runs, pick, prange
from .pointwise import backward_products, forward_products, tile_rows

BLOCKS = 8           # the backward's blocks of images, each with its own kernel-gradient partial sums


def _check(x_shape, depthwise_kernel, pointwise_kernel):
    """Shapes the fused op accepts; a clear error otherwise. Returns (kh, kw, C, F)."""
    kh, kw, c, m = depthwise_kernel.shape
    if m != 1:
        raise ValueError(f"separable_conv2d: depth_multiplier must be 1, received depthwise_kernel.shape="
                         f"{depthwise_kernel.shape}")
    if len(x_shape) != 4 or x_shape[3] != c or pointwise_kernel.shape[:3] != (1, 1, c):
        raise ValueError(f"separable_conv2d: expected x (N, H, W, {c}) and pointwise_kernel (1, 1, {c}, F), "
                         f"received x.shape={tuple(x_shape)}, pointwise_kernel.shape={pointwise_kernel.shape}")
    return kh, kw, c, pointwise_kernel.shape[3]


# ----------------------------------------------------------------------------------------
# naive loops: the definition, one multiply-add at a time
# ----------------------------------------------------------------------------------------

def _depthwise_at(x, depthwise_kernel, n, ho, wo, c, top, left):
    """d[n, ho, wo, c]: the depthwise sum at one output pixel and channel (padding adds zero)."""
    kh, kw = depthwise_kernel.shape[:2]
    total = 0.0
    for i, j in np.ndindex(kh, kw):
        h, w = ho - top + i, wo - left + j
        if 0 <= h < x.shape[1] and 0 <= w < x.shape[2]:
            total += x[n, h, w, c] * depthwise_kernel[i, j, c, 0]
    return total


def separable_conv2d_naive(x, depthwise_kernel, pointwise_kernel, pads):
    """y[n, ho, wo, f] = sum_c (sum_ij x[n, ho - top + i, wo - left + j, c] * Kd[i, j, c]) * Kp[c, f]."""
    kh, kw, c_n, f_n = _check(x.shape, depthwise_kernel, pointwise_kernel)
    ho_n, wo_n = output_hw(x.shape[1], x.shape[2], (kh, kw), (1, 1), pads)
    y = np.zeros((x.shape[0], ho_n, wo_n, f_n), dtype=np.result_type(x, depthwise_kernel, pointwise_kernel))
    for n, ho, wo, c in np.ndindex(x.shape[0], ho_n, wo_n, c_n):
        d = _depthwise_at(x, depthwise_kernel, n, ho, wo, c, pads[0][0], pads[1][0])
        for f in range(f_n):
            y[n, ho, wo, f] += d * pointwise_kernel[0, 0, c, f]
    return y


def separable_conv2d_backward_naive(dy, x, depthwise_kernel, pointwise_kernel, pads, need_input_gradient=True):
    """(dx, ddepthwise, dpointwise) from the rules at the top, one output pixel and channel at a time."""
    kh, kw, c_n, f_n = _check(x.shape, depthwise_kernel, pointwise_kernel)
    top, left = pads[0][0], pads[1][0]
    dx, dkd, dkp = np.zeros(x.shape), np.zeros(depthwise_kernel.shape), np.zeros(pointwise_kernel.shape)
    for n, ho, wo, c in np.ndindex(*dy.shape[:3], c_n):
        d = _depthwise_at(x, depthwise_kernel, n, ho, wo, c, top, left)
        dd = 0.0
        for f in range(f_n):
            dkp[0, 0, c, f] += d * dy[n, ho, wo, f]
            dd += dy[n, ho, wo, f] * pointwise_kernel[0, 0, c, f]
        for i, j in np.ndindex(kh, kw):
            h, w = ho - top + i, wo - left + j
            if 0 <= h < x.shape[1] and 0 <= w < x.shape[2]:
                dkd[i, j, c, 0] += x[n, h, w, c] * dd
                dx[n, h, w, c] += depthwise_kernel[i, j, c, 0] * dd
    return (dx if need_input_gradient else None), dkd, dkp


# ----------------------------------------------------------------------------------------
# NumPy reference: the textbook composition, depthwise convolution then a matrix product
# ----------------------------------------------------------------------------------------

def _statistics(y2):
    """Per-column float64 sum and sum of squares of y2 (M, F)."""
    y64 = y2.astype(np.float64)
    return y64.sum(axis=0), np.einsum("rf,rf->f", y64, y64)


def separable_conv2d_reference(x, depthwise_kernel, pointwise_kernel, pads, statistics=False):
    """y = depthwise(x) @ Kp: (N, H, W, C) -> (N, Ho, Wo, F); with statistics, (y, sums, squares)."""
    _, _, c, f = _check(x.shape, depthwise_kernel, pointwise_kernel)
    d = depthwise_conv_reference(x, depthwise_kernel, (1, 1), pads)               # (N, Ho, Wo, C)
    y2 = d.reshape(-1, c) @ pointwise_kernel.reshape(c, f).astype(x.dtype)      # (N*Ho*Wo, F)
    y = y2.reshape(d.shape[:3] + (f,))
    return (y,) + _statistics(y2) if statistics else y


def separable_conv2d_backward_reference(dy, x, depthwise_kernel, pointwise_kernel, pads, need_input_gradient=True):
    """Gradients of separable_conv2d: dy (N, Ho, Wo, F) -> (dx or None, ddepthwise, dpointwise)."""
    _, _, c, f = _check(x.shape, depthwise_kernel, pointwise_kernel)
    d = depthwise_conv_reference(x, depthwise_kernel, (1, 1), pads)               # (N, Ho, Wo, C)
    dy2 = dy.reshape(-1, f).astype(x.dtype, copy=False)                         # (N*Ho*Wo, F)
    pointwise = pointwise_kernel.reshape(c, f).astype(x.dtype)                  # (C, F)
    dpointwise = (d.reshape(-1, c).T @ dy2).reshape(pointwise_kernel.shape)      # (1, 1, C, F)
    dd = (dy2 @ pointwise.T).reshape(d.shape)                                   # (N, Ho, Wo, C)
    dx, ddepthwise = depthwise_conv_backward_reference(dd, x, depthwise_kernel, (1, 1), pads, need_input_gradient)
    return dx, ddepthwise, dpointwise


# ----------------------------------------------------------------------------------------
# numba kernels: one tile of whole output rows at a time, each row one run of Wo*C numbers
# ----------------------------------------------------------------------------------------
# The row loops (ops.depthwise.depthwise_row and its backward) are inlined into the parallel
# loop's body (inline="always"), where LLVM vectorizes them. numba checks its cache of these
# kernels against this file alone: after editing those row loops, touch this file to recompile.
# The tiles' pointwise products and statistics are ops.pointwise's.


@njit(cache=True, parallel=True)
def _forward_kernel(x, kd_rows, kp, top, left, tile_rows, y, kept, sums, squares):
    # x (N, H, W*C) image rows as runs, kd_rows (kh, kw, Wo*C) (ops.depthwise's row kernels),
    # kp (C, F) -> y (N, Ho, Wo, F), one task per tile of tile_rows output rows. kept (N, Ho,
    # Wo*C) gets d as well, or None (d stays in the tile); sums, squares (tasks, k*F) float64
    # zeros, the tile's rows summed k pixels at a time (ops.batchnorm.widening), or None for no
    # statistics.
    ho_n = y.shape[1]
    c_n, run = kp.shape[0], kd_rows.shape[2]
    tiles = (ho_n + tile_rows - 1) // tile_rows
    for task in prange(x.shape[0] * tiles):
        n, ho0 = task // tiles, task % tiles * tile_rows
        rows = min(tile_rows, ho_n - ho0)
        d = np.empty((rows, run), dtype=x.dtype) if kept is None else kept[n, ho0:ho0 + rows]
        for r in range(rows):
            depthwise_row(x, n, ho0 + r, kd_rows, c_n, top, left, d[r])
        forward_products(d, kp, y, n, ho0, rows, sums, squares, task)


@njit(cache=True, parallel=True)
def _backward_kernel(dy, x, kd_rows, kpt, top, left, tile_rows, kept, dx, dkd_rows, dkp):
    # dy (N, Ho, Wo, F), x as in _forward_kernel, kpt = kp.T (F, C); kept: the forward's d
    # (N, Ho, Wo*C), or None to recompute it tile by tile; dx (N, H, W*C) of any values, each
    # image zeroed by the thread that sums into it, or None;
    # dkd_rows (B, kh, kw, Wo*C) and dkp (B, C, F) zeros: block b of images sums its share into
    # its own row (no races).
    n_img, c_n, run = x.shape[0], kpt.shape[1], kd_rows.shape[2]
    ho_n, wo_n, f_n = dy.shape[1], dy.shape[2], dy.shape[3]
    blocks = dkp.shape[0]
    for b in prange(blocks):
        scratch = np.empty((tile_rows, run), dtype=x.dtype)
        dd = np.empty((tile_rows, run), dtype=x.dtype)
        for n in range(b * n_img // blocks, (b + 1) * n_img // blocks):
            if dx is not None:
                dx[n] = 0
            for ho0 in range(0, ho_n, tile_rows):
                rows = min(tile_rows, ho_n - ho0)
                g = dy[n, ho0:ho0 + rows].reshape(rows * wo_n, f_n)
                d = scratch[:rows] if kept is None else kept[n, ho0:ho0 + rows]
                if kept is None:
                    for r in range(rows):
                        depthwise_row(x, n, ho0 + r, kd_rows, c_n, top, left, d[r])
                backward_products(d.reshape(rows * wo_n, c_n), g, kpt, dkp[b], dd[:rows].reshape(rows * wo_n, c_n))
                for r in range(rows):
                    depthwise_row_backward(x, n, ho0 + r, kd_rows, c_n, top, left, dd[r], dkd_rows[b], dx)


def _buffer(out, shape, dtype, what):
    return reuse_or_new(out, shape, dtype, f"separable_conv2d: {what}")


def _pointwise(pointwise_kernel, c, dtype):
    """kp (C, F) in x's dtype, as the kernels read it."""
    return np.ascontiguousarray(pointwise_kernel.reshape(c, -1), dtype=dtype)


def _lanes_kernels(dtype, depthwise_kernel_shape):
    """ops.separable_lanes where it takes the layer (float32, 3x3, a multiple of eight channels:
    eight channels a vector register) while jit.lane_kernels_run(), else None. Imported at first
    use: it defines a numba type, and MINICNN_REFERENCE=1 runs without numba."""
    if not lane_kernels_run():
        return None
    from . import separable_lanes
    return separable_lanes if separable_lanes.takes(dtype, depthwise_kernel_shape) else None


def _forward_runner(depthwise_kernel, wo, dtype):
    """run(x_runs, kp, top, left, tile_rows, y, kept, sums, squares): the forward kernel that takes
    the layer, its depthwise taps made once (ops.separable_lanes' flat taps, else
    ops.depthwise.kernel_rows, the taps repeated along an output row)."""
    lane_kernels = _lanes_kernels(dtype, depthwise_kernel.shape)
    if lane_kernels is not None:
        taps = lane_kernels.flat_taps(depthwise_kernel)
        return lambda x, *rest: lane_kernels.forward_kernel(x, taps, *rest)
    rows = kernel_rows(depthwise_kernel, wo, dtype)
    return lambda x, *rest: _forward_kernel(x, rows, *rest)


def _depthwise_gradient(dy, x, depthwise_kernel, kpt, pads, kept, dx, dkp):
    """Run the backward kernel that takes the layer (dkp, dx filled); returns ddepthwise (kh, kw, C)."""
    kh, kw, c, _ = depthwise_kernel.shape
    blocks, wo, top, left = dkp.shape[0], dy.shape[2], pads[0][0], pads[1][0]
    rows = tile_rows(wo, c, kpt.shape[0])
    lane_kernels = _lanes_kernels(x.dtype, depthwise_kernel.shape)
    if lane_kernels is not None:
        sums = np.zeros((blocks, kh * kw * c), x.dtype)
        taps = lane_kernels.flat_taps(depthwise_kernel)
        lane_kernels.backward_kernel(dy, x, taps, kpt, top, left, rows, kept, dx, sums, dkp)
        return sums.sum(axis=0).reshape(kh, kw, c)
    sums = np.zeros((blocks, kh, kw, wo * c), x.dtype)
    _backward_kernel(dy, x, kernel_rows(depthwise_kernel, wo, x.dtype), kpt, top, left, rows, kept, dx, sums, dkp)
    return sums.sum(axis=0).reshape(kh, kw, wo, c).sum(axis=2)          # the row sums, over Wo


def separable_conv2d_numba(x, depthwise_kernel, pointwise_kernel, pads, statistics=False, out=None,
                           depthwise_out=None):
    """numba version of `separable_conv2d_reference` (same arguments, same result); out: y's
    buffer; depthwise_out: a (N, Ho, Wo, C) buffer that also gets d, for a backward that reads it."""
    kh, kw, c, f = _check(x.shape, depthwise_kernel, pointwise_kernel)
    x = np.ascontiguousarray(x)
    ho, wo = output_hw(x.shape[1], x.shape[2], (kh, kw), (1, 1), pads)
    run = _forward_runner(depthwise_kernel, wo, x.dtype)
    y = _buffer(out, (x.shape[0], ho, wo, f), x.dtype, "out")
    kept = None if depthwise_out is None else _buffer(depthwise_out, (x.shape[0], ho, wo, c), x.dtype, "depthwise_out")
    rows = tile_rows(wo, c, f)
    tasks = x.shape[0] * -(-ho // rows)
    k = widening(wo, f)          # k pixels a row of the sums' view (k divides Wo, so every tile's pixels)
    sums, squares = (np.zeros((tasks, k * f)), np.zeros((tasks, k * f))) if statistics else (None, None)
    with perf.kernel_threads(x.size * kh * kw):       # one thread for a small image
        run(runs(x), _pointwise(pointwise_kernel, c, x.dtype), pads[0][0], pads[1][0], rows, y,
            None if kept is None else runs(kept), sums, squares)
    return (y, channel_sums(sums, k), channel_sums(squares, k)) if statistics else y


def bind_separable_conv2d(x_shape, depthwise_kernel, pointwise_kernel, pads):
    """separable_conv2d_numba for inputs of x_shape (in the kernels' dtype), y and the kernels as
    the kernel reads them made once: run(x) -> y, the same array every call (compiler/plan.py)."""
    kh, kw, c, f = _check(x_shape, depthwise_kernel, pointwise_kernel)
    ho, wo = output_hw(x_shape[1], x_shape[2], (kh, kw), (1, 1), pads)
    dtype = pointwise_kernel.dtype
    forward, kp = _forward_runner(depthwise_kernel, wo, dtype), _pointwise(pointwise_kernel, c, dtype)
    y = np.empty((x_shape[0], ho, wo, f), pointwise_kernel.dtype)
    rows = tile_rows(wo, c, f)

    def run(x):
        forward(runs(np.ascontiguousarray(x)), kp, pads[0][0], pads[1][0], rows, y, None, None, None)
        return y
    return run


def separable_conv2d_backward_numba(dy, x, depthwise_kernel, pointwise_kernel, pads, need_input_gradient=True,
                                    out=None, depthwise=None):
    """numba version of `separable_conv2d_backward_reference` (same arguments, same result); out:
    dx's buffer; depthwise: the forward's d (its depthwise_out), else recomputed tile by tile."""
    kh, kw, c, f = _check(x.shape, depthwise_kernel, pointwise_kernel)
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    n, ho, wo = dy.shape[:3]
    kpt = np.ascontiguousarray(_pointwise(pointwise_kernel, c, x.dtype).T)             # (F, C)
    kept = None if depthwise is None else runs(_buffer(depthwise, (n, ho, wo, c), x.dtype, "depthwise"))
    dx = _buffer(out, x.shape, x.dtype, "out") if need_input_gradient else None    # zeroed by the kernel
    dkp = np.zeros((min(n, BLOCKS), c, f), x.dtype)
    with perf.kernel_threads(x.size * kh * kw):
        dkd = _depthwise_gradient(dy, runs(x), depthwise_kernel, kpt, pads, kept, None if dx is None else runs(dx), dkp)
    return dx, dkd.reshape(depthwise_kernel.shape), dkp.sum(axis=0).reshape(pointwise_kernel.shape)


# ----------------------------------------------------------------------------------------
# dispatch: the numba kernels (MINICNN_REFERENCE=1, or no scipy for numba's np.dot: the
# NumPy references); separable_pays says where a compiler should use them instead of the
# textbook layer's ops
# ----------------------------------------------------------------------------------------

def separable_conv2d(x, depthwise_kernel, pointwise_kernel, pads, statistics=False, out=None, depthwise_out=None):
    """Depthwise (stride 1) then pointwise convolution, no bias: (N, H, W, C) -> (N, Ho, Wo, F);
    with statistics=True, (y, sums, squares) per output channel in float64. out: y's buffer;
    depthwise_out: a (N, Ho, Wo, C) buffer that also gets d, for the backward to read."""
    if pick(separable_conv2d_reference, separable_conv2d_numba, numba_dot_runs()) is separable_conv2d_numba:
        return separable_conv2d_numba(x, depthwise_kernel, pointwise_kernel, pads, statistics, out, depthwise_out)
    result = separable_conv2d_reference(x, depthwise_kernel, pointwise_kernel, pads, statistics)
    y = result[0] if statistics else result
    if depthwise_out is not None:
        d = depthwise_conv_reference(x, depthwise_kernel, (1, 1), pads)
        _buffer(depthwise_out, d.shape, x.dtype, "depthwise_out")[...] = d
    if out is not None:
        y = _buffer(out, y.shape, x.dtype, "out")
        y[...] = result[0] if statistics else result
    return (y,) + result[1:] if statistics else y


def separable_conv2d_backward(dy, x, depthwise_kernel, pointwise_kernel, pads, need_input_gradient=True, out=None,
                              depthwise=None):
    """dy (N, Ho, Wo, F) -> (dx (N, H, W, C) or None, ddepthwise (kh, kw, C, 1), dpointwise
    (1, 1, C, F)); dx is None when need_input_gradient is False. out: dx's buffer; depthwise:
    the d the forward kept in depthwise_out (else recomputed; the reference always recomputes)."""
    backward = pick(separable_conv2d_backward_reference, separable_conv2d_backward_numba, numba_dot_runs())
    if backward is separable_conv2d_backward_numba:
        return backward(dy, x, depthwise_kernel, pointwise_kernel, pads, need_input_gradient, out, depthwise)
    dx, dkd, dkp = backward(dy, x, depthwise_kernel, pointwise_kernel, pads, need_input_gradient)
    if out is not None and dx is not None:
        out = _buffer(out, x.shape, x.dtype, "out")
        out[...] = dx
        dx = out
    return dx, dkd, dkp



def separable_pays(batch, height, width, channels, filters, training=False):
    """Whether a compiler should run this SeparableConv2D (stride 1, depth_multiplier 1) as the
    fused op rather than the textbook ops: from perf.SEPARABLE_MIN_CHANNELS input channels for
    inference (forward only), from perf.SEPARABLE_TRAINING_MIN_CHANNELS in training (forward
    keeping d, backward reading it), where the tiles' products are wide enough for OpenBLAS
    (benchmarks/kernels_separable.py)."""
    least = perf.SEPARABLE_TRAINING_MIN_CHANNELS if training else perf.SEPARABLE_MIN_CHANNELS
    return numba_dot_runs() and channels >= least
