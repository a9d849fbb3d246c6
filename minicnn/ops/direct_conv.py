"""Direct convolution for narrow layers: the sum over the window computed in place, no patch matrix.

    z[n, ho, wo, f] = sum_{i, j, c} x[n, ho*sh - top + i, wo*sw - left + j, c] * K[i, j, c, f]
    dK[i, j, c, f]  = sum_{n, ho, wo} x[n, ho*sh - top + i, wo*sw - left + j, c] * dz[n, ho, wo, f]
    dx[n, h, w, c]  = sum over the (ho, wo, i, j) that read pixel (h, w) of sum_f K[i, j, c, f] * dz[n, ho, wo, f]

Shapes as ops/conv.py: x (N, H, W, C) NHWC, K (kh, kw, C, F) HWCF, pads ((top, bottom), (left,
right)), zero padding. ops/conv.py writes every window into a patch matrix (N*Ho*Wo, kh*kw*C)
and makes one product of it; when kh*kw*C or F is small (a first layer on one channel, an 8- or
16-channel layer, a 1x1 shortcut) that product is too thin for the BLAS to run fast and the patch
matrix costs more memory traffic than the arithmetic. Here a task copies the input of a few
output rows into a small channel-major tile that stays in cache and multiply-adds straight into
z (and dK, dx) in long vectorized loops (see the numba section); `direct_pays`
(perf.DIRECT_CONV_*) says for which shapes this wins, measured by benchmarks/kernels_direct_conv.py.
Eight channels in and out at stride 1 in float32 go pixel by pixel instead, a pixel's eight
filters in one vector register (ops/pixel_conv.py).

`moments=` (a (2, F) float64 array): the forward also writes each output channel's sum and sum
of squares over N, Ho, Wo into it, so a BatchNormalization that follows needs no pass of its
own over z: mean = moments[0] / M, var = moments[1] / M - mean**2, M = N*Ho*Wo.
The backward takes x (not a patch matrix): nothing but the layer's input is kept for it.
"""
import numpy as np

from .. import backend, perf
from .buffers import copied_into, reuse_or_new
from .conv import conv2d_backward_reference, conv2d_naive, conv2d_reference
from .im2col import output_hw
from .jit import block_range, lane_kernels_run, njit, pick, prange


# ----------------------------------------------------------------------------------------
# naive loops: the definitions, one window at a time
# ----------------------------------------------------------------------------------------

def direct_conv2d_naive(x, kernel, strides, pads):
    """z = conv(x, kernel), one window at a time: ops.conv's definition."""
    return conv2d_naive(x, kernel, strides, pads)


def channel_moments_naive(z):
    """(2, F) float64: the sum and the sum of squares of z (N, Ho, Wo, F) per channel, one number at a time."""
    moments = np.zeros((2, z.shape[3]))
    for n, ho, wo, f in np.ndindex(z.shape):
        moments[0, f] += z[n, ho, wo, f]
        moments[1, f] += float(z[n, ho, wo, f]) ** 2
    return moments


def direct_conv2d_backward_naive(dz, x, kernel, strides, pads):
    """(dx, dK) from the lines at the top: every window's outer products and kernel products."""
    n_img, h_in, w_in, _ = x.shape
    kh, kw = kernel.shape[:2]
    (sh, sw), (top, left) = strides, (pads[0][0], pads[1][0])
    dx, dkernel = np.zeros_like(x), np.zeros_like(kernel)
    for n, ho, wo, i, j in np.ndindex(n_img, dz.shape[1], dz.shape[2], kh, kw):
        h, w = ho * sh - top + i, wo * sw - left + j
        if 0 <= h < h_in and 0 <= w < w_in:                  # outside: padding, no gradient
            dkernel[i, j] += np.outer(x[n, h, w], dz[n, ho, wo])     # (C, F)
            dx[n, h, w] += kernel[i, j] @ dz[n, ho, wo]              # (C, F) @ (F,)
    return dx, dkernel


# ----------------------------------------------------------------------------------------
# NumPy reference: ops.conv's im2col and one product
# ----------------------------------------------------------------------------------------

def direct_conv2d_reference(x, kernel, strides, pads):
    """z = im2col(x) @ K2: (N, H, W, C), (kh, kw, C, F) -> (N, Ho, Wo, F)."""
    return conv2d_reference(x, kernel, strides, pads)[0]


def channel_moments_reference(z):
    """(2, F) float64: sum over N, Ho, Wo of z and of z**2, per channel."""
    z64 = z.reshape(-1, z.shape[-1]).astype(np.float64)
    return np.stack([z64.sum(axis=0), (z64 * z64).sum(axis=0)])


def direct_conv2d_backward_reference(dz, x, kernel, strides, pads, need_input_gradient=True):
    """(dx (N, H, W, C) or None, dK (kh, kw, C, F)) by ops.conv's reference, its patch matrix rebuilt."""
    _, cols = conv2d_reference(x, kernel, strides, pads)
    return conv2d_backward_reference(dz, cols, kernel, x.shape, strides, pads, need_input_gradient)


# ----------------------------------------------------------------------------------------
# numba kernels: a tile of output rows at a time, one long vectorized loop per (tap, c, f)
# ----------------------------------------------------------------------------------------
# A task takes `rows` output rows of one image. It copies the input they read into `xt`,
# channel-major and split into stride phases, so that for every tap (i, j) and channel c the
# inputs of all the tile's outputs are ONE contiguous run of xt (row-major over (r, q),
# q < Wq = Wo + (kw-1)//sw, at offset off_ij = (i//sh)*Wq + j//sw):
#     xt[c, i % sh, j % sw, r*Wq + q]  =  x[n, (ho0 + r)*sh + i % sh - top, q*sw + j % sw - left, c]
# The tile's outputs then live in acc[f, r*Wq + wo] and every term of the sum is one loop of
# length T = rows*Wq over that run: acc[f, :] += K[i, j, c, f] * xt[c, phase, off_ij:off_ij + T].
# The columns wo >= Wo of each row are spare (they read the next row's inputs and are
# never stored), the price of loops long enough for the vector units. dK is the same runs
# dotted with dz in the acc layout (zeros in the spare columns and in kw-1 numbers either
# side), and dx the same loops run backwards into a tile-shaped dxt, added onto dx. A
# row of three taps at stride 1 along the width (any stride down) is one loop of three
# products: each accumulator is read and written once per three multiply-adds. A 3x3 window
# at stride 1 (the common case) goes further: one loop takes all nine taps of two filters,
# each input number loaded once for 18 multiply-adds (the backward's dz then has 2*Wq + 2
# zeros either side, so the taps two rows back read zeros, not the neighbouring tile).
# Tasks: (image, tile) for the forward, whole images for the backward (a tile's dxt overlaps
# the next tile's input rows, so one image stays with one task). Scratch arrays come in as
# arguments, one slice per block of tasks (numba then knows no two arrays overlap, which
# lets LLVM vectorize without runtime checks); sums over the batch (dK, the moments) go into
# one slice per block, added at the end: the same blocks whatever the thread count.

BLOCKS = perf.DIRECT_CONV_BLOCKS    # task blocks (a constant to the kernels: read when they compile)
FAST = {"contract", "reassoc"}      # fused multiply-adds; sums in vector lanes (the order of additions only)


@njit(inline="always")
def _columns(pw, sw, left, w_in, wq):
    """The q in [lo, hi) whose column q*sw + pw - left lies inside x (0 <= w < w_in)."""
    lo = max(0, (left - pw + sw - 1) // sw)
    return lo, max(lo, min(wq, (w_in - 1 + left - pw) // sw + 1))


@njit(inline="always")
def _gather_tile(x, n, ho0, rows_in, sh, sw, top, left, wq, xts, b):
    """xts[b, (c*sh + ph)*sw + pw, rr*wq + qq] = x[n, (ho0 + rr)*sh + ph - top, qq*sw + pw - left, c],
    zero outside x and after the last row."""
    h_in, w_in, c_n = x.shape[1], x.shape[2], x.shape[3]
    for p in range(xts.shape[1]):
        for t in range(xts.shape[2]):
            xts[b, p, t] = 0
    for ph in range(sh):
        for rr in range(rows_in):
            h = (ho0 + rr) * sh + ph - top
            if h < 0 or h >= h_in:
                continue
            for pw in range(sw):
                lo, hi = _columns(pw, sw, left, w_in, wq)
                if c_n == 1:                     # one channel: the row is one copy, in order
                    run = xts[b, ph * sw + pw, rr * wq:(rr + 1) * wq]
                    for qq in range(lo, hi):
                        run[qq] = x[n, h, qq * sw + pw - left, 0]
                    continue
                for qq in range(lo, hi):
                    for c in range(c_n):
                        xts[b, (c * sh + ph) * sw + pw, rr * wq + qq] = x[n, h, qq * sw + pw - left, c]


@njit(inline="always")
def _window_3x3(k, x):
    """sum of the nine products k[i] * x[i] (a 3x3 window's taps and inputs, row by row)."""
    return (k[0] * x[0] + k[1] * x[1] + k[2] * x[2] + k[3] * x[3] + k[4] * x[4] + k[5] * x[5]
            + k[6] * x[6] + k[7] * x[7] + k[8] * x[8])


@njit(inline="always")
def _taps_3x3(kernel, c, f):
    """K[:, :, c, f]'s nine numbers, row by row."""
    return (kernel[0, 0, c, f], kernel[0, 1, c, f], kernel[0, 2, c, f], kernel[1, 0, c, f], kernel[1, 1, c, f],
            kernel[1, 2, c, f], kernel[2, 0, c, f], kernel[2, 1, c, f], kernel[2, 2, c, f])


@njit(inline="always")
def _forward_3x3_pairs(xts, kernel, accs, b, t_n, wq, pairs):
    """_forward_taps for a 3x3 window at stride 1 on filters [0, 2*pairs): two filters and all nine
    taps of a channel in one loop, so each input number is loaded once for 18 multiply-adds and
    each accumulator read and written once a channel."""
    c_n = kernel.shape[2]
    for p in range(pairs):
        acc0, acc1 = accs[b, 2 * p, :t_n], accs[b, 2 * p + 1, :t_n]
        for t in range(t_n):
            acc0[t] = 0
            acc1[t] = 0
        for c in range(c_n):
            r0, r1, r2 = xts[b, c, :t_n + 2], xts[b, c, wq:wq + t_n + 2], xts[b, c, 2 * wq:2 * wq + t_n + 2]
            k0, k1 = _taps_3x3(kernel, c, 2 * p), _taps_3x3(kernel, c, 2 * p + 1)
            for t in range(t_n):
                window = (r0[t], r0[t + 1], r0[t + 2], r1[t], r1[t + 1], r1[t + 2], r2[t], r2[t + 1], r2[t + 2])
                acc0[t] += _window_3x3(k0, window)
                acc1[t] += _window_3x3(k1, window)


@njit(inline="always")
def _forward_taps(xts, kernel, accs, b, t_n, sh, sw, wq):
    """accs[b, f, :t_n] = sum over taps and channels of K[i, j, c, f] * (the run of xt they read).
    A row of three taps at width-stride 1 is one loop of three products: acc is read and written
    once for three multiply-adds instead of once for each; a 3x3 window at stride 1 goes by pairs
    of filters (_forward_3x3_pairs), an odd last filter by rows."""
    kh, kw, c_n, f_n = kernel.shape
    pairs = f_n // 2 if kh == 3 and kw == 3 and sh == 1 and sw == 1 else 0
    _forward_3x3_pairs(xts, kernel, accs, b, t_n, wq, pairs)
    for f in range(2 * pairs, f_n):
        acc = accs[b, f, :t_n]
        for t in range(t_n):
            acc[t] = 0
        for i in range(kh):
            for c in range(c_n):
                if sw == 1 and kw == 3:
                    run = xts[b, c * sh + i % sh, (i // sh) * wq:(i // sh) * wq + t_n + 2]
                    k0, k1, k2 = kernel[i, 0, c, f], kernel[i, 1, c, f], kernel[i, 2, c, f]
                    for t in range(t_n):
                        acc[t] += k0 * run[t] + k1 * run[t + 1] + k2 * run[t + 2]
                    continue
                for j in range(kw):
                    off = (i // sh) * wq + j // sw
                    run = xts[b, (c * sh + i % sh) * sw + j % sw, off:off + t_n]
                    k = kernel[i, j, c, f]
                    for t in range(t_n):
                        acc[t] += k * run[t]


@njit(inline="always")
def _store_tile(accs, z, n, ho0, r_n, wq, moments, b):
    """z[n, ho0 + r, wo, f] = accs[b, f, r*wq + wo]; the tile's per-channel sums into moments[b]."""
    wo_n, f_n = z.shape[2], z.shape[3]
    for r in range(r_n):
        for wo in range(wo_n):
            for f in range(f_n):
                z[n, ho0 + r, wo, f] = accs[b, f, r * wq + wo]
    if moments is not None:
        for f in range(f_n):
            total, squares = 0.0, 0.0
            for r in range(r_n):
                for wo in range(wo_n):
                    v = np.float64(accs[b, f, np.uint64(r * wq + wo)])
                    total += v
                    squares += v * v
            moments[b, 0, f] += total
            moments[b, 1, f] += squares


@njit(cache=True, parallel=True, fastmath=FAST, error_model="numpy")
def _forward_kernel(x, kernel, z, moments, xts, accs, sh, sw, top, left, rows):
    # z (N, Ho, Wo, F) overwritten; moments (blocks, 2, F) float64 zeros, or None (numba
    # compiles each case apart); xts (blocks, C*sh*sw, L), accs (blocks, F, rows*Wq) scratch
    n_img, ho_n, wo_n, _ = z.shape
    kh, kw = kernel.shape[0], kernel.shape[1]
    wq = wo_n + (kw - 1) // sw
    tiles = (ho_n + rows - 1) // rows
    blocks = xts.shape[0]
    for b in prange(blocks):
        lo, hi = block_range(b, blocks, n_img * tiles)
        for task in range(lo, hi):
            n, ho0 = task // tiles, task % tiles * rows
            r_n = min(rows, ho_n - ho0)
            _gather_tile(x, n, ho0, r_n + (kh - 1) // sh, sh, sw, top, left, wq, xts, b)
            _forward_taps(xts, kernel, accs, b, r_n * wq, sh, sw, wq)
            _store_tile(accs, z, n, ho0, r_n, wq, moments, b)


@njit(inline="always")
def _gather_gradient(dz, n, ho0, r_n, wq, lead, dzts, b):
    """dzts[b, f, lead + r*wq + wo] = dz[n, ho0 + r, wo, f]; zero in the spare columns wo >= Wo,
    in the `lead` numbers before the run and in those after it."""
    wo_n, f_n = dz.shape[2], dz.shape[3]
    for f in range(f_n):
        for t in range(dzts.shape[2]):
            dzts[b, f, t] = 0
    for f in range(f_n):                         # each run of dzt written in order
        for r in range(r_n):
            run = dzts[b, f, lead + r * wq:lead + r * wq + wo_n]
            for wo in range(wo_n):
                run[wo] = dz[n, ho0 + r, wo, f]


@njit(inline="always")
def _add_products_3x3(sums, g, x):
    """sums[i] + g * x[i] for the nine taps of a 3x3 window."""
    return (sums[0] + g * x[0], sums[1] + g * x[1], sums[2] + g * x[2], sums[3] + g * x[3], sums[4] + g * x[4],
            sums[5] + g * x[5], sums[6] + g * x[6], sums[7] + g * x[7], sums[8] + g * x[8])


@njit(inline="always")
def _kernel_gradient_3x3_pairs(xts, dzts, dks, b, t_n, wq, lead, pairs):
    """_kernel_gradient_taps for a 3x3 window at stride 1 on filters [0, 2*pairs): the nine taps
    of a channel and two filters in one loop (18 sums), each input number loaded once for 18
    multiply-adds."""
    c_n, zero = dks.shape[3], dks.dtype.type(0)
    for c in range(c_n):
        r0, r1, r2 = xts[b, c, :t_n + 2], xts[b, c, wq:wq + t_n + 2], xts[b, c, 2 * wq:2 * wq + t_n + 2]
        for p in range(pairs):
            g0, g1 = dzts[b, 2 * p, lead:lead + t_n], dzts[b, 2 * p + 1, lead:lead + t_n]
            s0 = (zero, zero, zero, zero, zero, zero, zero, zero, zero)
            s1 = s0
            for t in range(t_n):
                window = (r0[t], r0[t + 1], r0[t + 2], r1[t], r1[t + 1], r1[t + 2], r2[t], r2[t + 1], r2[t + 2])
                s0 = _add_products_3x3(s0, g0[t], window)
                s1 = _add_products_3x3(s1, g1[t], window)
            for k in range(9):
                dks[b, k // 3, k % 3, c, 2 * p] += s0[k]
                dks[b, k // 3, k % 3, c, 2 * p + 1] += s1[k]


@njit(inline="always")
def _kernel_gradient_taps(xts, dzts, dks, b, t_n, sh, sw, wq, lead):
    """dks[b, i, j, c, f] += <the run of xt tap (i, j) reads on channel c, dzt[f]> (dzt[f] starts
    `lead` numbers into its row of dzts). A 3x3 window at stride 1 goes by pairs of filters
    (_kernel_gradient_3x3_pairs), an odd last filter tap by tap."""
    _, kh, kw, c_n, f_n = dks.shape
    pairs = f_n // 2 if kh == 3 and kw == 3 and sh == 1 and sw == 1 else 0
    _kernel_gradient_3x3_pairs(xts, dzts, dks, b, t_n, wq, lead, pairs)
    f_lo = 2 * pairs
    for i in range(kh):
        for j in range(kw):
            off = (i // sh) * wq + j // sw
            for c in range(c_n):
                run = xts[b, (c * sh + i % sh) * sw + j % sw, off:off + t_n]
                for f in range(f_lo, f_n - 3, 4):       # four filters a pass: each x number loaded once for four
                    g0, g1 = dzts[b, f, lead:lead + t_n], dzts[b, f + 1, lead:lead + t_n]
                    g2, g3 = dzts[b, f + 2, lead:lead + t_n], dzts[b, f + 3, lead:lead + t_n]
                    sums = dks[b, i, j, c]
                    s0, s1, s2, s3 = sums[f], sums[f + 1], sums[f + 2], sums[f + 3]
                    for t in range(t_n):
                        s0 += run[t] * g0[t]
                        s1 += run[t] * g1[t]
                        s2 += run[t] * g2[t]
                        s3 += run[t] * g3[t]
                    sums[f], sums[f + 1], sums[f + 2], sums[f + 3] = s0, s1, s2, s3
                for f in range(f_n - (f_n - f_lo) % 4, f_n):
                    gradient = dzts[b, f, lead:lead + t_n]
                    total = dks[b, i, j, c, f]      # x.dtype (a literal 0 would make it float64)
                    for t in range(t_n):
                        total += run[t] * gradient[t]
                    dks[b, i, j, c, f] = total


@njit(inline="always")
def _shifted_runs_3x3(g, lead, wq, length):
    """The nine runs of dzt a 3x3 window's taps (row by row) read for the input numbers v < length:
    run_ij[v] = g[lead + v - i*wq - j]."""
    return (g[lead:lead + length], g[lead - 1:lead - 1 + length], g[lead - 2:lead - 2 + length],
            g[lead - wq:lead - wq + length], g[lead - wq - 1:lead - wq - 1 + length],
            g[lead - wq - 2:lead - wq - 2 + length], g[lead - 2 * wq:lead - 2 * wq + length],
            g[lead - 2 * wq - 1:lead - 2 * wq - 1 + length], g[lead - 2 * wq - 2:lead - 2 * wq - 2 + length])


@njit(inline="always")
def _at(runs, v):
    """The v-th number of each of nine runs."""
    return (runs[0][v], runs[1][v], runs[2][v], runs[3][v], runs[4][v], runs[5][v], runs[6][v], runs[7][v],
            runs[8][v])


@njit(inline="always")
def _input_gradient_3x3_pairs(dzts, kernel, dxts, b, t_n, wq, lead, pairs):
    """_input_gradient_taps for a 3x3 window at stride 1 on filters [0, 2*pairs): each number of a
    channel's run of dxt gathers its nine taps of two filters, dxt[v] += sum K[i, j, c, f] *
    dzt[f][v - i*wq - j], read and written once a pair (lead = 2*wq + 2 zeros either side of dzt)."""
    c_n, length = kernel.shape[2], t_n + 2 * wq + 2
    for c in range(c_n):
        run = dxts[b, c, :length]
        for p in range(pairs):
            k0, k1 = _taps_3x3(kernel, c, 2 * p), _taps_3x3(kernel, c, 2 * p + 1)
            g0 = _shifted_runs_3x3(dzts[b, 2 * p], lead, wq, length)
            g1 = _shifted_runs_3x3(dzts[b, 2 * p + 1], lead, wq, length)
            for v in range(length):
                run[v] += _window_3x3(k0, _at(g0, v)) + _window_3x3(k1, _at(g1, v))


@njit(inline="always")
def _input_gradient_taps(dzts, kernel, dxts, b, t_n, sh, sw, wq, lead):
    """The adjoint of _forward_taps: dxts[b]'s runs = sum of K[i, j, c, f] * dzt[f]. A row of three
    taps at width-stride 1 is gathered, dxt[u] += k0 dzt[u] + k1 dzt[u - 1] + k2 dzt[u - 2] (the
    lead's zeros stand in for dzt before and after the run): each dxt number written once a row.
    A 3x3 window at stride 1 goes by pairs of filters (_input_gradient_3x3_pairs), an odd last
    filter by rows."""
    kh, kw, c_n, f_n = kernel.shape
    for p in range(dxts.shape[1]):
        for t in range(dxts.shape[2]):
            dxts[b, p, t] = 0
    pairs = f_n // 2 if kh == 3 and kw == 3 and sh == 1 and sw == 1 else 0
    _input_gradient_3x3_pairs(dzts, kernel, dxts, b, t_n, wq, lead, pairs)
    for i in range(kh):
        for c in range(c_n):
            if sw == 1 and kw == 3:
                run = dxts[b, c * sh + i % sh, (i // sh) * wq:(i // sh) * wq + t_n + 2]
                for f in range(2 * pairs, f_n):
                    padded = dzts[b, f, lead - 2:lead + t_n + 2]       # padded[2 + t] = dzt[t]
                    k0, k1, k2 = kernel[i, 0, c, f], kernel[i, 1, c, f], kernel[i, 2, c, f]
                    for u in range(t_n + 2):
                        run[u] += k0 * padded[u + 2] + k1 * padded[u + 1] + k2 * padded[u]
                continue
            for j in range(kw):
                off = (i // sh) * wq + j // sw
                run = dxts[b, (c * sh + i % sh) * sw + j % sw, off:off + t_n]
                for f in range(f_n):
                    gradient = dzts[b, f, lead:lead + t_n]
                    k = kernel[i, j, c, f]
                    for t in range(t_n):
                        run[t] += k * gradient[t]


@njit(inline="always")
def _add_tile(dxts, dx, n, ho0, rows_in, sh, sw, top, left, wq, b):
    """The adjoint of _gather_tile: dx[n, h, w, c] += dxt at (h, w)'s place; padding dropped."""
    h_in, w_in, c_n = dx.shape[1], dx.shape[2], dx.shape[3]
    for ph in range(sh):
        for rr in range(rows_in):
            h = (ho0 + rr) * sh + ph - top
            if h < 0 or h >= h_in:
                continue
            for pw in range(sw):
                lo, hi = _columns(pw, sw, left, w_in, wq)
                for qq in range(lo, hi):
                    for c in range(c_n):
                        dx[n, h, qq * sw + pw - left, c] += dxts[b, (c * sh + ph) * sw + pw, rr * wq + qq]


@njit(cache=True, parallel=True, fastmath=FAST, error_model="numpy")
def _backward_kernel(dz, x, kernel, dks, dx, xts, dzts, dxts, sh, sw, top, left, rows, lead):
    # dks (blocks, kh, kw, C, F) zeros; dx (N, H, W, C) of any values, each image zeroed by the
    # thread that sums into it (in cache, in parallel), or None (numba compiles each case apart):
    # no dx; xts, dxts (blocks, C*sh*sw, L) and dzts (blocks, F,
    # rows*Wq + 2*lead) scratch, lead from gradient_lead
    n_img, ho_n, wo_n, _ = dz.shape
    kh, kw = kernel.shape[0], kernel.shape[1]
    wq = wo_n + (kw - 1) // sw
    blocks = xts.shape[0]
    for b in prange(blocks):
        lo, hi = block_range(b, blocks, n_img)
        for n in range(lo, hi):
            if dx is not None:
                dx[n] = 0
            for ho0 in range(0, ho_n, rows):
                r_n = min(rows, ho_n - ho0)
                _gather_tile(x, n, ho0, r_n + (kh - 1) // sh, sh, sw, top, left, wq, xts, b)
                _gather_gradient(dz, n, ho0, r_n, wq, lead, dzts, b)
                _kernel_gradient_taps(xts, dzts, dks, b, r_n * wq, sh, sw, wq, lead)
                if dx is not None:
                    _input_gradient_taps(dzts, kernel, dxts, b, r_n * wq, sh, sw, wq, lead)
                    _add_tile(dxts, dx, n, ho0, r_n + (kh - 1) // sh, sh, sw, top, left, wq, b)


def _buffer(out, shape, dtype, name):
    return reuse_or_new(out, shape, dtype, f"direct_conv2d: {name}")


def _pixel_conv(dtype, kernel_shape, strides):
    """ops.pixel_conv for the layers it takes (float32, stride 1, eight channels in and out: one
    vector register a pixel) while jit.lane_kernels_run(), else None. Imported at first use: it
    defines a numba type, and MINICNN_REFERENCE=1 runs without numba."""
    fits = np.dtype(dtype) == np.float32 and tuple(strides) == (1, 1) and tuple(kernel_shape[2:]) == (8, 8)
    if not (fits and lane_kernels_run()):
        return None
    from . import pixel_conv
    return pixel_conv


def tile_geometry(kernel_shape, strides, ho, wo):
    """(rows, Wq, L): output rows per tile (rows*Wq about perf.DIRECT_CONV_TILE), the run width
    Wq = Wo + (kw-1)//sw and the length L of one phase of a tile's input copy."""
    (kh, kw), (sh, sw) = kernel_shape[:2], strides
    wq = wo + (kw - 1) // sw
    rows = max(1, min(ho, perf.DIRECT_CONV_TILE // wq))
    return rows, wq, (rows + (kh - 1) // sh) * wq + (kw - 1) // sw


def gradient_lead(kernel_shape, strides, wq):
    """The zeros before (and after) each run of dz in the backward's tile: kw - 1 for a row of
    taps, 2*Wq + 2 for a 3x3 window at stride 1 (its taps reach two rows back)."""
    kh, kw = kernel_shape[:2]
    return 2 * wq + 2 if (kh, kw) == (3, 3) and tuple(strides) == (1, 1) else kw - 1


def direct_conv2d_numba(x, kernel, strides, pads, out=None, moments=None):
    """numba version of `direct_conv2d_reference` (same arguments, same result up to rounding);
    z written into `out` when given, and `channel_moments_reference(z)` into `moments` when given."""
    x = np.ascontiguousarray(x)
    kernel = np.ascontiguousarray(kernel, dtype=x.dtype)
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    ho, wo = output_hw(h, w, (kh, kw), strides, pads)
    z = _buffer(out, (n, ho, wo, f), x.dtype, "out")
    if (pixel := _pixel_conv(x.dtype, kernel.shape, strides)) is not None:
        return pixel.pixel_conv2d(x, kernel, pads, z, moments)
    rows, xts, accs = _forward_scratch(x.shape, kernel.shape, strides, ho, wo, x.dtype)
    per_block = None if moments is None else np.zeros((len(xts), 2, f))
    with perf.kernel_threads(z.size * kh * kw):         # one thread for a small batch
        _forward_kernel(x, kernel, z, per_block, xts, accs, *strides, pads[0][0], pads[1][0], rows)
    if moments is not None:
        moments[...] = per_block.sum(axis=0)
    return z


def _forward_scratch(x_shape, kernel_shape, strides, ho, wo, dtype):
    """(rows, xts, accs): output rows per tile, and each block's input tile and accumulators."""
    n, c, f = x_shape[0], x_shape[3], kernel_shape[3]
    rows, wq, length = tile_geometry(kernel_shape, strides, ho, wo)
    blocks = min(BLOCKS, n * -(-ho // rows))
    return rows, np.empty((blocks, c * strides[0] * strides[1], length), dtype), np.empty((blocks, f, rows * wq), dtype)


def bind_direct_conv2d(x_shape, kernel, strides, pads):
    """direct_conv2d_numba for inputs of x_shape (in the kernel's dtype), its output and scratch
    made once: run(x) -> z, the same array every call (compiler/plan.py)."""
    kernel = np.ascontiguousarray(kernel)
    if (pixel := _pixel_conv(kernel.dtype, kernel.shape, strides)) is not None:
        return pixel.bind_pixel_conv2d(x_shape, kernel, pads)
    kh, kw, _, f = kernel.shape
    ho, wo = output_hw(x_shape[1], x_shape[2], (kh, kw), strides, pads)
    z = np.empty((x_shape[0], ho, wo, f), kernel.dtype)
    rows, xts, accs = _forward_scratch(x_shape, kernel.shape, strides, ho, wo, kernel.dtype)

    def run(x):
        _forward_kernel(np.ascontiguousarray(x), kernel, z, None, xts, accs, *strides, pads[0][0], pads[1][0], rows)
        return z
    return run


def direct_conv2d_backward_numba(dz, x, kernel, strides, pads, need_input_gradient=True):
    """numba version of `direct_conv2d_backward_reference` (same arguments, same result up to rounding)."""
    x = np.ascontiguousarray(x)
    kernel = np.ascontiguousarray(kernel, dtype=x.dtype)
    dz = np.ascontiguousarray(dz, dtype=x.dtype)
    if (pixel := _pixel_conv(x.dtype, kernel.shape, strides)) is not None:
        return pixel.pixel_conv2d_backward(dz, x, kernel, pads, need_input_gradient)
    n, ho, wo, f = dz.shape
    rows, wq, length = tile_geometry(kernel.shape, strides, ho, wo)
    blocks = min(BLOCKS, n)
    xts = np.empty((blocks, x.shape[3] * strides[0] * strides[1], length), x.dtype)
    lead = gradient_lead(kernel.shape, strides, wq)
    dzts = np.empty((blocks, f, rows * wq + 2 * lead), x.dtype)
    dks = np.zeros((blocks,) + kernel.shape, x.dtype)
    dx = np.empty_like(x) if need_input_gradient else None     # the kernel zeroes it image by image
    dxts = np.empty_like(xts)      # unused without dx
    with perf.kernel_threads(dz.size * kernel.shape[0] * kernel.shape[1]):
        _backward_kernel(dz, x, kernel, dks, dx, xts, dzts, dxts, *strides, pads[0][0], pads[1][0], rows, lead)
    return dx, dks.sum(axis=0)


# ----------------------------------------------------------------------------------------
# dispatch: the numba kernels (MINICNN_REFERENCE=1: the NumPy references)
# ----------------------------------------------------------------------------------------

def direct_pays(x_shape, kernel_shape, strides, training=True):
    """Whether the direct kernels beat ops.conv's im2col + product for this layer, on a window
    wider than 1x1 (a 1x1 window's patch matrix is a strided copy of x). In training (forward and
    backward): at most perf.DIRECT_CONV_MAX_DEPTH numbers in the window (kh*kw*C) and at most
    perf.DIRECT_CONV_MAX_FILTERS filters. Inference (the forward alone): at most
    perf.DIRECT_CONV_INFERENCE_MAX_DEPTH numbers and perf.DIRECT_CONV_INFERENCE_MAX_WORK multiply-adds
    per output pixel (kh*kw*C*F)."""
    kh, kw, c, f = kernel_shape
    if kh * kw == 1:
        return False
    if not training:
        return kh * kw * c <= perf.DIRECT_CONV_INFERENCE_MAX_DEPTH and kh * kw * c * f <= perf.DIRECT_CONV_INFERENCE_MAX_WORK
    return kh * kw * c <= perf.DIRECT_CONV_MAX_DEPTH and f <= perf.DIRECT_CONV_MAX_FILTERS


def direct_conv2d(x, kernel, strides, pads, out=None, moments=None):
    """z = conv(x, kernel), no bias: (N, H, W, C), (kh, kw, C, F) -> z (N, Ho, Wo, F), written into
    `out` when given; `moments`, a (2, F) float64 array when given, receives the sum and the sum of
    squares of z per output channel."""
    if not backend.use_reference():
        return direct_conv2d_numba(x, kernel, strides, pads, out, moments)
    z = copied_into(direct_conv2d_reference(x, kernel, strides, pads), out, "direct_conv2d: out")
    if moments is not None:
        moments[...] = channel_moments_reference(z)
    return z


def direct_conv2d_backward(dz, x, kernel, strides, pads, need_input_gradient=True):
    """dz (N, Ho, Wo, F) -> (dx (N, H, W, C), dK (kh, kw, C, F)); dx is None when
    need_input_gradient is False (a layer that reads the model's input)."""
    return pick(direct_conv2d_backward_reference, direct_conv2d_backward_numba)(dz, x, kernel, strides, pads,
                                                                                need_input_gradient)
