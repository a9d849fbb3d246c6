"""Batch normalization over the last axis: statistics, normalization and the gradient.

Seen as a matrix x (M, C), M = N*H*W rows (or N for dense input), one column per channel:
    moments:   mean_c = 1/M sum_r x[r, c],   var_c = 1/M sum_r (x[r, c] - mean_c)**2
    forward:   x_hat = (x - mean) * inv_std,  inv_std = 1 / sqrt(var + epsilon)
               y = gamma * x_hat + beta  =  (x - mean) * scale + beta,  scale = gamma * inv_std
    backward:  dbeta = sum_r dy,   dgamma = sum_r dy * x_hat
               training (mean and var depend on x):
                 dx = gamma * inv_std / M * (M * dy - dbeta - x_hat * dgamma)
               inference (mean and var are constants):
                 dx = gamma * inv_std * dy
The training dx is the chain rule through mean and var written out; every term is a
per-channel number times a per-element array, so backward needs x_hat, which it
recomputes from x, mean and inv_std instead of keeping a second copy of the activations.

relu=True fuses a following ReLU (the usual conv, BN, ReLU block) into the same passes:
    forward:   y = max((x - mean) * scale + beta, 0)
    backward:  dy is first zeroed where (x - mean) * scale + beta was not positive (ReLU's
               backward), recomputed from x in the kernels' loops: no pass of its own over
               the activations, and no copy of y kept for it. Both versions compute it as
               their forward did, so the mask is exactly the forward's.

The reference makes a full-size temporary for every operator (x - mean, * inv_std, * gamma,
+ beta, ...); the kernels read x (and dy) once or twice and write once, summing in float64.
numba by default; the NumPy reference below perf.BATCHNORM_NUMBA_MIN_SIZE numbers, where a
kernel call gains too little. `normalize`, which inference runs, takes the kernel from
perf.NORMALIZE_MIN_SIZE numbers in at least perf.NORMALIZE_MIN_ROWS rows, so one image's
activations take it but a dense batch does not. Each rule was chosen with
benchmarks/kernels.py.
"""
import numpy as np

from .. import perf
from .jit import njit, pick, prange


# ----------------------------------------------------------------------------------------
# naive loops: the definitions, one channel at a time
# ----------------------------------------------------------------------------------------

def normalize_naive(x, mean, inv_std, gamma, beta):
    """y = gamma * (x - mean) * inv_std + beta, channel by channel (the last axis)."""
    y = np.empty_like(x)
    for c in range(x.shape[-1]):
        y[..., c] = gamma[c] * (x[..., c] - mean[c]) * inv_std[c] + beta[c]
    return y


def normalize_backward_naive(dy, x, mean, inv_std, gamma, training):
    """(dx, dgamma, dbeta) channel by channel, from the formulas at the top."""
    dx, dgamma, dbeta = np.empty_like(x), np.empty(x.shape[-1]), np.empty(x.shape[-1])
    for c in range(x.shape[-1]):
        g, x_hat = dy[..., c], (x[..., c] - mean[c]) * inv_std[c]
        m = g.size                                        # N*H*W values of this channel
        dbeta[c], dgamma[c] = g.sum(), (g * x_hat).sum()
        dx[..., c] = gamma[c] * inv_std[c] * g
        if training:                                      # mean and var depend on x too
            dx[..., c] = gamma[c] * inv_std[c] / m * (m * g - dbeta[c] - x_hat * dgamma[c])
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------
# NumPy reference: the formulas above, one array operation each
# ----------------------------------------------------------------------------------------

def moments_reference(x):
    """Mean and (biased) variance over every axis but the last: (..., C) -> (C,), (C,)."""
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes), x.var(axis=axes)


def normalize_reference(x, mean, inv_std, gamma, beta, relu=False):
    """y = gamma * (x - mean) * inv_std + beta, per channel (the last axis); then max(y, 0) if relu."""
    y = (x - mean) * (gamma * inv_std) + beta        # the kernel's order of operations, to the bit
    return np.maximum(y, 0) if relu else y


def normalize_backward_reference(dy, x, mean, inv_std, gamma, training, relu=False, beta=None):
    """Gradients of `normalize` -> (dx, dgamma, dbeta); training=True differentiates
    through the batch mean and variance as well. relu=True (give beta): the forward was
    relu=True, and its ReLU is differentiated first: dy where normalize(x) > 0, else 0."""
    axes = tuple(range(dy.ndim - 1))
    if relu:
        dy = np.where(normalize_reference(x, mean, inv_std, gamma, beta) > 0, dy, 0).astype(dy.dtype, copy=False)
    x_hat = (x - mean) * inv_std
    dgamma = (dy * x_hat).sum(axis=axes)
    dbeta = dy.sum(axis=axes)
    if not training:
        return dy * (gamma * inv_std), dgamma, dbeta
    m = dy.size // dy.shape[-1]
    dx = (gamma * inv_std / m) * (m * dy - dbeta - x_hat * dgamma)
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------
# numba kernels: rows split into blocks, one block per task, channels innermost
# ----------------------------------------------------------------------------------------
# A block of rows is summed into its own row of a (blocks, C) float64 array (no races),
# and the few block sums are added at the end. Within a block, each run of CHUNK rows is
# summed first in the input's dtype into a local array (LLVM then vectorizes the loop over
# channels at the input's width, without the float64 conversions). The moments are taken
# about a shift (the first row), which keeps E[(x-k)^2] - E[x-k]^2 accurate when |mean| >> std.

BLOCKS = perf.BATCHNORM_BLOCKS    # row blocks (a constant to the kernels: read when they compile)
CHUNK = 32                        # rows summed in the input's dtype before each float64 addition
WIDE_ROW = 128                    # numbers in a row of the sums kernels' view (see widening)


@njit(inline="always")          # inlined into each kernel: no call in the loop
def _block_rows(b, blocks, m):
    """Rows [lo, hi) of block b of m rows cut into `blocks` blocks (the last may be short)."""
    step = (m + blocks - 1) // blocks
    return b * step, min(m, (b + 1) * step)


@njit(inline="always")
def _flush_chunk(total, part):
    """total += part (float64 += the input's dtype), then part = 0 for the next chunk."""
    for c in range(part.size):
        total[c] += part[c]
        part[c] = 0


@njit(cache=True, parallel=True)
def _moments_kernel(x, shift, sums, squares):
    # x (M, C), shift (C,) in x's dtype; sums, squares (BLOCKS, C) float64 zeros
    m, c_n = x.shape
    blocks = sums.shape[0]
    for b in prange(blocks):
        lo, hi = _block_rows(b, blocks, m)
        part, part_sq = np.zeros(c_n, x.dtype), np.zeros(c_n, x.dtype)
        for r0 in range(lo, hi, CHUNK):
            for r in range(r0, min(hi, r0 + CHUNK)):
                for c in range(c_n):
                    d = x[r, c] - shift[c]
                    part[c] += d
                    part_sq[c] += d * d
            _flush_chunk(sums[b], part)
            _flush_chunk(squares[b], part_sq)


@njit(cache=True, parallel=True)
def _normalize_kernel(x, mean, scale, beta, relu, y):
    # y = (x - mean) * scale + beta per channel, scale = gamma * inv_std, then the optional
    # ReLU: one pass.
    m, c_n = x.shape
    blocks = min(BLOCKS, m)
    for b in prange(blocks):
        lo, hi = _block_rows(b, blocks, m)
        for r in range(lo, hi):
            for c in range(c_n):
                v = (x[r, c] - mean[c]) * scale[c] + beta[c]
                y[r, c] = 0 if relu and v < 0 else v      # NaN passes, as in np.maximum


# The backward kernels take g = dy where the forward's (x - mean) * scale + beta > floor, else
# 0: floor = 0 after a fused ReLU, -inf without one (every g = dy). g is dy times the
# comparison: a branch (or `if relu`) here stops LLVM vectorizing the loop, and a select
# measured slower too (benchmarks/kernels.py, bn_relu_backward). The one difference it
# makes: an inf or NaN in dy where the ReLU was off gives NaN (inf * 0), where ReLU's own
# backward gives 0; gradients that are not finite mean the run has diverged either way.

@njit(cache=True, parallel=True)
def _backward_sums_kernel(dy, x, mean, scale, beta, floor, sum_dy, sum_dy_xc):
    # per block: sum of g and of g * (x - mean), in float64
    m, c_n = x.shape
    blocks = sum_dy.shape[0]
    for b in prange(blocks):
        lo, hi = _block_rows(b, blocks, m)
        part, part_xc = np.zeros(c_n, x.dtype), np.zeros(c_n, x.dtype)
        for r0 in range(lo, hi, CHUNK):
            for r in range(r0, min(hi, r0 + CHUNK)):
                for c in range(c_n):
                    xc = x[r, c] - mean[c]
                    g = dy[r, c] * (xc * scale[c] + beta[c] > floor)
                    part[c] += g
                    part_xc[c] += g * xc
            _flush_chunk(sum_dy[b], part)
            _flush_chunk(sum_dy_xc[b], part_xc)


@njit(cache=True, parallel=True)
def _backward_dx_kernel(dy, x, mean, scale, beta, floor, a, k, offset, dx):
    # dx = a * g + k * (x - mean) + offset per channel: the training formula expanded,
    # a = gamma * inv_std, k = -a * inv_std * dgamma / M, offset = -a * dbeta / M.
    m, c_n = x.shape
    blocks = min(BLOCKS, m)
    for b in prange(blocks):
        lo, hi = _block_rows(b, blocks, m)
        for r in range(lo, hi):
            for c in range(c_n):
                xc = x[r, c] - mean[c]
                g = dy[r, c] * dx.dtype.type(xc * scale[c] + beta[c] > floor)
                dx[r, c] = a[c] * g + k[c] * xc + offset[c]


def _rows(a):
    """A C-contiguous (M, C) view of a (..., C) array."""
    a = np.ascontiguousarray(a)
    return a.reshape(-1, a.shape[-1])


# A sums kernel's loop over a row of 8 channels is half an AVX-512 vector, and LLVM runs it
# scalar: so the kernels see k rows at a time as one row of k*C numbers, the per-channel
# vectors repeated k times, and the k copies of each channel's sum are added at the end.

def widening(m, c):
    """k: view (M, C) rows k at a time, as (M/k, k*C), with k*C <= WIDE_ROW and k dividing M."""
    k = 1
    while 2 * k * c <= WIDE_ROW and m % (2 * k) == 0:
        k *= 2
    return k


def widened(k, *arrays):
    """(M, C) arrays as (M/k, k*C) views; each per-channel (C,) vector repeated k times."""
    if k == 1:
        return arrays
    return tuple(a.reshape(-1, k * a.shape[-1]) if a.ndim == 2 else a.reshape(1, -1).repeat(k, axis=0).reshape(-1)
                 for a in arrays)


def channel_sums(block_sums, k):
    """(blocks, k*C) sums of a widened view -> (C,): every block's and every copy's sum added."""
    sums = block_sums.sum(axis=0)
    return sums if k == 1 else sums.reshape(k, -1).sum(axis=0)


def moments_numba(x):
    """numba version of `moments_reference` (same argument, same result up to rounding)."""
    x2 = _rows(x)
    return shifted_moments(_moments_kernel, x2, x2[0].copy(), x.dtype)


def shifted_moments(kernel, x2, shift, dtype, *settings):
    """(mean, var) per channel in `dtype` from a moments kernel, kernel(x, *settings, shift, sums,
    squares), run on x2 (M, C) as wide rows (widening) and summed about `shift` (C,)."""
    m, c = x2.shape
    k = widening(m, c)
    blocks = min(BLOCKS, m // k)
    sums, squares = np.zeros((blocks, k * c)), np.zeros((blocks, k * c))
    wide_x, wide_shift = widened(k, x2, shift)
    with perf.kernel_threads(x2.size):
        kernel(wide_x, *settings, wide_shift, sums, squares)
    mean_shifted = channel_sums(sums, k) / m
    var = channel_sums(squares, k) / m - mean_shifted ** 2
    return (mean_shifted + shift).astype(dtype), np.maximum(var, 0).astype(dtype)


def _per_channel(x, mean, inv_std, gamma, beta):
    """mean, scale = gamma * inv_std and beta in x's dtype, as the forward kernel uses them."""
    return tuple(np.asarray(v).astype(x.dtype) for v in (mean, gamma * inv_std, beta))


def normalize_numba(x, mean, inv_std, gamma, beta, relu=False):
    """numba version of `normalize_reference` (same arguments, same result up to rounding)."""
    x2 = _rows(x)
    y = np.empty_like(x2)
    with perf.kernel_threads(x2.size):
        _normalize_kernel(x2, *_per_channel(x, mean, inv_std, gamma, beta), relu, y)
    return y.reshape(x.shape)


def normalize_backward_numba(dy, x, mean, inv_std, gamma, training, relu=False, beta=None):
    """numba version of `normalize_backward_reference` (same arguments, same result up to rounding)."""
    dy2, x2 = _rows(dy.astype(x.dtype, copy=False)), _rows(x)
    m, c = x2.shape
    # the ReLU's mask, recomputed as the forward computed y: y > 0 where (x - mean) * scale + beta > 0
    mean_x, scale, beta_x = _per_channel(x, mean, inv_std, gamma, beta if relu else np.zeros(c))
    floor = x.dtype.type(0 if relu else -np.inf)          # -inf: no ReLU, every g = dy
    k = widening(m, c)
    wide = widened(k, dy2, x2, mean_x, scale, beta_x)
    blocks = min(BLOCKS, m // k)
    sum_dy, sum_dy_xc = np.zeros((blocks, k * c)), np.zeros((blocks, k * c))
    inv_std64, gamma64 = (np.asarray(v, dtype=np.float64) for v in (inv_std, gamma))
    with perf.kernel_threads(x2.size):
        _backward_sums_kernel(*wide, floor, sum_dy, sum_dy_xc)
    dbeta = channel_sums(sum_dy, k)
    dgamma = channel_sums(sum_dy_xc, k) * inv_std64
    a = gamma64 * inv_std64
    if training:
        k_xc, offset = -a * inv_std64 * dgamma / m, -a * dbeta / m
    else:
        k_xc, offset = np.zeros(c), np.zeros(c)
    dx = np.empty_like(x2)
    coefficients = widened(k, *(v.astype(x.dtype) for v in (a, k_xc, offset)))
    with perf.kernel_threads(x2.size):
        _backward_dx_kernel(*wide, floor, *coefficients, *widened(k, dx))
    return dx.reshape(x.shape), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


# ----------------------------------------------------------------------------------------
# dispatch: MINICNN_REFERENCE=1 runs the NumPy reference, otherwise the measured winner
# ----------------------------------------------------------------------------------------

def moments(x):
    """Per-channel mean and variance of x (..., C) over every other axis -> (C,), (C,)."""
    return pick(moments_reference, moments_numba, x.size >= perf.BATCHNORM_NUMBA_MIN_SIZE)(x)


def normalize(x, mean, inv_std, gamma, beta, relu=False):
    """y = gamma * (x - mean) * inv_std + beta over the last axis, then max(y, 0) if relu;
    x (..., C), the rest (C,)."""
    pays = x.size >= perf.NORMALIZE_MIN_SIZE and x.size // x.shape[-1] >= perf.NORMALIZE_MIN_ROWS
    return pick(normalize_reference, normalize_numba, pays)(x, mean, inv_std, gamma, beta, relu)


def normalize_backward(dy, x, mean, inv_std, gamma, training, relu=False, beta=None):
    """dy (..., C) -> (dx (..., C), dgamma (C,), dbeta (C,)) for `normalize`; relu=True (with
    beta) for a relu=True forward."""
    backward = pick(normalize_backward_reference, normalize_backward_numba, x.size >= perf.BATCHNORM_NUMBA_MIN_SIZE)
    return backward(dy, x, mean, inv_std, gamma, training, relu, beta)
