"""Elementwise passes of training: ReLU and its gradient, dropout, the Adam update, and a sum.

    add                  y = a + b                  (a layer read twice: its two gradients)
    relu                 y = max(x, 0)
    relu_backward        dx = dy where y > 0, else 0
    dropout              y = x * keep / (1 - rate),   keep = (u >= rate), u ~ U[0, 1)
                         drawn as 32-bit integers bits = u * 2**32 (see random_bits)
    dropout_backward     dx = dy * keep / (1 - rate)
    adam_update          m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
                         w -= lr_t * m / (sqrt(v) + eps)            (all three in place)

Each is one line of NumPy, but NumPy makes a full-size temporary for every operator (the
Adam line makes six): at the FER sizes the time goes into writing and re-reading those.
The numba kernels make one pass, reading each input once and writing each output once.
numba by default (ReLU's forward excepted: it waits on memory, and its kernel did not pay
reliably); the NumPy reference below perf.ELEMENTWISE_NUMBA_MIN_SIZE numbers, where a
kernel call costs more than it saves: see benchmarks/kernels.py.
"""
import numpy as np

from .. import backend, perf
from .jit import njit, pick, prange


# ----------------------------------------------------------------------------------------
# naive loops: the definitions, one number at a time
# ----------------------------------------------------------------------------------------

def relu_naive(x):
    """y = x where x > 0, else 0."""
    y = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        if x[i] > 0:
            y[i] = x[i]
    return y


def dropout_naive(x, bits, rate):
    """Keep each unit whose draw u = bits / 2**32 is at least `rate`, scaled by 1 / (1 - rate)."""
    y, keep = np.zeros_like(x), np.zeros(x.shape, dtype=bool)
    for i in np.ndindex(x.shape):
        if bits[i] / 2**32 >= rate:
            keep[i] = True
            y[i] = x[i] / x.dtype.type(1 - rate)
    return y, keep


def adam_update_naive(value, grad, m, v, lr_t, beta_1, beta_2, epsilon):
    """One Adam step, one weight at a time, in place on value, m and v."""
    for i in np.ndindex(value.shape):
        m[i] = beta_1 * m[i] + (1 - beta_1) * grad[i]
        v[i] = beta_2 * v[i] + (1 - beta_2) * grad[i] ** 2
        value[i] -= lr_t * m[i] / (np.sqrt(v[i]) + epsilon)


# ----------------------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------------------

def add_reference(a, b):
    """a + b, NumPy's (broadcasting, promoting)."""
    return a + b


def relu_reference(x):
    """y = max(x, 0)."""
    return np.maximum(x, 0)


def relu_backward_reference(dy, y):
    """dx = dy where the output y was positive, 0 elsewhere (the kink at 0 gets 0)."""
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


# Dropout's draws come from a counter-based generator: one 64-bit seed taken from the numpy
# Generator, then draw pair i is splitmix64(seed + (i + 1) * GOLDEN), split in two. Each draw
# depends on its index alone, so numba's threads make them in parallel, the same numbers as
# the NumPy lines below (splitmix64: Steele, Lea and Flood, "Fast splittable pseudorandom number
# generators", 2014; the seeding generator of the xoshiro family).

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX_1, MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def random_bits(rng, shape):
    """Uniform uint32 draws of `shape`, u * 2**32 for u ~ U[0, 1), seeded from the numpy Generator
    `rng` (which advances one 64-bit draw)."""
    n = int(np.prod(shape))
    seed = rng.bit_generator.random_raw()
    pairs = np.empty((n + 1) // 2, np.uint64)
    pick(random_pairs_reference, random_pairs_numba, _numba_pays(pairs))(seed, pairs)
    return pairs.view(np.uint32)[:n].reshape(shape)


def random_pairs_reference(seed, pairs):
    """pairs[i] = splitmix64(seed + (i + 1) * GOLDEN), in place (uint64 arithmetic wraps around)."""
    z = np.uint64(seed) + (np.arange(1, pairs.size + 1, dtype=np.uint64) * GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * MIX_1
    z = (z ^ (z >> np.uint64(27))) * MIX_2
    pairs[...] = z ^ (z >> np.uint64(31))


def keep_threshold(rate):
    """keep = bits >= this, i.e. u >= rate (exact to 2**-32)."""
    return np.uint32(rate * 2**32)


def dropout_reference(x, bits, rate):
    """Inverted dropout given uint32 draws `bits` (the shape of x): -> (y, keep),
    keep = bits >= rate * 2**32."""
    keep = bits >= keep_threshold(rate)
    return x * (keep * x.dtype.type(1 / (1 - rate))), keep


def dropout_backward_reference(dy, keep, rate):
    """dx = dy * keep / (1 - rate): the kept units pass the gradient, scaled as in forward."""
    return dy * (keep * dy.dtype.type(1 / (1 - rate)))


def adam_update_reference(value, grad, m, v, lr_t, beta_1, beta_2, epsilon):
    """One Adam step, in place on value, m and v (lr_t already holds the bias correction)."""
    m *= beta_1
    m += (1 - beta_1) * grad
    v *= beta_2
    v += (1 - beta_2) * grad * grad
    value -= lr_t * m / (np.sqrt(v) + epsilon)


# ----------------------------------------------------------------------------------------
# numba kernels: flat arrays cut into blocks, one block per task
# ----------------------------------------------------------------------------------------

BLOCK = perf.ELEMENTWISE_BLOCK     # numbers per task (a constant to the kernels: read when they compile)


# Each task takes one block as slices and runs a plain loop from 0 over it: LLVM
# vectorizes that. (Indexing the whole array from b * BLOCK instead leaves numba's
# negative-index check in the loop, which keeps LLVM from vectorizing it.)

@njit(cache=True, parallel=True)
def _add_kernel(a, b, y):
    for t in prange((a.size + BLOCK - 1) // BLOCK):
        s = slice(t * BLOCK, (t + 1) * BLOCK)
        ab, bb, yb = a[s], b[s], y[s]
        for i in range(ab.size):
            yb[i] = ab[i] + bb[i]


@njit(cache=True, parallel=True)
def _relu_kernel(x, y):
    for b in prange((x.size + BLOCK - 1) // BLOCK):
        xb, yb = x[b * BLOCK:(b + 1) * BLOCK], y[b * BLOCK:(b + 1) * BLOCK]
        for i in range(xb.size):
            v = xb[i]
            yb[i] = 0 if v < 0 else v        # NaN passes, as in np.maximum


@njit(cache=True, parallel=True)
def _relu_backward_kernel(dy, y, dx):
    for b in prange((dy.size + BLOCK - 1) // BLOCK):
        s = slice(b * BLOCK, (b + 1) * BLOCK)
        gb, yb, db = dy[s], y[s], dx[s]
        for i in range(gb.size):
            db[i] = gb[i] if yb[i] > 0 else 0


@njit(cache=True, parallel=True)
def _dropout_kernel(x, bits, threshold, scale, y, keep):
    for b in prange((x.size + BLOCK - 1) // BLOCK):
        s = slice(b * BLOCK, (b + 1) * BLOCK)
        xb, ub, yb, kb = x[s], bits[s], y[s], keep[s]
        for i in range(xb.size):
            k = ub[i] >= threshold
            kb[i] = k
            yb[i] = xb[i] * scale if k else 0


@njit(cache=True, parallel=True)
def _dropout_backward_kernel(dy, keep, scale, dx):
    for b in prange((dy.size + BLOCK - 1) // BLOCK):
        s = slice(b * BLOCK, (b + 1) * BLOCK)
        gb, kb, db = dy[s], keep[s], dx[s]
        for i in range(gb.size):
            db[i] = gb[i] * scale if kb[i] else 0


@njit(cache=True, parallel=True)
def _adam_kernel(value, grad, m, v, lr_t, beta_1, beta_2, one_minus_b1, one_minus_b2, epsilon):
    # scalars come in the arrays' dtype (1 - beta computed here would be float64: numba
    # promotes int - float32), so float32 weights are updated in float32
    for b in prange((value.size + BLOCK - 1) // BLOCK):
        s = slice(b * BLOCK, (b + 1) * BLOCK)
        wb, gb, mb, vb = value[s], grad[s], m[s], v[s]
        for i in range(wb.size):
            g = gb[i]
            mb[i] = mb[i] * beta_1 + one_minus_b1 * g
            vb[i] = vb[i] * beta_2 + one_minus_b2 * g * g
            wb[i] -= lr_t * mb[i] / (np.sqrt(vb[i]) + epsilon)


@njit(cache=True, parallel=True)
def _random_pairs_kernel(seed, pairs):
    # random_pairs_reference's lines, a block of draws a task
    for b in prange((pairs.size + BLOCK - 1) // BLOCK):
        block = pairs[b * BLOCK:(b + 1) * BLOCK]
        for i in range(block.size):
            z = seed + np.uint64(b * BLOCK + i + 1) * GOLDEN
            z = (z ^ (z >> np.uint64(30))) * MIX_1
            z = (z ^ (z >> np.uint64(27))) * MIX_2
            block[i] = z ^ (z >> np.uint64(31))


def _flat(a, dtype=None):
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def add_numba(a, b):
    """numba version of `add_reference` (a and b of one shape and dtype)."""
    y = np.empty(a.shape, dtype=a.dtype)
    with perf.kernel_threads(a.size):
        _add_kernel(_flat(a), _flat(b), y.reshape(-1))
    return y


def relu_numba(x):
    """numba version of `relu_reference`."""
    y = np.empty(x.shape, dtype=x.dtype)
    with perf.kernel_threads(x.size):
        _relu_kernel(_flat(x), y.reshape(-1))
    return y


def relu_backward_numba(dy, y):
    """numba version of `relu_backward_reference`."""
    dx = np.empty(dy.shape, dtype=dy.dtype)
    with perf.kernel_threads(dy.size):
        _relu_backward_kernel(_flat(dy), _flat(y, dy.dtype), dx.reshape(-1))
    return dx


def dropout_numba(x, bits, rate):
    """numba version of `dropout_reference`."""
    y = np.empty(x.shape, dtype=x.dtype)
    keep = np.empty(x.shape, dtype=np.bool_)
    with perf.kernel_threads(x.size):
        _dropout_kernel(_flat(x), _flat(bits), keep_threshold(rate), x.dtype.type(1 / (1 - rate)), y.reshape(-1),
                        keep.reshape(-1))
    return y, keep


def dropout_backward_numba(dy, keep, rate):
    """numba version of `dropout_backward_reference`."""
    dx = np.empty(dy.shape, dtype=dy.dtype)
    with perf.kernel_threads(dy.size):
        _dropout_backward_kernel(_flat(dy), _flat(keep), dy.dtype.type(1 / (1 - rate)), dx.reshape(-1))
    return dx


def random_pairs_numba(seed, pairs):
    """numba version of `random_pairs_reference` (the same numbers)."""
    with perf.kernel_threads(pairs.size):
        _random_pairs_kernel(np.uint64(seed), pairs)


def adam_update_numba(value, grad, m, v, lr_t, beta_1, beta_2, epsilon):
    """numba version of `adam_update_reference` (value, m, v: C-contiguous, updated in place)."""
    t = value.dtype.type
    with perf.kernel_threads(value.size):
        _adam_kernel(value.reshape(-1), _flat(grad, value.dtype), m.reshape(-1), v.reshape(-1),
                     t(lr_t), t(beta_1), t(beta_2), t(1 - beta_1), t(1 - beta_2), t(epsilon))


# ----------------------------------------------------------------------------------------
# dispatch: the numba kernel where it pays, the reference below perf.ELEMENTWISE_NUMBA_MIN_SIZE
# ----------------------------------------------------------------------------------------

def _numba_pays(a):
    return a.size >= perf.ELEMENTWISE_NUMBA_MIN_SIZE


def add(a, b):
    """a + b, a new array: numba's threads for float arrays of one shape and dtype where it pays."""
    same = a.shape == b.shape and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
    return pick(add_reference, add_numba, same and _numba_pays(a))(a, b)


def relu(x):
    """y = max(x, 0), elementwise. Always the reference: it waits on memory, and the kernel
    did not pay reliably (benchmarks/kernels.py)."""
    return relu_reference(x)


def relu_backward(dy, y):
    """dx = dy * (y > 0), from the forward's output y."""
    return pick(relu_backward_reference, relu_backward_numba, _numba_pays(dy))(dy, y)


def dropout(x, bits, rate):
    """Inverted dropout of x given uint32 draws (random_bits): -> (y, keep mask)."""
    return pick(dropout_reference, dropout_numba, _numba_pays(x))(x, bits, rate)


def dropout_backward(dy, keep, rate):
    """Gradient of dropout: dy * keep / (1 - rate)."""
    return pick(dropout_backward_reference, dropout_backward_numba, _numba_pays(dy))(dy, keep, rate)


def adam_update(value, grad, m, v, lr_t, beta_1, beta_2, epsilon):
    """One Adam step on value, m and v in place (see adam_update_reference); the kernel needs
    them C-contiguous."""
    in_place = value.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous
    update = pick(adam_update_reference, adam_update_numba, _numba_pays(value) and in_place)
    return update(value, grad, m, v, lr_t, beta_1, beta_2, epsilon)


# A model's many small weights (biases, BatchNormalization's gamma and beta, narrow kernels) would
# each pay NumPy's per-call cost five times a step: adam_update_many updates those of one dtype as
# one flat array, gathered and put back, each number getting the same operations as adam_update's.

def adam_update_many(values, grads, ms, vs, lr_t, beta_1, beta_2, epsilon):
    """adam_update on every (value, grad, m, v) of the four lists, in place."""
    groups = {}
    for arrays in zip(values, grads, ms, vs):
        small = not _numba_pays(arrays[0]) and not backend.use_reference()
        if small and all(a.dtype == arrays[0].dtype for a in arrays):
            groups.setdefault(arrays[0].dtype, []).append(arrays)
        else:
            adam_update(*arrays, lr_t, beta_1, beta_2, epsilon)
    for group in groups.values():
        value, grad, m, v = (np.concatenate([a.reshape(-1) for a in kind]) for kind in zip(*group))
        adam_update(value, grad, m, v, lr_t, beta_1, beta_2, epsilon)
        _put_back(group, value, m, v)


def _put_back(group, value, m, v):
    """Each weight's value, m and v in the group take their numbers back from the flat arrays."""
    start = 0
    for target_value, _, target_m, target_v in group:
        stop = start + target_value.size
        for target, flat in ((target_value, value), (target_m, m), (target_v, v)):
            target[...] = flat[start:stop].reshape(target.shape)
        start = stop
