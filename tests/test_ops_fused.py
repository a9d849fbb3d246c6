"""The one-pass kernels of minicnn/ops (batchnorm, elementwise, gemm) against their NumPy references.

Shapes come from hypothesis (1-4 leading axes, C = 1 up to 9, a few rows to a few
thousand, so blocks end mid-array), float32 and float64. Gathers and single products
(ReLU, dropout) must match exactly; sums (the BN statistics and gradients) to rtol 1e-12
in float64, where only the order of the additions differs.
"""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import perf
from minicnn.ops import batchnorm, conv, elementwise, gemm, im2col

SETTINGS = settings(max_examples=40, deadline=None)
DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def arrays(draw, min_rank=2, max_rank=4):
    """(shape, dtype, seed): a batch of rank 2 (N, C) or 4 (N, H, W, C), or anything between."""
    rank = draw(st.integers(min_rank, max_rank))
    shape = [draw(st.integers(1, 7)) for _ in range(rank - 1)] + [draw(st.integers(1, 9))]
    if draw(st.booleans()):       # now and then a long one: many blocks, the last one partial
        shape[0] = draw(st.integers(300, 3000)) * (1 if rank > 1 else 20)
    return tuple(shape), draw(DTYPES), draw(st.integers(0, 2**32 - 1))


def random(shape, dtype, rng, loc=0.0, scale=1.0):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def assert_sums_close(actual, expected, dtype, terms=1):
    """Equal up to the order of additions: rtol 1e-12 in float64; in float32 1e-5, or more for
    sums of many terms, where two summation orders differ by up to about terms * eps (float32
    eps = 1.2e-7: a sum of 47,628 terms was seen to differ by 2.5e-4 between NumPy's pairwise
    and a kernel's running sum). The float64 comparison is the one that pins the math down."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype == dtype          # float32 is never upcast
    assert actual.shape == expected.shape
    rtol = 1e-12 if dtype == np.float64 else max(1e-5, terms * 1.2e-7 / 4)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def bn_inputs(shape, dtype, seed, loc=0.0):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = random(shape, dtype, rng, loc, 2.0)
    dy = random(shape, dtype, rng)
    gamma, beta = random(c, dtype, rng, 1.0, 0.3), random(c, dtype, rng)
    mean, var = batchnorm.moments_reference(x)
    inv_std = (1 / np.sqrt(var + dtype(1e-3))).astype(dtype)
    return x, dy, mean, inv_std, gamma, beta


# ----------------------------------------------------------------------------------------
# batch normalization
# ----------------------------------------------------------------------------------------

@SETTINGS
@given(arrays(), st.sampled_from([0.0, 1e3]))
def test_moments_numba_equals_reference(spec, loc):
    # loc = 1000 with std 2: E[x^2] - E[x]^2 about zero would lose every digit; the
    # kernel sums about a shift, so it must still agree with NumPy's two-pass var.
    shape, dtype, seed = spec
    x, *_ = bn_inputs(shape, dtype, seed, loc)
    x_before = x.copy()
    (mean, var), (mean_ref, var_ref) = batchnorm.moments_numba(x), batchnorm.moments_reference(x)
    assert_sums_close(mean, mean_ref, dtype, terms=x.size // shape[-1])
    # var is a difference of sums: its error is relative to the squared spread of x about the shift
    rtol = 1e-12 if dtype == np.float64 else max(1e-5, (x.size // shape[-1]) * 1.2e-7 / 4)
    spread = float(np.square(x.astype(np.float64) - x.reshape(-1, shape[-1])[0]).mean(axis=tuple(range(x.ndim - 1))).max())
    np.testing.assert_allclose(var, var_ref, rtol=rtol, atol=rtol * max(1.0, spread))
    assert var.dtype == var_ref.dtype == dtype
    assert np.array_equal(x, x_before)


@SETTINGS
@given(arrays())
def test_normalize_numba_equals_reference(spec):
    x, _, mean, inv_std, gamma, beta = bn_inputs(*spec)
    actual = batchnorm.normalize_numba(x, mean, inv_std, gamma, beta)
    assert actual.flags.c_contiguous
    assert_sums_close(actual, batchnorm.normalize_reference(x, mean, inv_std, gamma, beta), spec[1])


@SETTINGS
@given(arrays(), st.booleans())
def test_normalize_backward_numba_equals_reference(spec, training):
    x, dy, mean, inv_std, gamma, _ = bn_inputs(*spec)
    dy_before = dy.copy()
    actual = batchnorm.normalize_backward_numba(dy, x, mean, inv_std, gamma, training)
    expected = batchnorm.normalize_backward_reference(dy, x, mean, inv_std, gamma, training)
    for a, e in zip(actual, expected):
        assert_sums_close(a, e, spec[1], terms=x.size // x.shape[-1])
    assert np.array_equal(dy, dy_before)                   # dy is never modified


@SETTINGS
@given(arrays())
def test_normalize_with_relu_is_relu_of_normalize(spec):
    x, _, mean, inv_std, gamma, beta = bn_inputs(*spec)
    expected = np.maximum(batchnorm.normalize_reference(x, mean, inv_std, gamma, beta), 0)
    reference = batchnorm.normalize_reference(x, mean, inv_std, gamma, beta, relu=True)
    np.testing.assert_array_equal(reference, expected)
    # the same operations in the same order: equal to the bit, so the masks agree too
    np.testing.assert_array_equal(batchnorm.normalize_numba(x, mean, inv_std, gamma, beta, relu=True), reference)


@SETTINGS
@given(arrays(), st.booleans())
def test_normalize_backward_with_relu_is_the_chain_rule_through_relu(spec, training):
    x, dy, mean, inv_std, gamma, beta = bn_inputs(*spec)
    relu_y = batchnorm.normalize_reference(x, mean, inv_std, gamma, beta, relu=True)
    expected = batchnorm.normalize_backward_reference(elementwise.relu_backward_reference(dy, relu_y), x, mean,
                                                      inv_std, gamma, training)
    reference = batchnorm.normalize_backward_reference(dy, x, mean, inv_std, gamma, training, relu=True, beta=beta)
    numba = batchnorm.normalize_backward_numba(dy, x, mean, inv_std, gamma, training, relu=True, beta=beta)
    plain = batchnorm.normalize_backward_reference(dy, x, mean, inv_std, gamma, training)
    for r, e, n in zip(reference, expected, numba):
        np.testing.assert_array_equal(r, e)
        assert_sums_close(n, r, spec[1], terms=x.size // x.shape[-1])
    if (relu_y == 0).any():                                        # the mask mattered (to dbeta at least:
        assert not all(np.array_equal(r, p) for r, p in zip(reference, plain))   # one value's dx is 0 anyway)


@settings(max_examples=20, deadline=None)
@given(arrays(max_rank=3), st.booleans())
def test_batchnorm_references_equal_the_naive_loops(spec, training):
    x, dy, mean, inv_std, gamma, beta = bn_inputs(*spec)
    assert_sums_close(batchnorm.normalize_reference(x, mean, inv_std, gamma, beta),
                      batchnorm.normalize_naive(x, mean, inv_std, gamma, beta), spec[1])
    naive = batchnorm.normalize_backward_naive(dy, x, mean, inv_std, gamma, training)
    for actual, expected in zip(batchnorm.normalize_backward_reference(dy, x, mean, inv_std, gamma, training), naive):
        np.testing.assert_allclose(actual, expected, rtol=1e-4 if spec[1] == np.float32 else 1e-10,
                                   atol=1e-3 if spec[1] == np.float32 else 1e-10)


def test_normalize_backward_training_is_the_gradient_through_the_batch_statistics():
    # dx from the formula against central differences of L = sum(normalize(x) * G)
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((5, 3, 2, 4)), rng.standard_normal((5, 3, 2, 4))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)

    def loss(x):
        mean, var = batchnorm.moments_reference(x)
        return float((batchnorm.normalize_reference(x, mean, 1 / np.sqrt(var + 1e-3), gamma, beta) * g).sum())

    mean, var = batchnorm.moments_reference(x)
    for impl in (batchnorm.normalize_backward_reference, batchnorm.normalize_backward_numba):
        dx, _, _ = impl(g, x, mean, 1 / np.sqrt(var + 1e-3), gamma, True)
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            e = np.zeros_like(x)
            e[i] = 1e-5
            numeric[i] = (loss(x + e) - loss(x - e)) / 2e-5
        assert np.abs(dx - numeric).max() < 1e-7 * max(1.0, np.abs(numeric).max())


# ----------------------------------------------------------------------------------------
# elementwise
# ----------------------------------------------------------------------------------------

def assert_exact(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert np.array_equal(actual, expected)


@SETTINGS
@given(arrays(min_rank=1))
def test_relu_numba_equals_reference(spec):
    shape, dtype, seed = spec
    x = random(shape, dtype, np.random.default_rng(seed))
    x.reshape(-1)[::5] = 0                                  # the kink
    assert_exact(elementwise.relu_numba(x), elementwise.relu_reference(x))
    y = elementwise.relu_reference(x)
    dy = random(shape, dtype, np.random.default_rng(seed + 1))
    assert_exact(elementwise.relu_backward_numba(dy, y), elementwise.relu_backward_reference(dy, y))


@SETTINGS
@given(arrays(min_rank=1))
def test_add_numba_equals_reference_and_other_operands_take_numpy(spec):
    shape, dtype, seed = spec
    a, b = (random(shape, dtype, np.random.default_rng(seed + k)) for k in (0, 1))
    assert_exact(elementwise.add_numba(a, b), elementwise.add_reference(a, b))
    assert_exact(elementwise.add(a.astype(np.float16), b), a.astype(np.float16) + b)     # NumPy's promotion
    assert_exact(elementwise.add(a, b[..., :1]), a + b[..., :1])                          # and broadcasting


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 300), st.sampled_from([0.1, 0.5]), DTYPES, st.integers(0, 2**32 - 1))
def test_elementwise_references_equal_the_naive_loops(size, rate, dtype, seed):
    rng = np.random.default_rng(seed)
    x, grad = random((size,), dtype, rng), random((size,), dtype, rng, 0.0, 1e-2)
    assert_exact(elementwise.relu_reference(x), elementwise.relu_naive(x))
    bits = elementwise.random_bits(rng, x.shape)
    (y, keep), (y_naive, keep_naive) = elementwise.dropout_reference(x, bits, rate), elementwise.dropout_naive(x, bits, rate)
    assert np.array_equal(keep, keep_naive)
    np.testing.assert_allclose(y, y_naive, rtol=1e-6)
    state = [random((size,), dtype, rng), random((size,), dtype, rng, 0.0, 1e-3), np.abs(random((size,), dtype, rng))]
    naive = [a.copy() for a in state]
    elementwise.adam_update_reference(state[0], grad, *state[1:], 1e-3, 0.9, 0.999, 1e-7)
    elementwise.adam_update_naive(naive[0], grad, *naive[1:], 1e-3, 0.9, 0.999, 1e-7)
    for a, e in zip(state, naive):
        np.testing.assert_allclose(a, e, rtol=1e-5 if dtype == np.float32 else 1e-12)


@SETTINGS
@given(arrays(min_rank=1), st.sampled_from([0.1, 0.25, 0.5, 0.7]))
def test_dropout_numba_equals_reference(spec, rate):
    shape, dtype, seed = spec
    rng = np.random.default_rng(seed)
    x, dy, bits = random(shape, dtype, rng), random(shape, dtype, rng), elementwise.random_bits(rng, shape)
    y, keep = elementwise.dropout_numba(x, bits, rate)
    y_ref, keep_ref = elementwise.dropout_reference(x, bits, rate)
    assert_exact(y, y_ref)
    assert_exact(keep, keep_ref)
    assert_exact(elementwise.dropout_backward_numba(dy, keep, rate),
                 elementwise.dropout_backward_reference(dy, keep_ref, rate))


@SETTINGS
@given(arrays(min_rank=1), st.integers(1, 50))
def test_adam_update_numba_equals_reference(spec, t):
    shape, dtype, seed = spec
    rng = np.random.default_rng(seed)
    value, grad = random(shape, dtype, rng), random(shape, dtype, rng, 0.0, 1e-2)
    m, v = random(shape, dtype, rng, 0.0, 1e-3), np.abs(random(shape, dtype, rng, 0.0, 1e-4))
    lr_t = 1e-3 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    state = [a.copy() for a in (value, m, v)]
    elementwise.adam_update_reference(value, grad, m, v, lr_t, 0.9, 0.999, 1e-7)
    elementwise.adam_update_numba(*state[:1], grad, *state[1:], lr_t, 0.9, 0.999, 1e-7)
    for a, e in zip(state, (value, m, v)):
        assert_sums_close(a, e, dtype)


@settings(max_examples=20, deadline=None)
@given(st.lists(arrays(min_rank=1), min_size=1, max_size=6), st.integers(1, 50))
def test_adam_update_many_equals_adam_update_on_each(specs, t):
    # small weights of one dtype are updated as one flat array, the rest one by one: every
    # number must get what adam_update gives it (exactly, but for the kernel's rounding when the
    # group is large enough for it), and each array keep its shape
    lr_t = 1e-3 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    states, grads = [], []
    for shape, dtype, seed in specs + [((40_000,), np.float32, 7)]:       # one above the kernel's threshold
        rng = np.random.default_rng(seed)
        states.append([random(shape, dtype, rng), random(shape, dtype, rng, 0.0, 1e-3),
                       np.abs(random(shape, dtype, rng, 0.0, 1e-4))])
        grads.append(random(shape, dtype, rng, 0.0, 1e-2))
    expected = [[a.copy() for a in state] for state in states]
    for (value, m, v), grad in zip(expected, grads):
        elementwise.adam_update(value, grad, m, v, lr_t, 0.9, 0.999, 1e-7)
    elementwise.adam_update_many(*([s[i] for s in states] for i in range(1)), grads,
                                 *([s[i] for s in states] for i in (1, 2)), lr_t, 0.9, 0.999, 1e-7)
    for state, want in zip(states, expected):
        for a, e in zip(state, want):
            assert a.shape == e.shape
            assert_sums_close(a, e, e.dtype)


# ----------------------------------------------------------------------------------------
# gemm, im2col into a given array
# ----------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(st.integers(1, 300), st.integers(1, 40), st.integers(1, 20), DTYPES, st.integers(0, 2**32 - 1))
def test_matmul_single_thread_equals_reference(m, k, f, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = random((m, k), dtype, rng), random((k, f), dtype, rng)
    out = np.empty((m, f), dtype)
    assert gemm.matmul_single_thread(a, b, out=out) is out
    assert_sums_close(out, gemm.matmul_reference(a, b), dtype)
    assert_sums_close(gemm.matmul_single_thread(a.T.copy().T, b), a @ b, dtype)   # a transposed view
    if m * k * f <= 2000:
        np.testing.assert_allclose(gemm.matmul_naive(a, b), a @ b, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-4 if dtype == np.float32 else 1e-12)


def test_matmul_gives_both_threads_only_to_large_or_wide_products(monkeypatch):
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)
    calls = []
    monkeypatch.setattr(gemm, "matmul_reference", lambda a, b, out=None: calls.append("all threads"))
    monkeypatch.setattr(gemm, "matmul_single_thread", lambda a, b, out=None: calls.append("one thread"))
    monkeypatch.setattr(gemm, "_row_tiles_kernel", lambda a, b, out, rows, bias: calls.append("row tiles"))
    monkeypatch.setattr(gemm, "_summed_tiles_kernel", lambda x, g, partial, rows: calls.append("summed tiles"))
    monkeypatch.setattr(gemm, "_column_blocks_kernel", lambda a, b, out, block: calls.append("column blocks"))
    for m, k, f in [(36864, 1600, 128),    # cnn4 training, 15 GFLOP
                    (576, 1600, 128),      # cnn4 batch 1, 0.24 GFLOP, wide
                    (36, 4608, 512),       # cnn4 batch 1, 0.17 GFLOP, wide
                    (123904, 72, 8),       # mini-Xception training, 0.14 GFLOP, narrow and tall
                    (2304, 128, 128),      # mini-Xception training, 0.08 GFLOP
                    (576, 1152, 7),        # mini-Xception training, its class-wise conv: thin
                    (1936, 16, 16),        # mini-Xception batch 1: too little work to wake the threads
                    (36, 9, 16384)]:       # cnn8's Winograd kernel transform: short and wide
        gemm.matmul(np.empty((m, k), np.float32), np.empty((k, f), np.float32))
    x, dz = np.empty((123904, 16), np.float32), np.empty((123904, 16), np.float32)
    gemm.matmul(x.T, dz)                   # a pointwise kernel's gradient: the tall side summed over
    gemm.matmul(x.T.copy(), dz)            # the same numbers, not a transposed view: one thread
    assert calls == ["all threads", "all threads", "all threads", "row tiles", "one thread", "row tiles",
                     "one thread", "column blocks", "summed tiles", "one thread"]


@settings(max_examples=25, deadline=None)
@given(st.integers(100, 3000), st.integers(1, 12), st.integers(1, 12), st.integers(1, 400), DTYPES,
       st.integers(0, 2**32 - 1))
def test_tall_products_equal_the_reference(m, k, f, tile_rows, dtype, seed):
    # small thresholds, so that products of a few hundred rows take many tiles, the last one partial
    rng = np.random.default_rng(seed)
    a, g, b = random((m, k), dtype, rng), random((m, f), dtype, rng), random((k, f), dtype, rng)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(perf, "TALL_PRODUCT_MIN_ROWS", 100)
        patch.setattr(perf, "TALL_PRODUCT_MIN_WORK", 0)
        patch.setattr(perf, "TALL_PRODUCT_TILE_MIN_ROWS", 1)
        patch.setattr(perf, "OPENBLAS_ONE_THREAD_WORK", tile_rows * k * f)       # tiles of tile_rows rows of a (x)
        out = np.empty((m, f), dtype)
        assert gemm.tall_product(a, b, out=out) is out
        assert_sums_close(out, gemm.matmul_reference(a, b), dtype, terms=k)
        assert_sums_close(gemm.tall_product(a, b.T.copy().T), a @ b, dtype, terms=k)        # b a transposed view
        bias = random(f, dtype, rng)
        assert_sums_close(gemm.tall_product(a, b, bias=bias), a @ b + bias, dtype, terms=k + 1)
        assert gemm.tall_product(a.T, g, bias=bias) is None           # a kernel gradient takes no bias
        assert_sums_close(gemm.tall_product(a.T, g), gemm.matmul_reference(a.T, g), dtype, terms=m)
        assert gemm.tall_product(a[:99], b) is None and gemm.tall_product(a.astype(np.float16), b) is None
        # an out= that np.matmul would refuse (wrong shape or dtype), not contiguous, or overlapping a: not taken
        for bad in (np.empty((m + 1, f), dtype), np.empty((m, f), np.float16), np.empty((m, 2 * f), dtype)[:, ::2]):
            assert gemm.tall_product(a, b, out=bad) is None
        if k == f:
            assert gemm.tall_product(a, b, out=a) is None


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(1, 3000), st.integers(1, 700), DTYPES, st.booleans(),
       st.integers(0, 2**32 - 1))
def test_wide_products_equal_the_reference(m, k, n, block, dtype, transposed, seed):
    # blocks of a few hundred columns, the last one partial; a with zeros (skipped) and maybe a
    # transposed view (kernel_transform_adjoint's kron(G, G)^T)
    rng = np.random.default_rng(seed)
    shape = (k, m) if transposed else (m, k)
    a = random(shape, dtype, rng) * (rng.random(shape) < 0.6).astype(dtype)
    a, b = (a.T if transposed else a), random((k, n), dtype, rng)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(perf, "WIDE_PRODUCT_MIN_WORK", 0)
        patch.setattr(perf, "WIDE_PRODUCT_BLOCK", block)
        out = np.full((m, n), np.nan, dtype)
        assert gemm.wide_product(a, b, out=out) is out
        assert_sums_close(out, gemm.matmul_reference(a, b), dtype, terms=k)
        if k > 1 and n > 1:
            assert gemm.wide_product(a, np.asfortranarray(b)) is None     # b must be C-contiguous
        assert gemm.wide_product(a.astype(np.float16), b) is None
        patch.setattr(perf, "WIDE_PRODUCT_MAX_LEFT", m * k - 1)
        assert gemm.wide_product(a, b) is None


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(1, 300), st.integers(1, 40), st.integers(1, 40), DTYPES, st.booleans(),
       st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_batched_products_shared_among_threads_equal_numpys(batch, m, k, f, dtype, transposed, b_transposed,
                                                            on_numba, seed):
    # the batch split among numba's threads or Python threads, each product on one OpenBLAS
    # thread: NumPy's numbers
    rng = np.random.default_rng(seed)
    a = random((batch, k, m), dtype, rng).transpose(0, 2, 1) if transposed else random((batch, m, k), dtype, rng)
    b = random((batch, f, k), dtype, rng).transpose(0, 2, 1) if b_transposed else random((batch, k, f), dtype, rng)
    with pytest.MonkeyPatch.context() as patch:
        found = perf.find_openblas_local_threads() or (lambda n: 1)          # as perf.enable() finds it
        patch.setattr(perf, "openblas_set_num_threads_local", found)
        patch.setattr(perf, "numba_blas_one_thread", on_numba)
        patch.setattr(gemm, "_batch_threads", lambda size: min(size, 3))    # an uneven split too
        out = np.empty((batch, m, f), dtype)
        assert gemm.batched_matmul_threads(a, b, out=out) is out
        assert_sums_close(out, np.matmul(a, b), dtype, terms=k)
        assert_sums_close(gemm.batched_matmul(a, b), np.matmul(a, b), dtype, terms=k)


def test_batched_products_go_to_numbas_threads_where_np_dot_takes_them(monkeypatch):
    # a C-contiguous a, and b C-contiguous or a transposed view of one (Winograd's M = V U and
    # dV = dM U^T), once numba's BLAS runs on one thread; the pool otherwise (dU = V^T dM)
    pooled = []
    monkeypatch.setattr(gemm, "_batch_on_pool", lambda a, b, out: pooled.append(True) or np.matmul(a, b, out=out))
    a = np.ones((4, 6, 5), np.float32)
    for one_thread, b, a_in, expected in [(True, np.ones((4, 5, 3), np.float32), a, []),
                                          (True, np.ones((4, 3, 5), np.float32).transpose(0, 2, 1), a, []),
                                          (True, np.ones((4, 6, 3), np.float32), a.transpose(0, 2, 1), [True]),
                                          (False, np.ones((4, 5, 3), np.float32), a, [True])]:
        pooled.clear()
        monkeypatch.setattr(perf, "numba_blas_one_thread", one_thread)
        np.testing.assert_array_equal(gemm.batched_matmul_threads(a_in, b), np.matmul(a_in, b))
        assert pooled == expected


def test_perf_enable_sets_the_blas_numba_calls_to_one_thread():
    # the library holding scipy's cython_blas sgemm, which numba's np.dot calls (an OpenBLAS here),
    # runs on one thread after enable(), in a fresh process
    import subprocess
    import sys

    code = ("import ctypes, json, minicnn.perf as perf\n"
            "from numba.extending import get_cython_function_address\n"
            "done = perf.enable()['numba_blas_one_thread']\n"
            "lib = ctypes.CDLL(perf._mapped_file(get_cython_function_address('scipy.linalg.cython_blas', 'sgemm')))\n"
            "get = getattr(lib, 'scipy_openblas_get_num_threads', None) or lib.openblas_get_num_threads\n"
            "print(json.dumps([done, get()]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [True, 1]


def test_numbas_blas_is_left_alone_when_it_is_numpys_own(monkeypatch):
    # one library for both (a conda environment): one thread there would slow NumPy's large products
    from numba.extending import get_cython_function_address
    cython_blas = perf._mapped_file(get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))
    found = perf._symbol(cython_blas, perf.SET_THREADS_NAMES)
    assert found is not None and perf._file_of(found) != perf._numpy_blas_file()      # two libraries here
    monkeypatch.setattr(perf, "_numpy_blas_file", lambda: perf._file_of(found))
    assert perf.numba_blas_to_one_thread() is False


def test_batched_products_go_to_the_threads_only_with_openblas_found_and_threads_to_share(monkeypatch):
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)
    calls = []
    monkeypatch.setattr(gemm, "batched_matmul_reference", lambda a, b: calls.append("numpy"))
    monkeypatch.setattr(gemm, "batched_matmul_threads", lambda a, b, out=None: calls.append("threads"))
    a = np.ones((16, 4, 4), np.float32)
    monkeypatch.setattr(perf, "openblas_set_num_threads_local", None)
    gemm.batched_matmul(a, a)                          # before perf.enable() found OpenBLAS's setting
    monkeypatch.setattr(perf, "openblas_set_num_threads_local", lambda n: 1)
    with perf.one_thread():
        gemm.batched_matmul(a, a)                      # one thread: nothing to share
    gemm.batched_matmul(a[:1], a[:1])                  # one product
    monkeypatch.setattr(perf, "BATCHED_PRODUCTS_SHARED", False)
    gemm.batched_matmul(a, a)                          # switched off
    monkeypatch.setattr(perf, "BATCHED_PRODUCTS_SHARED", True)
    import numba
    gemm.batched_matmul(a, a)
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    gemm.batched_matmul(a, a)
    expected = "threads" if numba.get_num_threads() > 1 else "numpy"
    assert calls == ["numpy", "numpy", "numpy", "numpy", expected, "numpy"]


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("m, k, f", [(8000, 9, 32), (40, 30, 20), (600, 1200, 300)])   # tall, small, all threads
def test_matmul_and_conv2d_add_a_bias_on_every_path(m, k, f, reference, monkeypatch):
    monkeypatch.setenv("MINICNN_REFERENCE", "1" if reference else "0")
    rng = np.random.default_rng(5)
    a, b, bias = random((m, k), np.float64, rng), random((k, f), np.float64, rng), random(f, np.float64, rng)
    assert (gemm.tall_product(a, b) is not None) == (m == 8000)
    out = np.empty((m, f))
    z = gemm.matmul(a, b, out=out, bias=bias)
    assert z is out or reference
    np.testing.assert_allclose(z, a @ b + bias, rtol=1e-12, atol=1e-12)
    x, kernel = random((2, 7, 6, 3), np.float64, rng), random((3, 3, 3, 4), np.float64, rng)
    pads = ((1, 1), (1, 1))
    plain, _ = conv.conv2d(x, kernel, (1, 1), pads)
    biased, _ = conv.conv2d(x, kernel, (1, 1), pads, bias=bias[:4])
    np.testing.assert_allclose(biased, plain + bias[:4], rtol=1e-12, atol=1e-12)


def test_matmul_with_a_wrong_out_fails_as_numpys_does(monkeypatch):
    monkeypatch.setattr(perf, "TALL_PRODUCT_MIN_ROWS", 64)
    a, b = np.ones((100, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError):
        gemm.matmul(a, b, out=np.empty((101, 4), np.float32))


def test_no_reference_takes_out_and_matmul_keeps_the_callers_buffer(monkeypatch):
    # references read as the math (no out= plumbing); the dispatcher writes into a caller's buffer
    import inspect
    from minicnn.ops import conv, depthwise, pooling, winograd
    references = [(module.__name__, name) for module in (batchnorm, conv, depthwise, elementwise, gemm, im2col,
                                                         pooling, winograd)
                  for name, function in vars(module).items()
                  if name.endswith("_reference") and "out" in inspect.signature(function).parameters]
    assert references == []
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((30, 20)), rng.standard_normal((20, 10))
    for all_threads in (True, False):
        monkeypatch.setattr(gemm, "on_all_threads", lambda m, k, f: all_threads)
        out = np.full((30, 10), np.nan)
        assert gemm.matmul(a, b, out=out) is out
        np.testing.assert_allclose(out, a @ b, rtol=1e-12)
        np.testing.assert_allclose(gemm.matmul(a, b), a @ b, rtol=1e-12)

def test_im2col_writes_into_out_and_checks_it():
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 3)).astype(np.float32)
    args = ((3, 3), (1, 1), ((1, 1), (1, 1)))
    expected = im2col.im2col_reference(x, *args)
    out = np.full((2 * 5 * 6, 27), np.nan, np.float32)
    im2col.im2col_numba(x, *args, out=out)
    assert np.array_equal(out, expected.reshape(out.shape))
    assert np.array_equal(im2col.im2col(x, *args, out=out), expected)      # the dispatcher returns its result
    with pytest.raises(ValueError, match="out must be"):
        im2col.im2col_numba(x, *args, out=np.empty((2 * 5 * 6, 26), np.float32))


# ----------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------

def dispatch_calls():
    big = np.ones((16, 256, 256), np.float32)              # 1M numbers: above every NUMBA_MIN_SIZE
    c = big.shape[-1]
    ones = np.ones(c, np.float32)
    return [
        (batchnorm, "moments", (big,)),
        (batchnorm, "normalize", (big, ones, ones, ones, ones)),
        (batchnorm, "normalize_backward", (big, big, ones, ones, ones, True)),
        (elementwise, "relu_backward", (big, big)),
        (elementwise, "adam_update", (big, big, big.copy(), big.copy(), 1e-3, 0.9, 0.999, 1e-7)),
    ]


@pytest.mark.parametrize("module, name, args", dispatch_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_minicnn_reference_routes_to_the_reference(monkeypatch, module, name, args):
    calls = []
    for kind in ("reference", "numba"):
        monkeypatch.setattr(module, f"{name}_{kind}", lambda *a, kind=kind: calls.append(kind) or (None, None, None))
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    getattr(module, name)(*args)
    monkeypatch.delenv("MINICNN_REFERENCE")
    getattr(module, name)(*args)
    assert calls == ["reference", "numba"]


def test_random_bits_are_uniform_32_bit_draws_and_keep_the_rate():
    rng = np.random.default_rng(0)
    bits = elementwise.random_bits(rng, (301, 7))                      # odd count: half a 64-bit draw unused
    assert bits.shape == (301, 7) and bits.dtype == np.uint32
    u = bits / 2.0**32
    assert abs(u.mean() - 0.5) < 0.01 and u.min() < 0.01 and u.max() > 0.99
    assert np.array_equal(elementwise.random_bits(np.random.default_rng(0), (301, 7)), bits)   # seeded
    big = elementwise.random_bits(rng, (400_000,))
    for rate in (0.1, 0.25, 0.5, 0.9):
        keep = big >= elementwise.keep_threshold(rate)
        assert abs(keep.mean() - (1 - rate)) < 0.003, rate          # 4.5 standard deviations at most
    assert elementwise.keep_threshold(0.25) == 2**30 and elementwise.keep_threshold(0.0) == 0
    assert not np.array_equal(elementwise.random_bits(rng, (301, 7)), bits)      # the generator moved on


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 70_000), st.integers(0, 2**64 - 1))
def test_random_pairs_numba_equal_the_reference(n, seed):
    # counter-based: draw i depends on the seed and i alone, so numba's blocks give NumPy's numbers
    expected, actual = np.empty(n, np.uint64), np.full(n, 7, np.uint64)
    elementwise.random_pairs_reference(seed, expected)
    elementwise.random_pairs_numba(seed, actual)
    assert np.array_equal(actual, expected)
    assert len(np.unique(expected)) == n                              # no repeats
    if n >= 20:
        assert np.unique(expected[:20] & 0xFF).size > 10               # low bits spread too


def test_each_op_runs_the_version_measured_faster(monkeypatch):
    # measured (benchmarks/kernels.py): numba loses on small arrays, and ReLU's forward gains
    # under the 1.5x that a default kernel must show; dropout (both ways) gains 1.6-1.9x
    calls = []
    for module, name in [(elementwise, "relu"), (elementwise, "relu_backward"), (elementwise, "dropout"),
                         (elementwise, "dropout_backward"), (elementwise, "adam_update"), (batchnorm, "moments"),
                         (batchnorm, "normalize")]:
        for kind in ("reference", "numba"):
            monkeypatch.setattr(module, f"{name}_{kind}", lambda *a, n=f"{name}_{kind}": calls.append(n))
    small, big = np.ones((64, 256), np.float32), np.ones((64, 24, 24, 64), np.float32)
    elementwise.relu_backward(small, small)
    batchnorm.moments(small)
    elementwise.relu(big)
    elementwise.dropout(big, big, 0.5)
    elementwise.dropout_backward(big, big > 0, 0.5)
    elementwise.dropout(small, small, 0.5)
    one_image = np.ones((1, 12, 12, 512), np.float32)       # batch-1 BN statistics: numba 1.0-1.3x
    batchnorm.moments(one_image)
    ones = np.ones(512, np.float32)
    batchnorm.normalize(one_image, ones, ones, ones, ones)   # its normalization: 1.55x, BN + ReLU 2.5x
    batchnorm.normalize(small, ones[:256], ones[:256], ones[:256], ones[:256])   # 64 rows: 0.8-0.95x
    bias = np.ones(512, np.float32)                          # Adam on a bias: too small for a kernel call
    elementwise.adam_update(bias, bias, bias.copy(), bias.copy(), 1e-3, 0.9, 0.999, 1e-7)
    mid_weight = np.ones((5, 5, 64, 128), np.float32)       # 205k numbers: numba 2.0-2.9x
    elementwise.adam_update(mid_weight, mid_weight, mid_weight.copy(), mid_weight.copy(), 1e-3, 0.9, 0.999, 1e-7)
    assert calls == ["relu_backward_reference", "moments_reference", "relu_reference", "dropout_numba",
                     "dropout_backward_numba", "dropout_reference", "moments_reference", "normalize_numba",
                     "normalize_reference", "adam_update_reference",
                     "adam_update_numba"]


def test_kernel_threads_uses_one_thread_for_small_work_and_restores():
    import numba

    before = numba.get_num_threads()
    with perf.kernel_threads(perf.PARALLEL_MIN_SIZE - 1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with perf.kernel_threads(perf.PARALLEL_MIN_SIZE):
        assert numba.get_num_threads() == before


def test_one_thread_sets_the_count_once_for_everything_inside_and_restores_it(monkeypatch):
    import numba

    calls = []
    set_num_threads = numba.set_num_threads
    monkeypatch.setattr(numba, "set_num_threads", lambda n: (calls.append(n), set_num_threads(n)))
    before = numba.get_num_threads()
    with perf.one_thread():
        with perf.kernel_threads(perf.PARALLEL_MIN_SIZE - 1), perf.one_thread():
            assert numba.get_num_threads() == 1
        assert numba.get_num_threads() == 1                    # the inner exits did not restore
    assert calls == [1, before] and numba.get_num_threads() == before
    with pytest.raises(KeyError):
        with perf.one_thread():
            raise KeyError("a failing pass")
    assert numba.get_num_threads() == before and not perf._threads.single


def test_small_inference_batches_run_on_one_thread_and_training_does_not(monkeypatch):
    from minicnn import layers, models

    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)     # reference passes run no kernel: no switch
    model = models.Sequential([layers.Conv2D(2, 3, input_shape=(8, 8, 1)), layers.Flatten(), layers.Dense(3)])
    seen = []
    dense_forward = model.layers[-1].forward
    monkeypatch.setattr(model.layers[-1], "forward",
                        lambda x, training=False: (seen.append(perf._threads.single), dense_forward(x, training))[1])
    small = np.zeros((perf.ONE_THREAD_MAX_INPUT // 64, 8, 8, 1), np.float32)
    model.forward(small)
    model.forward(small, training=True)
    model.forward(np.zeros((small.shape[0] + 1, 8, 8, 1), np.float32))
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    model.forward(small)
    assert seen == [True, False, False, False]


def test_matmul_runs_small_products_on_one_thread(monkeypatch):
    calls = []
    monkeypatch.setattr(gemm, "matmul_single_thread", lambda a, b, out=None: calls.append("single"))
    monkeypatch.setattr(gemm, "matmul_reference", lambda a, b, out=None: calls.append("reference"))
    small, big = np.ones((10, 10)), np.ones((2000, 2000))     # 2e3 and 1.6e10 flops
    gemm.matmul(small, small)
    gemm.matmul(big, big)
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    gemm.matmul(small, small)
    assert calls == ["single", "reference", "reference"]


def test_big_freed_arrays_are_reused_not_mapped_afresh():
    # perf.enable() keeps freed memory: a 40 MB array allocated again after being freed reuses
    # the process's memory instead of page-faulting a new mapping
    import subprocess
    import sys

    code = ("import json, resource, numpy as np, minicnn.perf\n"
            "done = minicnn.perf.enable()\n"
            "for _ in range(3): a = np.ones(10_000_000, np.float32); del a\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(10): a = np.ones(10_000_000, np.float32); del a\n"
            "print(json.dumps([done, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))\n")
    runs = {}
    for setting in ("kept", "default"):
        env = {**os.environ, "MINICNN_MALLOC": setting}
        runs[setting] = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                                  text=True, check=True).stdout)
    if not runs["kept"][0]["malloc_keeps_freed_memory"]:
        pytest.skip("no glibc, or a glibc that refuses a 1 GB mmap threshold: malloc keeps its own settings")
    assert not runs["default"][0]["malloc_keeps_freed_memory"]
    faults = {setting: run[1] for setting, run in runs.items()}
    assert faults["kept"] < 100 < faults["default"], faults      # 40 MB: 20 huge or 10,000 small pages


def test_perf_enable_sets_the_process_up_once_and_says_what_it_did():
    import subprocess
    import sys

    code = ("import json, os, minicnn, minicnn.perf as perf\n"
            "before = [os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')]\n"
            "first, again = perf.enable(), perf.enable()\n"
            "print(json.dumps([before, [os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')],\n"
            "                  first == again, first, perf.openblas_set_num_threads_local is not None]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    before, after, same, done, found = json.loads(subprocess.run([sys.executable, "-c", code], env=env,
                                                                 capture_output=True, text=True, check=True).stdout)
    assert before == [None, None] and same
    assert after == ["PASSIVE", perf.GOMP_SPINCOUNT] == [done["omp_wait_policy"], done["gomp_spincount"]]
    assert done["openblas_local_threads"] == found
    env.update(OMP_WAIT_POLICY="ACTIVE", GOMP_SPINCOUNT="7")           # values the user set win
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out)[1] == ["ACTIVE", "7"]


def test_perf_enable_flushes_denormals_to_zero_in_numpy_and_numba_threads():
    # a product below float32's smallest normal becomes 0 after enable(), on the calling thread
    # and on numba's threads started after it; MINICNN_DENORMALS=keep leaves it as IEEE says
    import subprocess
    import sys

    code = ("import json, numpy as np, numba, minicnn.perf as perf\n"
            "done = perf.enable()['denormals_flushed']\n"
            "@numba.njit(parallel=True)\n"
            "def products(a, b):\n"
            "    out = np.empty_like(a)\n"
            "    for i in numba.prange(a.size): out[i] = a[i] * b[i]\n"
            "    return out\n"
            "a, b = np.full(1 << 16, 1e-30, np.float32), np.full(1 << 16, 1e-10, np.float32)\n"
            "m, k = np.full((512, 512), 1e-30, np.float32), np.full((512, 512), 1e-12, np.float32)\n"
            "print(json.dumps([done, float((a * b).max()), float(products(a, b).max()), float((m @ k).max())]))\n")
    runs = {}
    for setting in ("flush", "keep"):
        env = {**os.environ, "MINICNN_DENORMALS": setting, "NUMBA_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
        runs[setting] = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                                  text=True, check=True).stdout)
    if not runs["flush"][0]:
        pytest.skip("not x86-64 Linux with glibc: denormals keep IEEE behaviour")
    assert runs["flush"] == [True, 0.0, 0.0, 0.0]          # NumPy, numba's threads, OpenBLAS's threaded product
    keep = runs["keep"]
    assert keep[0] is False and keep[1] == keep[2] > 0 and keep[3] > 0     # 1e-40 and 512 x 1e-42: denormals


def test_import_leaves_the_tuning_off_until_enable():
    import subprocess
    import sys

    code = ("import json, minicnn, minicnn.models, minicnn.perf as perf\n"
            "print(json.dumps([perf._enabled, perf.openblas_set_num_threads_local is None]))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [None, True]          # no OpenBLAS probe, no malloc or OpenMP setting


def test_the_ops_read_their_thresholds_from_perf_at_call_time(monkeypatch):
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)
    calls = []
    for kind in ("reference", "numba"):
        monkeypatch.setattr(elementwise, f"relu_backward_{kind}", lambda *a, kind=kind: calls.append(kind))
    big = np.ones((64, 24, 24, 64), np.float32)
    elementwise.relu_backward(big, big)
    monkeypatch.setattr(perf, "ELEMENTWISE_NUMBA_MIN_SIZE", big.size + 1)
    elementwise.relu_backward(big, big)
    assert calls == ["numba", "reference"]
