"""The epilogue of a product: BatchNormalization, ReLU, max pooling, dropout and a residual
Add in one pass each way, for the compiled path (the layers stay the textbook).

An `Epilogue` names the block, in the seed models' orders; per channel c of z (N, H, W, C)
((M, C) without pooling):
    v = max(z, 0)                       if relu == "before"  (cnn8: ReLU, then BN)
    u = (v - mean) * scale + beta,      scale = gamma * inv_std    (BatchNormalization)
    u = max(u, 0)                       if relu == "after"   (cnn4, mini-Xception: BN, then ReLU)
    p = max of u over each pool window  (-inf padding, the first max on ties)
    y = p * keep / (1 - rate)  [+ residual],   keep = bits >= rate * 2**32  (Dropout's rule)
mean and inv_std are the batch's (training; `moments` gives them in one pass over z, or
max(z, 0), without writing v) or the moving ones (inference). mean = 0, inv_std = gamma = 1,
beta = 0 leave u = v exactly: an epilogue without BatchNormalization.

Forward writes y, the window offset of each max (uint8, i * kw + j from the window's top-left
corner, padding counted) and the dropout mask, never u: backward recomputes u from z where it
needs it. Backward from dy (the residual's gradient is dy itself, left to the caller):
    g = dy * keep / (1 - rate);  du = g at each window's max cell, 0 elsewhere;  du *= (u > 0) (after)
    dbeta = sum du,   dgamma = sum du * (v - mean) * inv_std        (over every axis but the last)
    dv = a * du + k * (v - mean) + offset   training: a = gamma * inv_std,
                                            k = -a * inv_std * dgamma / M, offset = -a * dbeta / M
    dv = a * du                             inference;   dz = dv * (z > 0)  (before)
du is non-zero only at the max cells, so the sums take one pass over the pooled cells (reading
z at each max), and dz one pass over z that writes k * (v - mean) + offset and adds a * du at
the max cells: BatchNormalization's two passes, the first over the pooled cells alone.
The reference composes the textbook ops (ops/batchnorm, elementwise, pooling); numba where
`numba_pays` (perf.EPILOGUE_NUMBA_MIN_SIZE, from benchmarks/kernels_epilogue.py). A block of
BatchNormalization (and a ReLU after it) alone runs ops/batchnorm.py's one-pass kernels.
"""
from typing import NamedTuple, Optional

import numpy as np

from .. import perf
from . import batchnorm, elementwise, pooling
from .buffers import copied_into, reuse_or_new
from .im2col import output_hw
from .jit import njit, pick, prange

RELU_PLACES = (None, "before", "after")


class Epilogue(NamedTuple):
    """The block after a product: relu None, "before" or "after" BatchNormalization; pool
    (pool_size, strides, pads) of a max pooling (pads as padding.conv_geometry gives them) or
    None; rate, the dropout rate used when forward is given draws (training)."""
    relu: Optional[str] = None
    pool: Optional[tuple] = None
    rate: float = 0.0

    def check(self, z_shape):
        """An error naming the problem when this block cannot follow a z of z_shape."""
        if self.relu not in RELU_PLACES:
            raise ValueError(f"epilogue: relu must be None, 'before' or 'after', received {self.relu!r}")
        if not 0 <= self.rate < 1:
            raise ValueError(f"epilogue: rate must be in [0, 1), received {self.rate!r}")
        if self.pool is not None and (len(z_shape) != 4 or self.pool[0][0] * self.pool[0][1] > 256):
            raise ValueError(f"epilogue: pooling needs (N, H, W, C) input and at most 256 window cells, "
                             f"received z.shape={tuple(z_shape)}, pool_size={self.pool[0]}")

    def output_shape(self, z_shape):
        """y's shape: z's, pooled when there is a pool."""
        if self.pool is None:
            return tuple(z_shape)
        n, h, w, c = z_shape
        return (n,) + output_hw(h, w, self.pool[0], self.pool[1], self.pool[2]) + (c,)


def window_cell(ho, wo, offset, pool):
    """(h, w) in z of window (ho, wo)'s cell `offset` (i * kw + j); arrays broadcast."""
    (kh, kw), (sh, sw), ((top, _), (left, _)) = pool
    return ho * sh - top + offset // kw, wo * sw - left + offset % kw


def offsets_of(argmax, width, pool):
    """pooling.max_pool's argmax (h * W + w) -> window offsets i * kw + j (uint8)."""
    (kh, kw), (sh, sw), ((top, _), (left, _)) = pool
    ho, wo = np.arange(argmax.shape[1])[:, None, None], np.arange(argmax.shape[2])[None, :, None]
    i, j = argmax // width - (ho * sh - top), argmax % width - (wo * sw - left)
    return (i * kw + j).astype(np.uint8)


def argmax_of(offsets, width, pool):
    """Window offsets -> pooling.max_pool's argmax h * W + w (int64): offsets_of's inverse."""
    ho, wo = np.arange(offsets.shape[1])[:, None, None], np.arange(offsets.shape[2])[None, :, None]
    h, w = window_cell(ho, wo, offsets.astype(np.int64), pool)
    return h * width + w


# ----------------------------------------------------------------------------------------
# naive loops: the definitions, one number, then one window, at a time
# ----------------------------------------------------------------------------------------

def _normalized_naive(spec, z, mean, inv_std, gamma, beta):
    """u for every cell of z, one number at a time (the block's first three lines)."""
    u = np.empty_like(z)
    for i in np.ndindex(z.shape):
        c = i[-1]
        v = max(z[i], 0) if spec.relu == "before" else z[i]
        u[i] = (v - mean[c]) * (gamma[c] * inv_std[c]) + beta[c]
        if spec.relu == "after":
            u[i] = max(u[i], 0)
    return u


def _pool_naive(u, pool):
    """Max of each window's real cells and its offset (the first max on ties)."""
    (kh, kw), (sh, sw), ((top, _), (left, _)) = pool
    n_img, h_in, w_in, c_n = u.shape
    p = np.empty((n_img,) + output_hw(h_in, w_in, *pool) + (c_n,), dtype=u.dtype)
    offsets = np.empty(p.shape, dtype=np.uint8)
    for n, ho, wo, c in np.ndindex(p.shape):
        best, where = -np.inf, None
        for offset in range(kh * kw):
            h, w = window_cell(ho, wo, offset, pool)
            if 0 <= h < h_in and 0 <= w < w_in and (where is None or u[n, h, w, c] > best):
                best, where = u[n, h, w, c], offset
        p[n, ho, wo, c], offsets[n, ho, wo, c] = best, where
    return p, offsets


def forward_naive(spec, z, mean, inv_std, gamma, beta, bits=None, residual=None):
    """(y, offsets, keep) from the definition at the top."""
    y = _normalized_naive(spec, z, mean, inv_std, gamma, beta)
    offsets = keep = None
    if spec.pool is not None:
        y, offsets = _pool_naive(y, spec.pool)
    if bits is not None:
        keep = bits / 2**32 >= spec.rate
        y = np.where(keep, y / y.dtype.type(1 - spec.rate), 0).astype(y.dtype)
    return (y if residual is None else y + residual), offsets, keep


def _unpool_naive(g, z_shape, offsets, pool):
    """du: each window's g added at its max cell, zeros elsewhere."""
    du = np.zeros(z_shape, dtype=g.dtype)
    for n, ho, wo, c in np.ndindex(g.shape):
        h, w = window_cell(ho, wo, int(offsets[n, ho, wo, c]), pool)
        du[n, h, w, c] += g[n, ho, wo, c]
    return du


def backward_naive(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, training):
    """(dz, dgamma, dbeta) from the definition at the top."""
    g = dy if keep is None else np.where(keep, dy / dy.dtype.type(1 - spec.rate), 0).astype(dy.dtype)
    du = g if spec.pool is None else _unpool_naive(g, z.shape, offsets, spec.pool)
    v = np.maximum(z, 0) if spec.relu == "before" else z
    if spec.relu == "after":
        u = _normalized_naive(spec._replace(relu=None), z, mean, inv_std, gamma, beta)
        du = np.where(u > 0, du, 0).astype(du.dtype)
    dz, dgamma, dbeta = batchnorm.normalize_backward_naive(du, v, mean, inv_std, gamma, training)
    if spec.relu == "before":
        dz = np.where(z > 0, dz, 0).astype(dz.dtype)
    return dz, dgamma.astype(z.dtype), dbeta.astype(z.dtype)


# ----------------------------------------------------------------------------------------
# NumPy reference: the textbook ops, one after another
# ----------------------------------------------------------------------------------------

def moments_reference(z, relu_first=False):
    """Mean and (biased) variance per channel of z, or of max(z, 0): (..., C) -> (C,), (C,)."""
    return batchnorm.moments_reference(elementwise.relu_reference(z) if relu_first else z)


def forward_reference(spec, z, mean, inv_std, gamma, beta, bits=None, residual=None):
    """(y, offsets, keep): BatchNormalization, ReLU, MaxPooling2D, Dropout and Add's ops in turn."""
    v = elementwise.relu_reference(z) if spec.relu == "before" else z
    y = batchnorm.normalize_reference(v, mean, inv_std, gamma, beta, relu=spec.relu == "after")
    offsets = keep = None
    if spec.pool is not None:
        y, argmax = pooling.max_pool_reference(y, *spec.pool)
        offsets = offsets_of(argmax, z.shape[2], spec.pool)
    if bits is not None:
        y, keep = elementwise.dropout_reference(y, bits, spec.rate)
    return (y if residual is None else y + residual), offsets, keep


def backward_reference(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, training):
    """(dz, dgamma, dbeta): the textbook ops' backward passes in reverse order."""
    g = dy if keep is None else elementwise.dropout_backward_reference(dy, keep, spec.rate)
    if spec.pool is not None:
        g = pooling.max_pool_backward_reference(g, argmax_of(offsets, z.shape[2], spec.pool), z.shape, *spec.pool)
    v = elementwise.relu_reference(z) if spec.relu == "before" else z
    dv, dgamma, dbeta = batchnorm.normalize_backward_reference(g, v, mean, inv_std, gamma, training,
                                                               relu=spec.relu == "after", beta=beta)
    return (elementwise.relu_backward_reference(dv, v) if spec.relu == "before" else dv), dgamma, dbeta


# ----------------------------------------------------------------------------------------
# numba kernels: channels innermost; per-channel sums in float64, one row per block of rows
# ----------------------------------------------------------------------------------------
# The ReLUs come as floors, 0 where there is one and -inf where there is none: v = max(z, before),
# u = max(u, after), and a ReLU's backward passes g where its input > its floor. No branch on the
# block's kind in the loops, so LLVM can vectorize them. The one difference it makes: without a
# ReLU, a NaN or -inf in z gives 0 in dz, not NaN (a run that far gone has diverged either way).
# Absent inputs (no dropout draws, no residual) come as empty arrays and a loop-invariant flag.

BLOCKS = perf.BATCHNORM_BLOCKS    # row blocks of the sums (a constant to the kernels: read when they compile)
CHUNK = batchnorm.CHUNK           # rows summed in z's dtype before each float64 addition (ops/batchnorm.py)


@njit(inline="always")
def _flush_chunk(total, part):
    """total += part (float64 += z's dtype), then part = 0: ops/batchnorm.py's, copied because numba
    caches this file's kernels against this file alone and would keep an inlined function of another."""
    for c in range(part.size):
        total[c] += part[c]
        part[c] = 0


@njit(inline="always")
def _span(b, blocks, m):
    """Rows [lo, hi) of block b of m rows cut into `blocks` blocks (the last may be short)."""
    step = (m + blocks - 1) // blocks
    return b * step, min(m, (b + 1) * step)


@njit(inline="always")
def _normalized(z, mean, scale, beta, before, after):
    """u of one number, in z's dtype and the textbook's order of operations (so ties in a pool
    window break as there), and v - mean."""
    v = before if z < before else z          # NaN passes, as in np.maximum
    vc = v - mean
    u = vc * scale + beta
    return (after if u < after else u), vc


@njit(inline="always")
def _gradient(dy, keep, dropout, drop_scale, z, mean, scale, beta, before, after, zero):
    """At one cell: g = du (dropout's and an after-ReLU's rules), v - mean, and whether a
    before-ReLU passes the gradient."""
    g = dy
    if dropout:
        g = dy * drop_scale if keep else zero
    v = before if z < before else z
    vc = v - mean
    g = g if vc * scale + beta > after else zero
    return g, vc, z > before


@njit(inline="always")
def _finish(p, dropout, bits, threshold, drop_scale, add, residual, zero):
    """Dropout (keep = bits >= threshold) and the residual, on one pooled number -> (y, keep)."""
    keep = True
    if dropout:
        keep = bits >= threshold
        p = p * drop_scale if keep else zero
    if add:
        p += residual
    return p, keep


@njit(inline="always")
def _window_row(zrow, w, count, cell, mean, scale, beta, before, after, yr, orow):
    """The running maxima yr and their cells orow taken over one row of a window: the `count` cells
    zrow[w:w + count], numbered from `cell`, strictly greater winning (the first max wins ties). A
    row of three cells is one loop over the channels (entering a loop over a few channels costs
    as much as running it), any other one loop per cell."""
    if count != 3:
        for k in range(count):
            zr = zrow[w + k]
            for c in range(yr.size):
                u, _ = _normalized(zr[c], mean[c], scale[c], beta[c], before, after)
                better = u > yr[c]
                yr[c] = u if better else yr[c]
                orow[c] = cell + k if better else orow[c]
        return
    z0, z1, z2 = zrow[w], zrow[w + 1], zrow[w + 2]
    for c in range(yr.size):
        u0 = _normalized(z0[c], mean[c], scale[c], beta[c], before, after)[0]
        u1 = _normalized(z1[c], mean[c], scale[c], beta[c], before, after)[0]
        u2 = _normalized(z2[c], mean[c], scale[c], beta[c], before, after)[0]
        best, at = yr[c], np.int64(orow[c])
        better = u0 > best
        best, at = (u0 if better else best), (cell if better else at)
        better = u1 > best
        best, at = (u1 if better else best), (cell + 1 if better else at)
        better = u2 > best
        yr[c], orow[c] = (u2 if better else best), (cell + 2 if better else at)


@njit(cache=True, parallel=True)
def _pooled_forward_kernel(z, mean, scale, beta, before, after, kh, kw, sh, sw, top, left,
                           bits, threshold, drop_scale, residual, y, offsets, keep):
    # one task per output row (n, ho): it alone writes y, offsets and keep there
    n_img, h_in, w_in, c_n = z.shape
    ho_n, wo_n = y.shape[1], y.shape[2]
    dropout, add, zero = bits.size > 0, residual.size > 0, y.dtype.type(0)
    for t in prange(n_img * ho_n):
        n, ho = t // ho_n, t % ho_n
        h0 = ho * sh - top
        for wo in range(wo_n):
            w0 = wo * sw - left
            h_lo, h_hi, w_lo, w_hi = max(h0, 0), min(h0 + kh, h_in), max(w0, 0), min(w0 + kw, w_in)
            yr, orow = y[n, ho, wo], offsets[n, ho, wo]
            for c in range(c_n):
                yr[c] = -np.inf
                orow[c] = (h_lo - h0) * kw + (w_lo - w0)                  # the first real cell
            for h in range(h_lo, h_hi):                                   # row-major window order
                _window_row(z[n, h], w_lo, w_hi - w_lo, (h - h0) * kw + (w_lo - w0), mean, scale, beta, before,
                            after, yr, orow)
            for c in range(c_n):
                yr[c], k = _finish(yr[c], dropout, bits[n, ho, wo, c] if dropout else 0, threshold, drop_scale,
                                   add, residual[n, ho, wo, c] if add else zero, zero)
                if dropout:
                    keep[n, ho, wo, c] = k


@njit(cache=True, parallel=True)
def _rows_forward_kernel(z, mean, scale, beta, before, after, bits, threshold, drop_scale, residual, y, keep):
    # z, y (M, C); bits, residual, keep (M, C) or empty
    m, c_n = z.shape
    dropout, add, zero = bits.size > 0, residual.size > 0, y.dtype.type(0)
    blocks = min(BLOCKS, m)
    for b in prange(blocks):
        lo, hi = _span(b, blocks, m)
        for r in range(lo, hi):
            for c in range(c_n):
                u, _ = _normalized(z[r, c], mean[c], scale[c], beta[c], before, after)
                y[r, c], k = _finish(u, dropout, bits[r, c] if dropout else 0, threshold, drop_scale, add,
                                     residual[r, c] if add else zero, zero)
                if dropout:
                    keep[r, c] = k


@njit(cache=True, parallel=True)
def _pooled_sums_kernel(dy, z, offsets, keep, mean, scale, beta, before, after, cells, w_in, sh, sw, top, left,
                        drop_scale, sum_g, sum_g_vc):
    # per block of pooled rows (n, ho): sum of g and of g * (v - mean) at each window's max cell;
    # z is (N, H*W*C), and cells[offset] is where a window's cell sits from its top-left corner
    n_img, ho_n, wo_n, c_n = dy.shape
    dropout, zero = keep.size > 0, dy.dtype.type(0)
    all_kept = np.ones(c_n, np.bool_)          # keep's row where there is no Dropout (keep is empty)
    blocks = sum_g.shape[0]
    for b in prange(blocks):
        lo, hi = _span(b, blocks, n_img * ho_n)
        part, part_vc = np.zeros(c_n, dy.dtype), np.zeros(c_n, dy.dtype)     # a pooled row's sums
        for t in range(lo, hi):
            n, ho = t // ho_n, t % ho_n
            zn = z[n]
            for wo in range(wo_n):
                corner = ((ho * sh - top) * w_in + wo * sw - left) * c_n
                dyr, offr, keepr = dy[n, ho, wo], offsets[n, ho, wo], keep[n, ho, wo] if dropout else all_kept
                for c in range(c_n):
                    g, vc, _ = _gradient(dyr[c], keepr[c] if dropout else True, dropout, drop_scale,
                                         zn[corner + cells[offr[c]] + c], mean[c], scale[c], beta[c], before, after,
                                         zero)
                    part[c] += g
                    part_vc[c] += g * vc
            _flush_chunk(sum_g[b], part)
            _flush_chunk(sum_g_vc[b], part_vc)


@njit(cache=True, parallel=True)
def _pooled_dz_kernel(dy, z, offsets, keep, mean, scale, beta, before, after, cells, w_in, sh, sw, top, left,
                      drop_scale, a, row_k, row_offset, dz, row_mean):
    # one task per image (windows overlap: only its owner adds into it): dz = k * (v - mean) + offset
    # everywhere (0 where a before-ReLU is off), then a * du added at each window's max cell;
    # z, dz (N, H*W*C) as in the sums; row_k, row_offset, row_mean: k, offset and mean repeated
    # along an image row (W*C), so that the first pass runs one loop a row
    n_img, ho_n, wo_n, c_n = dy.shape
    dropout, zero = keep.size > 0, dz.dtype.type(0)
    all_kept = np.ones(c_n, np.bool_)          # keep's row where there is no Dropout (keep is empty)
    run = row_k.size
    for n in prange(n_img):
        zn, dn = z[n], dz[n]
        for i in range(0, zn.size, run):
            zr, dr = zn[i:i + run], dn[i:i + run]
            for t in range(run):
                v = before if zr[t] < before else zr[t]            # _normalized's v, NaN passing
                dr[t] = row_k[t] * (v - row_mean[t]) + row_offset[t] if zr[t] > before else zero
        for ho in range(ho_n):
            for wo in range(wo_n):
                corner = ((ho * sh - top) * w_in + wo * sw - left) * c_n
                dyr, offr, keepr = dy[n, ho, wo], offsets[n, ho, wo], keep[n, ho, wo] if dropout else all_kept
                for c in range(c_n):
                    at = corner + cells[offr[c]] + c
                    g, _, passes = _gradient(dyr[c], keepr[c] if dropout else True, dropout, drop_scale, zn[at],
                                             mean[c], scale[c], beta[c], before, after, zero)
                    dn[at] += a[c] * g if passes else zero


@njit(cache=True, parallel=True)
def _rows_sums_kernel(dy, z, keep, mean, scale, beta, before, after, drop_scale, sum_g, sum_g_vc):
    # dy, z (M, C): per block of rows, sum of g and of g * (v - mean)
    m, c_n = z.shape
    dropout, zero = keep.size > 0, dy.dtype.type(0)
    blocks = sum_g.shape[0]
    for b in prange(blocks):
        lo, hi = _span(b, blocks, m)
        part, part_vc = np.zeros(c_n, dy.dtype), np.zeros(c_n, dy.dtype)
        for r0 in range(lo, hi, CHUNK):
            for r in range(r0, min(hi, r0 + CHUNK)):
                for c in range(c_n):
                    g, vc, _ = _gradient(dy[r, c], keep[r, c] if dropout else True, dropout, drop_scale, z[r, c],
                                         mean[c], scale[c], beta[c], before, after, zero)
                    part[c] += g
                    part_vc[c] += g * vc
            _flush_chunk(sum_g[b], part)
            _flush_chunk(sum_g_vc[b], part_vc)


@njit(cache=True, parallel=True)
def _rows_dz_kernel(dy, z, keep, mean, scale, beta, before, after, drop_scale, a, k, offset, dz):
    # dz = a * g + k * (v - mean) + offset, 0 where a before-ReLU is off
    m, c_n = z.shape
    dropout, zero = keep.size > 0, dz.dtype.type(0)
    blocks = min(BLOCKS, m)
    for b in prange(blocks):
        lo, hi = _span(b, blocks, m)
        for r in range(lo, hi):
            for c in range(c_n):
                g, _, passes = _gradient(dy[r, c], keep[r, c] if dropout else True, dropout, drop_scale, z[r, c],
                                         mean[c], scale[c], beta[c], before, after, zero)
                _, vc = _normalized(z[r, c], mean[c], scale[c], beta[c], before, after)
                dz[r, c] = a[c] * g + k[c] * vc + offset[c] if passes else zero


@njit(cache=True, parallel=True)
def _moments_kernel(x, floor, shift, sums, squares):
    # x (M, C); sums, squares (blocks, C) float64 zeros; moments of max(x, floor), floor = 0 for
    # cnn8's ReLU before BN, -inf for none, taken about a shift (in x's dtype) as in ops/batchnorm.py
    m, c_n = x.shape
    blocks = sums.shape[0]
    for b in prange(blocks):
        lo, hi = _span(b, blocks, m)
        part, part_sq = np.zeros(c_n, x.dtype), np.zeros(c_n, x.dtype)
        for r0 in range(lo, hi, CHUNK):
            for r in range(r0, min(hi, r0 + CHUNK)):
                for c in range(c_n):
                    v = x[r, c]
                    d = (floor if v < floor else v) - shift[c]
                    part[c] += d
                    part_sq[c] += d * d
            _flush_chunk(sums[b], part)
            _flush_chunk(squares[b], part_sq)


def _channel_args(spec, dtype, mean, inv_std, gamma, beta):
    """mean, scale = gamma * inv_std and beta in `dtype` (z's), as the reference computes them, and
    the ReLUs' floors (before, after): 0 where the block has that ReLU, -inf where not."""
    channel = tuple(np.ascontiguousarray(v, dtype=dtype) for v in (mean, gamma * inv_std, beta))
    floors = tuple(dtype.type(0 if spec.relu == place else -np.inf) for place in ("before", "after"))
    return channel + floors


def _window_tables(pool, z_shape):
    """(cells, W, sh, sw, top, left): where each window offset i * kw + j sits in a flat image
    from the window's top-left corner, (i * W + j) * C (a table: the backward kernels divide
    nothing), and the geometry that places the corners."""
    (kh, kw), (sh, sw), ((top, _), (left, _)) = pool
    offsets = np.arange(kh * kw)
    return (offsets // kw * z_shape[2] + offsets % kw) * z_shape[3], z_shape[2], sh, sw, top, left


def _buffer(out, shape, dtype, name):
    return reuse_or_new(out, shape, dtype, f"epilogue: {name}")


def _optional(a, shape, dtype, name):
    """A present input as a C-contiguous array of `shape` (an error otherwise); an absent one empty."""
    if a is None:
        return np.empty((0,) * len(shape), dtype=dtype)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"epilogue: {name} must have the output's shape {tuple(shape)}, received {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)


def _rows(a):
    """The (M, C) view of a (..., C) array (empty arrays stay empty)."""
    return a.reshape(-1, a.shape[-1]) if a.size else a.reshape(0, 0)


def _batchnorm_only(spec, *extras):
    """Whether the block is BatchNormalization with or without a ReLU after it and nothing else
    (no pool; `extras`, the dropout draws or mask and the residual, None): what ops/batchnorm.py's
    kernels already do in one pass each way."""
    return spec.pool is None and spec.relu != "before" and all(extra is None for extra in extras)


def forward_numba(spec, z, mean, inv_std, gamma, beta, bits=None, residual=None, out=None, offsets_out=None,
                  keep_out=None):
    """numba version of `forward_reference` (same result); writes into the buffers given (out
    may be the residual itself)."""
    if _batchnorm_only(spec, bits, residual):                     # ops/batchnorm.py's own kernel
        y = batchnorm.normalize_numba(z, mean, inv_std, gamma, beta, relu=spec.relu == "after")
        return _into(y, out, "out"), None, None
    z = np.ascontiguousarray(z)
    shape = spec.output_shape(z.shape)
    y = _buffer(out, shape, z.dtype, "out")
    keep = _buffer(keep_out, shape, np.bool_, "keep_out") if bits is not None else np.empty((0,) * y.ndim, np.bool_)
    bits_in = _optional(bits, shape, np.uint32, "bits")
    residual_in = _optional(residual, shape, z.dtype, "residual")
    if residual is not None and np.shares_memory(residual_in, y):   # the kernels keep running maxima in y
        residual_in = residual_in.copy()
    dropout = (elementwise.keep_threshold(spec.rate), z.dtype.type(1 / (1 - spec.rate)))
    channel = _channel_args(spec, z.dtype, mean, inv_std, gamma, beta)
    with perf.kernel_threads(z.size):
        if spec.pool is None:
            _rows_forward_kernel(_rows(z), *channel, _rows(bits_in), *dropout, _rows(residual_in), _rows(y),
                                 _rows(keep))
            return y, None, (keep if bits is not None else None)
        offsets = _buffer(offsets_out, shape, np.uint8, "offsets_out")
        (kh, kw), (sh, sw), ((top, _), (left, _)) = spec.pool
        _pooled_forward_kernel(z, *channel, kh, kw, sh, sw, top, left, bits_in, *dropout, residual_in, y, offsets,
                               keep)
    return y, offsets, (keep if bits is not None else None)


def bind_forward(spec, z_shape, dtype, mean, inv_std, gamma, beta):
    """forward in inference (no dropout draws) for z of z_shape and dtype: run(z, residual=None) -> y.
    With a pool, the kernel's arguments and y are made once (the same y every call: compiler/plan.py);
    without one, forward itself."""
    spec.check(z_shape)
    if spec.pool is None:
        return lambda z, residual=None: forward(spec, z, mean, inv_std, gamma, beta, None, residual)[0]
    dtype, shape = np.dtype(dtype), spec.output_shape(z_shape)
    channel = _channel_args(spec, dtype, mean, inv_std, gamma, beta)
    dropout = (elementwise.keep_threshold(spec.rate), dtype.type(1 / (1 - spec.rate)))    # unused without draws
    (kh, kw), (sh, sw), ((top, _), (left, _)) = spec.pool
    y, offsets = np.empty(shape, dtype), np.empty(shape, np.uint8)
    no_bits, no_keep = _optional(None, shape, np.uint32, "bits"), _optional(None, shape, np.bool_, "keep")

    def run(z, residual=None):
        residual_in = _optional(residual, shape, dtype, "residual")
        if residual is not None and np.shares_memory(residual_in, y):   # the kernel keeps running maxima in y
            residual_in = residual_in.copy()
        _pooled_forward_kernel(np.ascontiguousarray(z), *channel, kh, kw, sh, sw, top, left, no_bits, *dropout,
                               residual_in, y, offsets, no_keep)
        return y
    return run


def _coefficients(sum_g, sum_g_vc, inv_std, gamma, m, training, dtype):
    """(dgamma, dbeta, a, k, offset) from the block sums: the formulas at the top."""
    inv_std64, gamma64 = (np.asarray(v, dtype=np.float64) for v in (inv_std, gamma))
    dbeta, dgamma = sum_g.sum(axis=0), sum_g_vc.sum(axis=0) * inv_std64
    a = gamma64 * inv_std64
    k, offset = (-a * inv_std64 * dgamma / m, -a * dbeta / m) if training else (0 * a, 0 * a)
    return dgamma.astype(dtype), dbeta.astype(dtype), *(v.astype(dtype) for v in (a, k, offset))


def backward_numba(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, training, out=None):
    """numba version of `backward_reference` (same result up to rounding); dz written into out if given."""
    if _batchnorm_only(spec, keep):
        dz, dgamma, dbeta = batchnorm.normalize_backward_numba(dy, z, mean, inv_std, gamma, training,
                                                               relu=spec.relu == "after", beta=beta)
        return _into(dz, out, "out"), dgamma, dbeta
    z, dy = np.ascontiguousarray(z), np.ascontiguousarray(dy, dtype=z.dtype)
    keep_in = _optional(keep, dy.shape, np.bool_, "keep")
    channel = _channel_args(spec, z.dtype, mean, inv_std, gamma, beta)
    drop_scale = z.dtype.type(1 / (1 - spec.rate))
    c = z.shape[-1]
    blocks = max(1, min(BLOCKS, dy.size // c // (dy.shape[2] if spec.pool else 1)))
    sum_g, sum_g_vc = np.zeros((blocks, c)), np.zeros((blocks, c))
    dz = _buffer(out, z.shape, z.dtype, "out")
    if spec.pool is None:
        args = (_rows(dy), _rows(z), _rows(keep_in), *channel, drop_scale)
        sums_kernel, dz_kernel, dz_out = _rows_sums_kernel, _rows_dz_kernel, _rows(dz)
    else:
        args = (dy, z.reshape(len(z), -1), np.ascontiguousarray(offsets), keep_in, *channel,
                *_window_tables(spec.pool, z.shape), drop_scale)
        sums_kernel, dz_kernel, dz_out = _pooled_sums_kernel, _pooled_dz_kernel, dz.reshape(len(z), -1)
    with perf.kernel_threads(z.size):
        sums_kernel(*args, sum_g, sum_g_vc)
        dgamma, dbeta, a, k, offset = _coefficients(sum_g, sum_g_vc, inv_std, gamma, z.size // c, training, z.dtype)
        if spec.pool is None:
            dz_kernel(*args, a, k, offset, dz_out)
        else:                           # its first pass runs one loop a row: k, offset, mean repeated along it
            row_k, row_offset, row_mean = (np.tile(v, z.shape[2]) for v in (k, offset, channel[0]))
            dz_kernel(*args, a, row_k, row_offset, dz_out, row_mean)
    return dz, dgamma, dbeta


def moments_numba(z, relu_first=False):
    """numba version of `moments_reference` (same result up to rounding), one pass over z."""
    x = _rows(np.ascontiguousarray(z))
    shift = np.maximum(x[0], 0) if relu_first else x[0].copy()
    floor = x.dtype.type(0 if relu_first else -np.inf)
    return batchnorm.shifted_moments(_moments_kernel, x, shift, z.dtype, floor)


# ----------------------------------------------------------------------------------------
# dispatch: numba where numba_pays; MINICNN_REFERENCE=1: the reference
# ----------------------------------------------------------------------------------------

def numba_pays(spec, z):
    """Whether the kernels beat the textbook ops' composition on z: always with a pool (the
    reference's max pooling gathers every window), from perf.EPILOGUE_NUMBA_MIN_SIZE numbers of
    z without one (benchmarks/kernels_epilogue.py --threshold)."""
    return spec.pool is not None or z.size >= perf.EPILOGUE_NUMBA_MIN_SIZE


def _into(result, buffer, name):
    return copied_into(result, buffer, f"epilogue: {name}")


def moments(z, relu_first=False):
    """Per-channel mean and variance of z (or of max(z, 0), cnn8's ReLU before BN): (..., C) -> (C,), (C,)."""
    return pick(moments_reference, moments_numba, z.size >= perf.EPILOGUE_NUMBA_MIN_SIZE)(z, relu_first)


def forward(spec, z, mean, inv_std, gamma, beta, bits=None, residual=None, out=None, offsets_out=None,
            keep_out=None):
    """y = [dropout](pool(act(BN(z)))) [+ residual] for the block `spec` -> (y, offsets or None,
    keep or None). bits: Dropout's uint32 draws of y's shape (elementwise.random_bits), None in
    inference; out, offsets_out, keep_out: buffers to write into (out may be the residual)."""
    spec.check(z.shape)
    if pick(forward_reference, forward_numba, numba_pays(spec, z)) is forward_reference:
        y, offsets, keep = forward_reference(spec, z, mean, inv_std, gamma, beta, bits, residual)
        return _into(y, out, "out"), _into(offsets, offsets_out, "offsets_out"), _into(keep, keep_out, "keep_out")
    return forward_numba(spec, z, mean, inv_std, gamma, beta, bits, residual, out, offsets_out, keep_out)


def backward(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, training, out=None):
    """dy (y's shape) -> (dz (z's shape), dgamma (C,), dbeta (C,)) for `forward`; training=True
    differentiates through the batch statistics. The residual's gradient is dy itself."""
    spec.check(z.shape)
    if pick(backward_reference, backward_numba, numba_pays(spec, z)) is backward_reference:
        dz, dgamma, dbeta = backward_reference(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, training)
        return _into(dz, out, "out"), dgamma, dbeta
    return backward_numba(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, training, out)
