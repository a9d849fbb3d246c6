"""SeparableConv2D's fused op with eight channels in one vector register (ops/lanes.py): float32,
a 3x3 depthwise kernel, a multiple of eight channels.

The same sums as ops/separable.py, tile by tile, with the same pointwise products
(ops.pointwise); only the depthwise half changes. ops.depthwise's row kernels run one long
loop per tap over a row, reading and writing the row's numbers once for every tap; here eight
channels of a pixel are one register, and the taps' kernel numbers stay in registers:

    d[ho, wo, c]           = sum_{i, j} x[ho - top + i, wo - left + j, c] * K[i, j, c]
    ddepthwise[i, j, c]   += sum_wo x[ho - top + i, wo - left + j, c] * dd[ho, wo, c]
    dx[ho - top + i, w, c] += sum_j K[i, j, c] * dd[ho, w + left - j, c]

The first is nine multiply-adds and one store a pixel; the second nine sums kept in registers
along the row; the third reads and writes each dx number once a kernel row.

Shapes as ops/separable.py: x (N, H, W*C) image rows as runs, K flattened to (9*C,) in (i, j,
c) order. Input rows above or below the image read a row of zeros (and the gradient meant for
them goes to a spare row); pixels whose window crosses the left or right edge take a slower
path, one at a time, that skips the taps outside.
"""
import numpy as np

from .jit import njit, prange
from .lanes import (FAST, WIDTH, add, add_all_into, dot_loads, load, load_all, multiply_add, multiply_add_loads, store,
                    zero, zeros)
from .pointwise import backward_products, forward_products



@njit(inline="always")
def _row(a, n, h, spare):
    """Row h of image n of a (N, H, W*C), or `spare` for a row outside the image."""
    return a[n, h] if 0 <= h < a.shape[1] else spare


@njit(inline="always")
def _three_rows(a, n, h0, spare):
    """Rows h0, h0 + 1, h0 + 2 of image n of a (N, H, W*C), as _row gives them."""
    return _row(a, n, h0, spare), _row(a, n, h0 + 1, spare), _row(a, n, h0 + 2, spare)


@njit(inline="always")
def _inside(w_in, wo_n, left):
    """The output columns [lo, hi) whose three taps all read inside the input row."""
    lo = min(max(left, 0), wo_n)
    return lo, max(lo, min(wo_n, w_in - 2 + left))


@njit(inline="always")
def _taps(kd, c_n, g):
    """K[i, :, g:g + 8] for i = 0, 1, 2: three blocks of three Lanes."""
    return load_all(kd, g, c_n, 3), load_all(kd, 3 * c_n + g, c_n, 3), load_all(kd, 6 * c_n + g, c_n, 3)


# ----------------------------------------------------------------------------------------
# forward: d, one output row
# ----------------------------------------------------------------------------------------

@njit(inline="always")
def _edge_pixel(kd, rows, wo, g, c_n, left):
    """d[ho, wo, g:g + 8] for a pixel whose window crosses the row's edge: its taps inside alone."""
    w_in, total = rows[0].shape[0] // c_n, zero()
    for i in range(3):
        for j in range(3):
            w = wo - left + j
            if 0 <= w < w_in:
                total = multiply_add(load(kd, (i * 3 + j) * c_n + g), load(rows[i], w * c_n + g), total)
    return total


@njit(fastmath=FAST)
def depthwise_row(x, n, ho, kd, c_n, top, left, out, zero_row):
    """out (Wo*C,) = output row ho of image n, eight channels at a time (ops.depthwise's sums)."""
    rows = _three_rows(x, n, ho - top, zero_row)
    wo_n = out.shape[0] // c_n
    lo, hi = _inside(x.shape[2] // c_n, wo_n, left)
    for g in range(0, c_n, WIDTH):
        upper, middle, lower = _taps(kd, c_n, g)
        for wo in range(lo, hi):
            p = (wo - left) * c_n + g
            # two chains of multiply-adds (rows 0 and 2; row 1) whose latencies overlap
            outer_rows = dot_loads(lower, rows[2], p, c_n, dot_loads(upper, rows[0], p, c_n, zero()))
            store(add(outer_rows, dot_loads(middle, rows[1], p, c_n, zero())), out, wo * c_n + g)
        for wo in range(wo_n):
            if wo < lo or wo >= hi:
                store(_edge_pixel(kd, rows, wo, g, c_n, left), out, wo * c_n + g)


# ----------------------------------------------------------------------------------------
# backward: the depthwise kernel's gradient and dx, from one row of dd
# ----------------------------------------------------------------------------------------

@njit(inline="always")
def _edge_sums(x_row, gradient, wo, g, c_n, left, sums, base):
    """sums[base + j*C + g : +8] += x_row at pixel wo's tap j * gradient, for its taps inside the row."""
    for j in range(3):
        w, at = wo - left + j, base + j * c_n + g
        if 0 <= w < x_row.shape[0] // c_n:
            store(multiply_add(load(x_row, w * c_n + g), gradient, load(sums, at)), sums, at)


@njit(inline="always")
def _kernel_sums(rows, dd_row, g, c_n, left, sums):
    """sums[(i*3 + j)*C + g : +8] += sum_wo rows[i] at (wo - left + j) * dd_row at wo: nine sums
    in registers along the row, the edge pixels added one at a time."""
    wo_n = dd_row.shape[0] // c_n
    lo, hi = _inside(rows[0].shape[0] // c_n, wo_n, left)
    upper, middle, lower = zeros(3), zeros(3), zeros(3)
    for wo in range(lo, hi):
        gradient, p = load(dd_row, wo * c_n + g), (wo - left) * c_n + g
        upper = multiply_add_loads(upper, rows[0], p, c_n, gradient)
        middle = multiply_add_loads(middle, rows[1], p, c_n, gradient)
        lower = multiply_add_loads(lower, rows[2], p, c_n, gradient)
    add_all_into(upper, sums, g, c_n)
    add_all_into(middle, sums, 3 * c_n + g, c_n)
    add_all_into(lower, sums, 6 * c_n + g, c_n)
    for wo in range(wo_n):
        if wo < lo or wo >= hi:
            for i in range(3):
                _edge_sums(rows[i], load(dd_row, wo * c_n + g), wo, g, c_n, left, sums, i * 3 * c_n)


@njit(inline="always")
def _edge_gradient(kd, dd_row, w, g, c_n, left, dx_row, base):
    """dx_row[w*C + g : +8] += sum_j K[i, j] * dd_row at (w + left - j), the j inside dd's row."""
    total = load(dx_row, w * c_n + g)
    for j in range(3):
        q = w + left - j
        if 0 <= q < dd_row.shape[0] // c_n:
            total = multiply_add(load(kd, base + j * c_n + g), load(dd_row, q * c_n + g), total)
    store(total, dx_row, w * c_n + g)


@njit(inline="always")
def _input_gradient(kd, dd_row, g, c_n, left, dx_rows):
    """dx_rows[i][w*C + g : +8] += sum_j K[i, j, g:g + 8] * dd_row at (w + left - j): one load and
    store of each dx number a kernel row, the edge columns one at a time."""
    w_in, wo_n = dx_rows[0].shape[0] // c_n, dd_row.shape[0] // c_n
    taps = _taps(kd, c_n, g)
    lo = min(max(0, 2 - left), w_in)
    hi = max(lo, min(w_in, wo_n - left))
    for w in range(lo, hi):
        q, p = (w + left) * c_n + g, w * c_n + g
        store(dot_loads(taps[0], dd_row, q, -c_n, load(dx_rows[0], p)), dx_rows[0], p)
        store(dot_loads(taps[1], dd_row, q, -c_n, load(dx_rows[1], p)), dx_rows[1], p)
        store(dot_loads(taps[2], dd_row, q, -c_n, load(dx_rows[2], p)), dx_rows[2], p)
    for w in range(w_in):
        if w < lo or w >= hi:
            for i in range(3):
                _edge_gradient(kd, dd_row, w, g, c_n, left, dx_rows[i], i * 3 * c_n)


@njit(fastmath=FAST)
def depthwise_row_backward(x, n, ho, kd, c_n, top, left, dd_row, sums, dx, zero_row, spare_row):
    """The adjoint of depthwise_row for the row's gradient dd_row (Wo*C,): sums (9*C,) += the
    kernel's gradient; dx (N, H, W*C) += the input's (dx None: skipped)."""
    rows = _three_rows(x, n, ho - top, zero_row)
    for g in range(0, c_n, WIDTH):
        _kernel_sums(rows, dd_row, g, c_n, left, sums)
        if dx is not None:
            _input_gradient(kd, dd_row, g, c_n, left, _three_rows(dx, n, ho - top, spare_row))


# ----------------------------------------------------------------------------------------
# the kernels: ops/separable.py's tiles, with the rows above
# ----------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def forward_kernel(x, kd, kp, top, left, tile_rows, y, kept, sums, squares):
    # ops.separable._forward_kernel's arguments, but kd: the depthwise kernel flattened (9*C,)
    ho_n, wo_n = y.shape[1], y.shape[2]
    c_n = kp.shape[0]
    tiles = (ho_n + tile_rows - 1) // tile_rows
    zero_row = np.zeros(x.shape[2], dtype=x.dtype)
    for task in prange(x.shape[0] * tiles):
        n, ho0 = task // tiles, task % tiles * tile_rows
        rows = min(tile_rows, ho_n - ho0)
        d = np.empty((rows, wo_n * c_n), dtype=x.dtype) if kept is None else kept[n, ho0:ho0 + rows]
        for r in range(rows):
            depthwise_row(x, n, ho0 + r, kd, c_n, top, left, d[r], zero_row)
        forward_products(d, kp, y, n, ho0, rows, sums, squares, task)


@njit(cache=True, parallel=True)
def backward_kernel(dy, x, kd, kpt, top, left, tile_rows, kept, dx, dkd, dkp):
    # ops.separable._backward_kernel's arguments, but kd flattened (9*C,) and dkd (B, 9*C) zeros
    n_img, c_n = x.shape[0], kpt.shape[1]
    ho_n, wo_n, f_n = dy.shape[1], dy.shape[2], dy.shape[3]
    blocks = dkp.shape[0]
    for b in prange(blocks):
        scratch, dd = np.empty((tile_rows, wo_n * c_n), x.dtype), np.empty((tile_rows, wo_n * c_n), x.dtype)
        zero_row, spare_row = np.zeros(x.shape[2], x.dtype), np.empty(x.shape[2], x.dtype)
        for n in range(b * n_img // blocks, (b + 1) * n_img // blocks):
            if dx is not None:
                dx[n] = 0
            for ho0 in range(0, ho_n, tile_rows):
                rows = min(tile_rows, ho_n - ho0)
                d = scratch[:rows] if kept is None else kept[n, ho0:ho0 + rows]
                if kept is None:
                    for r in range(rows):
                        depthwise_row(x, n, ho0 + r, kd, c_n, top, left, d[r], zero_row)
                backward_products(d.reshape(rows * wo_n, c_n), dy[n, ho0:ho0 + rows].reshape(rows * wo_n, f_n),
                                  kpt, dkp[b], dd[:rows].reshape(rows * wo_n, c_n))
                for r in range(rows):
                    depthwise_row_backward(x, n, ho0 + r, kd, c_n, top, left, dd[r], dkd[b], dx, zero_row, spare_row)


def takes(dtype, depthwise_kernel_shape):
    """Whether these kernels take the layer: float32, a 3x3 depthwise kernel, a multiple of eight channels."""
    kh, kw, c = depthwise_kernel_shape[:3]
    return np.dtype(dtype) == np.float32 and (kh, kw) == (3, 3) and c % WIDTH == 0


def flat_taps(depthwise_kernel):
    """The depthwise kernel (3, 3, C, 1) as the kernels read it: (9*C,) float32."""
    return np.ascontiguousarray(depthwise_kernel, dtype=np.float32).reshape(-1)
