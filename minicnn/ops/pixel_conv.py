"""Direct convolution pixel by pixel, eight channels in and out: a pixel's eight filters in one
vector register (ops/lanes.py).

    z[n, ho, wo, :] = sum_{i, j, c} x[n, ho - top + i, wo - left + j, c] * K[i, j, c, :]
    dK[i, j, c, :]  = sum_{n, ho, wo} x[n, ho - top + i, wo - left + j, c] * dz[n, ho, wo, :]
    dx              = the same forward run on dz with the kernel turned round,
                      K'[i, j, f, c] = K[kh-1-i, kw-1-j, c, f], and padding (kh-1-top, kw-1-left)

Each line's `:` is eight numbers, one vector register. Shapes as ops/direct_conv.py: x (N, H,
W, 8) NHWC, K (kh, kw, 8, 8), stride 1, zero padding pads = ((top, bottom), (left, right));
float32 only (ops.direct_conv says which layers come here). ops.direct_conv computes the same
sums channel-major, one long loop per (tap, c, f) over a tile, reading the tile's run of x again
for each of the eight filters; here every number of x is loaded once per tap and multiplied into
all eight filters at once: the forward keeps eight pixels' outputs in eight registers, the
kernel gradient 24 of a kernel row's kw*8 (j, c) sums at a time (each eight filters wide, one
register) over an output row.
Each output row first copies the kh input rows it reads into a scratch with the padding's zeros
in place, so every pixel's window is a plain run of that scratch.
"""
import numpy as np

from .. import perf
from .buffers import reuse_or_new
from .jit import block_range, njit, prange
from .lanes import FAST, WIDTH, add_all_into, add_squares, broadcast_multiply_add, load, store, store_all, zeros

BLOCKS = perf.DIRECT_CONV_BLOCKS    # task blocks, as ops.direct_conv's (a constant to the kernels)


@njit(inline="always")
def _padded_rows(x, n, h0, left, rows):
    """rows[i, p*C + c] = x[n, h0 + i, p - left, c], zero where that lies outside x (the padding):
    slice copies, which numba turns into vector loops."""
    h_in, w_in, c_n = x.shape[1], x.shape[2], x.shape[3]
    width = rows.shape[1]
    start = min(max(0, left) * c_n, width)
    stop = max(start, min(width, (w_in + left) * c_n))
    for i in range(rows.shape[0]):
        row, h = rows[i], h0 + i
        if 0 <= h < h_in:
            row[:start] = 0
            row[start:stop] = x[n, h].reshape(-1)[start - left * c_n:stop - left * c_n]
            row[stop:] = 0
        else:
            row[:] = 0


# ----------------------------------------------------------------------------------------
# forward: eight pixels' eight filters a step, in eight registers
# ----------------------------------------------------------------------------------------

@njit(inline="always")
def _pixels(rows, taps, wo, kw, block):
    """z at columns wo, wo + 1, ... (one per register of `block`, zeros in): each tap's eight
    filters loaded once for all of them. rows: the padded input rows (_padded_rows)."""
    for i in range(rows.shape[0]):
        row = rows[i]
        for j in range(kw):
            for c in range(WIDTH):
                filters = load(taps, ((i * kw + j) * WIDTH + c) * WIDTH)
                block = broadcast_multiply_add(block, row, (wo + j) * WIDTH + c, WIDTH, filters)
    return block


@njit(inline="always")
def _put(block, z_row, wo, sums, squares):
    """Store a block of pixels (one register each) at column wo; the running per-filter sums
    and sums of squares with its numbers added."""
    store_all(block, z_row, wo * WIDTH, WIDTH)
    return add_squares(sums, squares, block)


@njit(fastmath=FAST)
def _output_row(rows, taps, z_row, kw, partial):
    """z_row (Wo*8 numbers) from its padded input rows: eight pixels at a time, then four, two,
    one; with `partial` (16 float32), the row's per-filter sums into partial[:8] and its sums of
    squares into partial[8:] (without, LLVM drops them)."""
    wo_n, wo = z_row.shape[0] // WIDTH, 0
    sums, squares = zeros(2)
    while wo + 8 <= wo_n:
        sums, squares = _put(_pixels(rows, taps, wo, kw, zeros(8)), z_row, wo, sums, squares)
        wo += 8
    if wo + 4 <= wo_n:
        sums, squares = _put(_pixels(rows, taps, wo, kw, zeros(4)), z_row, wo, sums, squares)
        wo += 4
    if wo + 2 <= wo_n:
        sums, squares = _put(_pixels(rows, taps, wo, kw, zeros(2)), z_row, wo, sums, squares)
        wo += 2
    if wo < wo_n:
        sums, squares = _put(_pixels(rows, taps, wo, kw, zeros(1)), z_row, wo, sums, squares)
    if partial is not None:
        store(sums, partial, 0)
        store(squares, partial, WIDTH)


@njit(cache=True, parallel=True, fastmath=FAST, error_model="numpy")
def _forward_kernel(x, taps, z, moments, partials, rows, top, left):
    # taps: K flattened (kh*kw*8*8,); z (N, Ho, Wo, 8) overwritten; rows (blocks, kh, (Wo + kw - 1)*8)
    # scratch; moments (blocks, 2, 8) float64 zeros and partials (blocks, 16) float32 scratch,
    # or both None (no statistics)
    n_img, ho_n = z.shape[0], z.shape[1]
    kw = rows.shape[2] // WIDTH - z.shape[2] + 1
    for b in prange(BLOCKS):
        lo, hi = block_range(b, BLOCKS, n_img * ho_n)
        for task in range(lo, hi):
            n, ho = task // ho_n, task % ho_n
            _padded_rows(x, n, ho - top, left, rows[b])
            if moments is None:
                _output_row(rows[b], taps, z[n, ho].reshape(-1), kw, None)
                continue
            _output_row(rows[b], taps, z[n, ho].reshape(-1), kw, partials[b])
            for f in range(WIDTH):
                moments[b, 0, f] += partials[b, f]
                moments[b, 1, f] += partials[b, WIDTH + f]


# ----------------------------------------------------------------------------------------
# kernel gradient: a kernel row's kw*8 x 8 sums, 24 registers at a time, over an output row
# ----------------------------------------------------------------------------------------

@njit(inline="always")
def _row_sums(x_row, g_row, first, block):
    """block[m] + sum over the row's pixels wo of x_row[wo*8 + first + m] * g_row[wo*8:wo*8 + 8]:
    a run of the window's (j, c) against the eight filters' gradients."""
    for wo in range(g_row.shape[0] // WIDTH):
        block = broadcast_multiply_add(block, x_row, wo * WIDTH + first, 1, load(g_row, wo * WIDTH))
    return block


@njit(fastmath=FAST)
def _gradient_rows(rows, g_row, sums):
    """sums[i, (j*8 + c)*8 + f] += sum over the row's pixels of rows[i][(wo + j)*8 + c] * g_row[wo*8 + f]:
    three taps' 24 registers at a time, then eight."""
    width = sums.shape[1] // WIDTH
    for i in range(rows.shape[0]):
        first = 0
        while first + 24 <= width:
            add_all_into(_row_sums(rows[i], g_row, first, zeros(24)), sums[i], first * WIDTH, WIDTH)
            first += 24
        while first < width:
            add_all_into(_row_sums(rows[i], g_row, first, zeros(8)), sums[i], first * WIDTH, WIDTH)
            first += 8


@njit(cache=True, parallel=True, fastmath=FAST, error_model="numpy")
def _kernel_gradient_kernel(x, dz, dks, rows, top, left):
    # dks (blocks, kh, kw*8*8) zeros: block b of images sums its share into dks[b]; rows as the forward's
    n_img, ho_n, blocks = dz.shape[0], dz.shape[1], dks.shape[0]
    for b in prange(blocks):
        lo, hi = block_range(b, blocks, n_img)
        for n in range(lo, hi):
            for ho in range(ho_n):
                _padded_rows(x, n, ho - top, left, rows[b])
                _gradient_rows(rows[b], dz[n, ho].reshape(-1), dks[b])


# ----------------------------------------------------------------------------------------
# the ops: ops.direct_conv calls them for the layers pixel_fits takes
# ----------------------------------------------------------------------------------------

def _rows(blocks, kernel_shape, wo):
    """Each block's padded input rows: (blocks, kh, (Wo + kw - 1)*8) float32."""
    return np.empty((blocks, kernel_shape[0], (wo + kernel_shape[1] - 1) * WIDTH), np.float32)


def _taps(kernel):
    """K (kh, kw, 8, 8) as the kernels read it: flat float32, the eight filters of each (i, j, c) in a row."""
    return np.ascontiguousarray(kernel, dtype=np.float32).reshape(-1)


def output_shape(x_shape, kernel_shape, pads):
    """(N, Ho, Wo, 8) at stride 1: Ho = H + top + bottom - kh + 1, Wo likewise."""
    (kh, kw), (n, h, w) = kernel_shape[:2], x_shape[:3]
    return n, h + sum(pads[0]) - kh + 1, w + sum(pads[1]) - kw + 1, WIDTH


def pixel_conv2d(x, kernel, pads, out=None, moments=None):
    """z = conv(x, kernel) (N, H, W, 8) -> (N, Ho, Wo, 8), into `out` (a float32 array of that
    shape) when given; `moments`, a (2, 8) float64 array when given, receives z's per-filter sums
    and sums of squares."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    shape = output_shape(x.shape, kernel.shape, pads)
    z = reuse_or_new(out, shape, np.float32, "pixel_conv2d: out")
    per_block = None if moments is None else np.zeros((BLOCKS, 2, WIDTH))
    partials = None if moments is None else np.empty((BLOCKS, 2 * WIDTH), np.float32)
    with perf.kernel_threads(z.size * kernel.shape[0] * kernel.shape[1]):
        _forward_kernel(x, _taps(kernel), z, per_block, partials, _rows(BLOCKS, kernel.shape, shape[2]),
                        pads[0][0], pads[1][0])
    if moments is not None:
        moments[...] = per_block.sum(axis=0)
    return z


def bind_pixel_conv2d(x_shape, kernel, pads):
    """pixel_conv2d for inputs of x_shape, its output and scratch made once: run(x) -> z, the
    same array every call (compiler/plan.py)."""
    taps, z = _taps(kernel), np.empty(output_shape(x_shape, kernel.shape, pads), np.float32)
    rows = _rows(BLOCKS, kernel.shape, z.shape[2])

    def run(x):
        _forward_kernel(np.ascontiguousarray(x, dtype=np.float32), taps, z, None, None, rows, pads[0][0], pads[1][0])
        return z
    return run


def turned_round(kernel):
    """K'[i, j, f, c] = K[kh-1-i, kw-1-j, c, f]: the kernel whose forward is the input gradient."""
    return np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))


def pixel_conv2d_backward(dz, x, kernel, pads, need_input_gradient=True):
    """(dx (N, H, W, 8) or None, dK (kh, kw, 8, 8)) for z = pixel_conv2d(x, kernel, pads): dK by
    the kernel-gradient kernel, dx by the forward on dz with the kernel turned round."""
    x, dz = np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(dz, dtype=np.float32)
    (kh, kw), ((top, bottom), (left, right)) = kernel.shape[:2], pads
    blocks = min(BLOCKS, x.shape[0])
    dks = np.zeros((blocks, kh, kw * WIDTH * WIDTH), np.float32)
    with perf.kernel_threads(dz.size * kh * kw):
        _kernel_gradient_kernel(x, dz, dks, _rows(blocks, kernel.shape, dz.shape[2]), top, left)
    dx = None
    if need_input_gradient:
        dx = pixel_conv2d(dz, turned_round(kernel), ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)),
                          out=np.empty_like(x))
    return dx, dks.sum(axis=0).reshape(kernel.shape)
