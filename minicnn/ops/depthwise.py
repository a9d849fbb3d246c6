"""Depthwise convolution: each input channel is convolved with its own M filters.

    y[n, ho, wo, c*M + m] = sum_{i, j} x_padded[n, ho*sh + i, wo*sw + j, c] * kernel[i, j, c, m]

Shapes: x (N, H, W, C), kernel (kh, kw, C, M) (Keras' depthwise_kernel, M =
depth_multiplier) -> y (N, Ho, Wo, C*M), output channel c*M + m as in TensorFlow, zero
padding; Ho = (H + top + bottom - kh) // sh + 1, same for Wo ("valid": (H - kh) // sh + 1,
"same": ceil(H / sh)). No channel mixing, so no im2col + matmul: kh*kw multiply-adds per
output, done as one broadcast per kernel offset (i, j).

Backward, with g = dy seen as (N, Ho, Wo, C, M):
    dkernel[i, j, c, m] = sum_{n, ho, wo} x_padded[n, ho*sh + i, wo*sw + j, c] * g[n, ho, wo, c, m]
    dx_padded[n, ho*sh + i, wo*sw + j, c] += sum_m kernel[i, j, c, m] * g[n, ho, wo, c, m]
(the second line is the adjoint of the forward, so it is a scatter-add, as in col2im);
with need_input_gradient=False (a layer reading the model's input, in training) dx is
skipped and returned as None.

numba by default (images shared among the threads, real cells only): the reference's broadcasts
write a full-size temporary per kernel offset (see benchmarks/kernels.py). At stride 1 with
one filter per channel (every separable layer) the numba kernels treat an image row as one
run of W*C numbers, so each tap is a single long loop (the "row kernels" below).
"""
import numpy as np

from .. import backend, perf
from .buffers import copied_into, reuse_or_new
from .im2col import output_hw
from .jit import njit, pick, prange

BLOCKS = 8    # blocks of images in the row kernels' backward, each with its own kernel-gradient sums


# ----------------------------------------------------------------------------------------
# naive loops: the definition, one multiply-add at a time
# ----------------------------------------------------------------------------------------

def depthwise_conv_naive(x, kernel, strides, pads):
    """y[n, ho, wo, c*M + m] = sum_ij x[n, ho*sh - top + i, wo*sw - left + j, c] * kernel[i, j, c, m]."""
    n_img, h_in, w_in, c_n = x.shape
    kh, kw, _, m_n = kernel.shape
    (sh, sw), (top, left) = strides, (pads[0][0], pads[1][0])
    ho_n, wo_n = output_hw(h_in, w_in, (kh, kw), strides, pads)
    y = np.zeros((n_img, ho_n, wo_n, c_n * m_n), dtype=np.result_type(x, kernel))
    for n, ho, wo, i, j in np.ndindex(n_img, ho_n, wo_n, kh, kw):
        h, w = ho * sh - top + i, wo * sw - left + j
        if 0 <= h < h_in and 0 <= w < w_in:                  # outside: zero padding
            for c, m in np.ndindex(c_n, m_n):
                y[n, ho, wo, c * m_n + m] += x[n, h, w, c] * kernel[i, j, c, m]
    return y


# ----------------------------------------------------------------------------------------
# NumPy reference: the offset loop, broadcasting over channels
# ----------------------------------------------------------------------------------------

def depthwise_conv_reference(x, kernel, strides, pads):
    """Per-channel convolution: x (N, H, W, C), kernel (kh, kw, C, M) -> (N, Ho, Wo, C*M)."""
    n, h, w, c = x.shape
    kh, kw, _, m = kernel.shape
    sh, sw = strides
    ho, wo = output_hw(h, w, (kh, kw), strides, pads)
    kernel = kernel.astype(x.dtype, copy=False)                # compute in x's dtype
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    y = np.zeros((n, ho, wo, c, m), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            win = xp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :]     # (N, Ho, Wo, C)
            y += win[..., None] * kernel[i, j]                      # (N, Ho, Wo, C, M)
    return y.reshape(n, ho, wo, c * m)                              # channel c*M + m


def depthwise_conv_backward_reference(dy, x, kernel, strides, pads, need_input_gradient=True):
    """Gradients of depthwise_conv: dy (N, Ho, Wo, C*M) -> (dx (N, H, W, C) or None, dkernel)."""
    n, h, w, c = x.shape
    kh, kw, _, m = kernel.shape
    sh, sw = strides
    (top, bottom), (left, right) = pads
    ho, wo = output_hw(h, w, (kh, kw), strides, pads)
    kernel = kernel.astype(x.dtype, copy=False)
    g = dy.reshape(n, ho, wo, c, m)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    dxp = np.zeros_like(xp) if need_input_gradient else None
    dkernel = np.empty((kh, kw, c, m), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            win = xp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :]     # (N, Ho, Wo, C)
            dkernel[i, j] = np.einsum("nhwc,nhwcm->cm", win, g)
            if need_input_gradient:
                dxp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :] += np.einsum("nhwcm,cm->nhwc", g, kernel[i, j])
    if not need_input_gradient:
        return None, dkernel
    return np.ascontiguousarray(dxp[:, top:top + h, left:left + w, :]), dkernel


# ----------------------------------------------------------------------------------------
# numba kernels: images shared among the threads, channels innermost, real cells only (no padded copy)
# ----------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _depthwise_kernel(x, kernel, y, m_n, sh, sw, top, left):
    # x (N, H, W, C), kernel (kh, kw, C*M), y (N, Ho, Wo, C*M) zeros: the kernel is seen
    # with (c, m) flattened, so that kernel[i, j, o] multiplies into y[..., o], o = c*M + m.
    n_img, h_in, w_in, c_n = x.shape
    kh, kw = kernel.shape[0], kernel.shape[1]
    ho_n, wo_n = y.shape[1], y.shape[2]
    for n in prange(n_img):
        for ho in range(ho_n):
            for i in range(kh):
                h = ho * sh - top + i
                if h < 0 or h >= h_in:
                    continue                              # a padded row adds zero
                for wo in range(wo_n):
                    for j in range(kw):
                        w = wo * sw - left + j
                        if w < 0 or w >= w_in:
                            continue
                        # depth_multiplier 1 (the usual case): a plain loop over channels,
                        # which LLVM vectorizes; the nested (c, m) loop below does not.
                        if m_n == 1:
                            for c in range(c_n):
                                y[n, ho, wo, c] += x[n, h, w, c] * kernel[i, j, c]
                        else:
                            for c in range(c_n):
                                for m in range(m_n):
                                    o = c * m_n + m
                                    y[n, ho, wo, o] += x[n, h, w, c] * kernel[i, j, o]


@njit(cache=True, parallel=True)
def _depthwise_backward_kernel(dy, x, kernel, dx, dk_per_image, m_n, sh, sw, top, left):
    # dy (N, Ho, Wo, C*M); kernel (kh, kw, C*M); dx (N, H, W, C) zeros, or None for no dx
    # (numba compiles each case apart, `dx is not None` settled at compile time);
    # dk_per_image (N, kh, kw, C*M) zeros. dkernel sums over the batch, so each image gets
    # its own partial sum (no races); the caller adds the N partial sums.
    n_img, h_in, w_in, c_n = x.shape
    kh, kw = kernel.shape[0], kernel.shape[1]
    ho_n, wo_n = dy.shape[1], dy.shape[2]
    for n in prange(n_img):
        for ho in range(ho_n):
            for i in range(kh):
                h = ho * sh - top + i
                if h < 0 or h >= h_in:
                    continue
                for wo in range(wo_n):
                    for j in range(kw):
                        w = wo * sw - left + j
                        if w < 0 or w >= w_in:
                            continue
                        if m_n == 1:
                            for c in range(c_n):
                                g = dy[n, ho, wo, c]
                                dk_per_image[n, i, j, c] += x[n, h, w, c] * g
                                if dx is not None:
                                    dx[n, h, w, c] += kernel[i, j, c] * g
                        else:
                            for c in range(c_n):
                                for m in range(m_n):
                                    o = c * m_n + m
                                    g = dy[n, ho, wo, o]
                                    dk_per_image[n, i, j, o] += x[n, h, w, c] * g
                                    if dx is not None:
                                        dx[n, h, w, c] += kernel[i, j, o] * g


# Stride 1, one filter per channel (every separable layer): one output row is a single run
# of Wo*C numbers, and tap (i, j) reads the input row's run shifted by (j - left)*C. With the
# kernel's taps repeated along the row (kernel_rows[i, j, wo*C + c] = kernel[i, j, c]), each
# tap is one long vectorized loop over the row instead of Wo loops over C channels.

@njit(inline="always")
def _row_span(left, j, w_in, wo_n, c_n):
    """[lo, hi): the numbers of an output row whose tap j reads inside the input row
    (w = wo - left + j), and the shift from an output number to the input number it reads."""
    lo = max(0, left - j)
    hi = max(lo, min(wo_n, w_in + left - j))
    return lo * c_n, hi * c_n, (j - left) * c_n


@njit(inline="always")
def depthwise_row(x, n, ho, kernel_rows, c_n, top, left, out):
    """out (Wo*C,) = output row ho of image n: each tap's kernel_rows[i, j] times the run of the
    input row it reads. x (N, H, W*C), kernel_rows (kh, kw, Wo*C); a padded row or column adds zero."""
    h_in, w_in, wo_n = x.shape[1], x.shape[2] // c_n, out.shape[0] // c_n
    for t in range(out.shape[0]):
        out[t] = 0
    for i in range(kernel_rows.shape[0]):
        h = ho - top + i
        if h < 0 or h >= h_in:
            continue
        for j in range(kernel_rows.shape[1]):
            lo, hi, shift = _row_span(left, j, w_in, wo_n, c_n)
            k, src, dst = kernel_rows[i, j, lo:hi], x[n, h, lo + shift:hi + shift], out[lo:hi]
            for t in range(hi - lo):                  # slices: no index below 0, so no wraparound test
                dst[t] += k[t] * src[t]


@njit(inline="always")
def depthwise_row_backward(x, n, ho, kernel_rows, c_n, top, left, g, sums, dx):
    """The adjoint of depthwise_row for the row's gradient g (Wo*C,): sums (kh, kw, Wo*C) += each
    tap's input run * g; dx (N, H, W*C) runs += kernel_rows[i, j] * g (dx None: skipped)."""
    h_in, w_in, wo_n = x.shape[1], x.shape[2] // c_n, g.shape[0] // c_n
    for i in range(kernel_rows.shape[0]):
        h = ho - top + i
        if h < 0 or h >= h_in:
            continue
        for j in range(kernel_rows.shape[1]):
            lo, hi, shift = _row_span(left, j, w_in, wo_n, c_n)
            grad, src, total = g[lo:hi], x[n, h, lo + shift:hi + shift], sums[i, j, lo:hi]
            for t in range(hi - lo):
                total[t] += src[t] * grad[t]
            if dx is not None:
                k, dst = kernel_rows[i, j, lo:hi], dx[n, h, lo + shift:hi + shift]
                for t in range(hi - lo):
                    dst[t] += k[t] * grad[t]


@njit(cache=True, parallel=True)
def _depthwise_rows_kernel(x, kernel_rows, y, c_n, top, left):
    # x (N, H, W*C) and y (N, Ho, Wo*C): image rows as runs; y overwritten
    for n in prange(x.shape[0]):
        for ho in range(y.shape[1]):
            depthwise_row(x, n, ho, kernel_rows, c_n, top, left, y[n, ho])


@njit(cache=True, parallel=True)
def _depthwise_rows_backward_kernel(dy, x, kernel_rows, dx, dk_rows, c_n, top, left):
    # dy (N, Ho, Wo*C), x and dx (N, H, W*C); dx of any values, each image zeroed by the thread
    # that sums into it, or None (compiled apart); dk_rows (B, kh, kw, Wo*C) zeros: block b of
    # images sums into its own row (no races)
    n_img, blocks = x.shape[0], dk_rows.shape[0]
    for b in prange(blocks):
        for n in range(b * n_img // blocks, (b + 1) * n_img // blocks):
            if dx is not None:
                dx[n] = 0
            for ho in range(dy.shape[1]):
                depthwise_row_backward(x, n, ho, kernel_rows, c_n, top, left, dy[n, ho], dk_rows[b], dx)


def rows_pay(kernel, strides):
    """Whether the row kernels apply: stride 1 and depth_multiplier 1."""
    return tuple(strides) == (1, 1) and kernel.shape[3] == 1


def kernel_rows(kernel, wo, dtype):
    """(kh, kw, Wo*C): each tap's C numbers repeated along an output row of Wo pixels."""
    kh, kw, c, _ = kernel.shape
    repeated = np.repeat(kernel.reshape(kh, kw, 1, c), wo, axis=2)         # (kh, kw, Wo, C), contiguous
    return repeated.reshape(kh, kw, wo * c).astype(dtype, copy=False)


def runs(a):
    """(N, H, W, C) -> (N, H, W*C), each image row one run of numbers (a view of a contiguous a)."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def depthwise_conv_numba(x, kernel, strides, pads, out=None):
    """numba version of `depthwise_conv_reference` (same arguments, same result); y written
    into `out` when given."""
    x = np.ascontiguousarray(x)
    kernel = np.ascontiguousarray(kernel, dtype=x.dtype)
    n, h, w, c = x.shape
    kh, kw, _, m = kernel.shape
    ho, wo = output_hw(h, w, (kh, kw), strides, pads)
    y = reuse_or_new(out, (n, ho, wo, c * m), x.dtype, "depthwise_conv: out")
    with perf.kernel_threads(x.size * kh * kw):       # one thread for a small batch
        if rows_pay(kernel, strides):
            _depthwise_rows_kernel(runs(x), kernel_rows(kernel, wo, x.dtype), runs(y), c, pads[0][0], pads[1][0])
            return y
        y.fill(0)                                     # the kernel adds each tap into y
        _depthwise_kernel(x, kernel.reshape(kh, kw, c * m), y, m, *strides, pads[0][0], pads[1][0])
    return y


def bind_depthwise_conv(x_shape, kernel, strides, pads):
    """depthwise_conv_numba for inputs of x_shape (in the kernel's dtype), y and the row kernel's
    taps made once: run(x) -> y, the same array every call (compiler/plan.py)."""
    kernel = np.ascontiguousarray(kernel)
    n, h, w, c = x_shape
    kh, kw, _, m = kernel.shape
    ho, wo = output_hw(h, w, (kh, kw), strides, pads)
    y = np.empty((n, ho, wo, c * m), kernel.dtype)
    if not rows_pay(kernel, strides):
        return lambda x: depthwise_conv_numba(x, kernel, strides, pads, out=y)
    taps = kernel_rows(kernel, wo, kernel.dtype)

    def run(x):
        _depthwise_rows_kernel(runs(np.ascontiguousarray(x)), taps, runs(y), c, pads[0][0], pads[1][0])
        return y
    return run


def depthwise_conv_backward_numba(dy, x, kernel, strides, pads, need_input_gradient=True):
    """numba version of `depthwise_conv_backward_reference` (same arguments, same result)."""
    x = np.ascontiguousarray(x)
    kernel = np.ascontiguousarray(kernel, dtype=x.dtype)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    n = x.shape[0]
    kh, kw, c, m = kernel.shape
    if rows_pay(kernel, strides):
        return _rows_backward(dy, x, kernel, pads, need_input_gradient)
    dx = np.zeros_like(x) if need_input_gradient else None
    dk_per_image = np.zeros((n, kh, kw, c * m), dtype=x.dtype)
    with perf.kernel_threads(x.size * kh * kw):
        _depthwise_backward_kernel(dy, x, kernel.reshape(kh, kw, c * m), dx, dk_per_image, m,
                                   *strides, pads[0][0], pads[1][0])
    return dx, dk_per_image.sum(axis=0).reshape(kh, kw, c, m)


def _rows_backward(dy, x, kernel, pads, need_input_gradient):
    """(dx or None, dkernel (kh, kw, C, 1)) by the row kernels; dx starts empty: the kernel zeroes
    each image just before summing into it."""
    dx = np.empty_like(x) if need_input_gradient else None
    n, _, wo, c = dy.shape
    kh, kw = kernel.shape[:2]
    dk_rows = np.zeros((min(n, BLOCKS), kh, kw, wo * c), dtype=x.dtype)
    with perf.kernel_threads(x.size * kh * kw):
        _depthwise_rows_backward_kernel(runs(dy), runs(x), kernel_rows(kernel, wo, x.dtype),
                                        None if dx is None else runs(dx), dk_rows, c, pads[0][0], pads[1][0])
    return dx, dk_rows.sum(axis=0).reshape(kh, kw, wo, c).sum(axis=2).reshape(kh, kw, c, 1)


# ----------------------------------------------------------------------------------------
# dispatch: the numba kernels (MINICNN_REFERENCE=1: the NumPy references)
# ----------------------------------------------------------------------------------------

def depthwise_conv(x, kernel, strides, pads, out=None):
    """Depthwise convolution, zero padding: (N, H, W, C), (kh, kw, C, M) -> (N, Ho, Wo, C*M),
    written into `out` when given."""
    if not backend.use_reference():
        return depthwise_conv_numba(x, kernel, strides, pads, out)
    return copied_into(depthwise_conv_reference(x, kernel, strides, pads), out, "depthwise_conv: out")


def depthwise_conv_backward(dy, x, kernel, strides, pads, need_input_gradient=True):
    """dy (N, Ho, Wo, C*M) -> (dx (N, H, W, C), dkernel (kh, kw, C, M)); dx is None when
    need_input_gradient is False."""
    return pick(depthwise_conv_backward_reference, depthwise_conv_backward_numba)(dy, x, kernel, strides, pads,
                                                                                  need_input_gradient)
