"""im2col and col2im: turn a convolution into one matrix product, and back.

im2col copies every kh x kw window of the zero-padded input into a row of a matrix:

    cols[n, ho, wo, i, j, c] = x_padded[n, ho*sh + i, wo*sw + j, c]

so that, with the HWIO kernel K (kh, kw, C, F), the convolution is a single matmul:

    y = cols.reshape(N*Ho*Wo, kh*kw*C) @ K.reshape(kh*kw*C, F)      # (N*Ho*Wo, F)

Shapes: x (N, H, W, C) -> cols (N, Ho, Wo, kh, kw, C), with
    Ho = (H + top + bottom - kh) // sh + 1,   Wo = (W + left + right - kw) // sw + 1
where pads = ((top, bottom), (left, right)) comes from `padding.conv_geometry`. NHWC makes
the innermost axis C on both sides, so no transposes are needed anywhere.

col2im goes the other way: it adds every entry of cols back onto the input pixel it was
copied from (windows overlap, so a pixel collects several entries; entries that came
from padding are dropped). It is the adjoint (transpose) of im2col:

    <im2col(x), g> = <x, col2im(g)>        for every x and every g of the shape of cols

im2col is linear, y = A x for a 0/1 matrix A, so the gradient of the loss with respect to
x is A^T (dL/dcols), and A^T is exactly col2im. That is why conv backward computes
dcols = dy @ K.reshape(-1, F).T and then dx = col2im(dcols).

The numba kernels copy one kernel row (kw*C contiguous numbers) at a time and are the
default; NumPy's offset loop stays for windows whose rows hold perf.IM2COL_NUMPY_MAX_ROW
numbers or fewer (a 2x2 window on one channel) and for im2col of 1x1 windows, one strided
copy for NumPy too: see benchmarks/kernels.py. col2im of a 1x1 window (a strided residual
convolution's dx) writes each pixel once, its window's number or 0.
"""
import numpy as np

from .. import backend, perf
from .buffers import reuse_or_new
from .jit import njit, pick, prange


def output_hw(height, width, kernel_size, strides, pads):
    """Output height and width of a window op: (H + top + bottom - kh) // sh + 1, same for W."""
    (kh, kw), (sh, sw) = kernel_size, strides
    (top, bottom), (left, right) = pads
    return (height + top + bottom - kh) // sh + 1, (width + left + right - kw) // sw + 1


# ----------------------------------------------------------------------------------------
# naive loops: the definition, one window cell at a time
# ----------------------------------------------------------------------------------------

def im2col_naive(x, kernel_size, strides, pads):
    """cols[n, ho, wo, i, j] = x[n, ho*sh - top + i, wo*sw - left + j], zeros outside x."""
    n_img, h_in, w_in, c = x.shape
    (kh, kw), (sh, sw), (top, left) = kernel_size, strides, (pads[0][0], pads[1][0])
    ho_n, wo_n = output_hw(h_in, w_in, kernel_size, strides, pads)
    cols = np.zeros((n_img, ho_n, wo_n, kh, kw, c), dtype=x.dtype)
    for n, ho, wo, i, j in np.ndindex(n_img, ho_n, wo_n, kh, kw):
        h, w = ho * sh - top + i, wo * sw - left + j
        if 0 <= h < h_in and 0 <= w < w_in:                  # outside: zero padding
            cols[n, ho, wo, i, j] = x[n, h, w]
    return cols


def col2im_naive(cols, x_shape, kernel_size, strides, pads):
    """dx[n, h, w] = the sum of every cols entry im2col copied from pixel (h, w)."""
    n_img, h_in, w_in, c = x_shape
    (kh, kw), (sh, sw), (top, left) = kernel_size, strides, (pads[0][0], pads[1][0])
    ho_n, wo_n = output_hw(h_in, w_in, kernel_size, strides, pads)
    cols = cols.reshape(n_img, ho_n, wo_n, kh, kw, c)
    dx = np.zeros(x_shape, dtype=cols.dtype)
    for n, ho, wo, i, j in np.ndindex(n_img, ho_n, wo_n, kh, kw):
        h, w = ho * sh - top + i, wo * sw - left + j
        if 0 <= h < h_in and 0 <= w < w_in:                  # entries from padding are dropped
            dx[n, h, w] += cols[n, ho, wo, i, j]
    return dx


# ----------------------------------------------------------------------------------------
# NumPy reference: the DLFS offset loop, in NHWC
# ----------------------------------------------------------------------------------------

def im2col_reference(x, kernel_size, strides, pads):
    """Windows of x as rows of a matrix: (N, H, W, C) -> (N, Ho, Wo, kh, kw, C)."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = kernel_size, strides
    (top, bottom), (left, right) = pads
    ho, wo = output_hw(h, w, kernel_size, strides, pads)
    # zeros around the image (no copy when there are none: a 1x1 stride-2 shortcut's)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))) if top or bottom or left or right else x
    cols = np.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
    # One strided slice per kernel offset (i, j): pixel (i, j) of every window at once.
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :]
    return cols


def col2im_reference(cols, x_shape, kernel_size, strides, pads):
    """Adjoint of im2col: add each window entry back onto its pixel -> (N, H, W, C)."""
    n, h, w, c = x_shape
    (kh, kw), (sh, sw) = kernel_size, strides
    (top, bottom), (left, right) = pads
    ho, wo = output_hw(h, w, kernel_size, strides, pads)
    cols = cols.reshape(n, ho, wo, kh, kw, c)
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=cols.dtype)
    # The same slices as im2col, with += instead of =: overlapping windows add up.
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :] += cols[:, :, :, i, j, :]
    return np.ascontiguousarray(dxp[:, top:top + h, left:left + w, :])   # drop the padding


# ----------------------------------------------------------------------------------------
# numba kernels: one thread per image, C innermost so every copy is a contiguous run
# ----------------------------------------------------------------------------------------
# Flattened, one image of x is H*W*C numbers and a kernel row of one window,
# x[n, h, w0:w0+kw, :], is a contiguous run of kw*C of them; so is cols[n, ho, wo, i, :, :].
# im2col is therefore, per window and kernel row i, one copy of up to kw*C contiguous
# numbers, plus zeros where the window hangs over the border: no padded copy of x is
# made. cols is written in memory order (a stream), while the image being read (at most a
# few hundred KB) stays in cache. col2im is the same loop with the copy turned into +=.
#
# Indices are cast to unsigned (np.uint64) in the copy loops: numba then skips its
# negative-index wraparound check, which otherwise keeps LLVM from vectorizing the copy.

@njit(cache=True, parallel=True)
def _im2col_kernel(x, cols, kh, kw, c, sh, sw, top, left, h_in, w_in, ho_n, wo_n):
    # x: (N, H*W*C), cols: (N, Ho*Wo*kh*kw*C), both flat per image
    row = kw * c                                     # one kernel row of a window
    for n in prange(x.shape[0]):
        xn, cn = x[n], cols[n]
        p = 0                                        # cn[p] is cols[n, ho, wo, i, 0, 0]
        for ho in range(ho_n):
            for wo in range(wo_n):
                w0 = wo * sw - left                  # input column under kernel column 0
                a = min(max(0, -w0), kw) * c         # row entries [a, b) are real pixels,
                b = max(min(kw, w_in - w0) * c, a)   # the rest is padding
                for i in range(kh):
                    h = ho * sh - top + i
                    if h < 0 or h >= h_in:           # the whole kernel row is padding
                        a_i, b_i = row, row
                    else:
                        a_i, b_i = a, b
                    src = (h * w_in + w0) * c        # xn[src + k] is x[n, h, w0 + k//C, k%C]
                    for k in range(a_i):
                        cn[np.uint64(p + k)] = 0
                    for k in range(a_i, b_i):
                        cn[np.uint64(p + k)] = xn[np.uint64(src + k)]
                    for k in range(b_i, row):
                        cn[np.uint64(p + k)] = 0
                    p += row


@njit(cache=True, parallel=True)
def _col2im_kernel(cols, dx, kh, kw, c, sh, sw, top, left, h_in, w_in, ho_n, wo_n):
    # cols: (N, Ho*Wo*kh*kw*C), dx: (N, H*W*C) zeros. Image n is written only by the
    # thread that owns n, so the += never race.
    row = kw * c
    for n in prange(dx.shape[0]):
        cn, dxn = cols[n], dx[n]
        p = 0
        for ho in range(ho_n):
            for wo in range(wo_n):
                w0 = wo * sw - left
                a = min(max(0, -w0), kw) * c
                b = max(min(kw, w_in - w0) * c, a)
                for i in range(kh):
                    h = ho * sh - top + i
                    if 0 <= h < h_in:                # padding rows have no pixel to add to
                        src = (h * w_in + w0) * c
                        for k in range(a, b):
                            dxn[np.uint64(src + k)] += cn[np.uint64(p + k)]
                    p += row


@njit(cache=True, parallel=True)
def _col2im_1x1_kernel(cols, dx, sh, sw, top, left):
    # cols (N, Ho, Wo, C), dx (N, H, W, C) of any values. A 1x1 window reads one pixel and no
    # two windows read the same one: each pixel of dx is its window's number, or 0, written once.
    n_img, h_in, w_in, c_n = dx.shape
    ho_n, wo_n = cols.shape[1], cols.shape[2]
    for n in prange(n_img):
        for h in range(h_in):
            ho, ph = (h + top) // sh, (h + top) % sh
            for w in range(w_in):
                wo, pw = (w + left) // sw, (w + left) % sw
                read = ph == 0 and pw == 0 and ho < ho_n and wo < wo_n
                for c in range(c_n):
                    dx[n, h, w, c] = cols[n, ho, wo, c] if read else 0


def _output(shape, dtype, out):
    return reuse_or_new(out, shape, dtype, "im2col: out")


def im2col_numba(x, kernel_size, strides, pads, out=None):
    """numba version of `im2col_reference` (same arguments, same result), written into `out`
    (C-contiguous, any shape of that size) when given."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = kernel_size, strides
    ho, wo = output_hw(h, w, kernel_size, strides, pads)
    cols = _output((n, ho, wo, kh, kw, c), x.dtype, out)
    with perf.kernel_threads(cols.size):              # one thread for a small batch
        _im2col_kernel(x.reshape(n, -1), cols.reshape(n, -1), kh, kw, c, sh, sw,
                       pads[0][0], pads[1][0], h, w, ho, wo)
    return cols


def col2im_numba(cols, x_shape, kernel_size, strides, pads):
    """numba version of `col2im_reference` (same arguments, same result)."""
    n, h, w, c = x_shape
    (kh, kw), (sh, sw) = kernel_size, strides
    ho, wo = output_hw(h, w, kernel_size, strides, pads)
    if (kh, kw) == (1, 1):
        dx = np.empty((n, h, w, c), dtype=cols.dtype)
        with perf.kernel_threads(dx.size):
            _col2im_1x1_kernel(np.ascontiguousarray(cols).reshape(n, ho, wo, c), dx, sh, sw, pads[0][0], pads[1][0])
        return dx
    cols = np.ascontiguousarray(cols).reshape(n, -1)              # (N, Ho*Wo*kh*kw*C)
    dx = np.zeros((n, h, w, c), dtype=cols.dtype)
    with perf.kernel_threads(cols.size):
        _col2im_kernel(cols, dx.reshape(n, -1), kh, kw, c, sh, sw,
                       pads[0][0], pads[1][0], h, w, ho, wo)
    return dx


# ----------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------

def numba_pays(kernel_size, channels):
    """numba for windows whose rows hold more than perf.IM2COL_NUMPY_MAX_ROW numbers, except
    1x1 windows (one strided copy for NumPy too): see the top."""
    return kernel_size[1] * channels > perf.IM2COL_NUMPY_MAX_ROW and tuple(kernel_size) != (1, 1)


def im2col(x, kernel_size, strides, pads, out=None):
    """Windows of x as rows: (N, H, W, C) -> (N, Ho, Wo, kh, kw, C), zero padding. `out`: a
    buffer the numba kernel writes into (C-contiguous, any shape of that size); the
    reference makes its own array, so use the result, not `out`."""
    if backend.use_reference() or not numba_pays(kernel_size, x.shape[3]):
        return im2col_reference(x, kernel_size, strides, pads)
    return im2col_numba(x, kernel_size, strides, pads, out)


def bind_im2col(x_shape, kernel_size, strides, pads, dtype):
    """im2col for inputs of x_shape: run(x) -> the windows, the numba kernel's written into one
    array made once (the same every call), NumPy's its own (compiler/plan.py)."""
    if not numba_pays(kernel_size, x_shape[3]):
        return lambda x: im2col_reference(x, kernel_size, strides, pads)
    n, h, w, c = x_shape
    (kh, kw), (sh, sw) = kernel_size, strides
    ho, wo = output_hw(h, w, kernel_size, strides, pads)
    cols = np.empty((n, ho, wo, kh, kw, c), dtype)

    def run(x):
        _im2col_kernel(np.ascontiguousarray(x).reshape(n, -1), cols.reshape(n, -1), kh, kw, c, sh, sw,
                       pads[0][0], pads[1][0], h, w, ho, wo)
        return cols
    return run


def col2im(cols, x_shape, kernel_size, strides, pads):
    """Adjoint of im2col: cols with N*Ho*Wo*kh*kw*C entries (any shape) -> (N, H, W, C). numba
    where it pays, and for 1x1 windows (one pass writing dx, where NumPy zeroes it, then adds)."""
    fast = numba_pays(kernel_size, x_shape[3]) or tuple(kernel_size) == (1, 1)
    return pick(col2im_reference, col2im_numba, fast)(
        cols, x_shape, kernel_size, strides, pads)
