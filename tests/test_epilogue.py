"""The fused epilogue (minicnn/ops/epilogue.py): naive loops == NumPy reference == numba kernels,
central differences in float64, and the textbook layers' chain (BatchNormalization, ReLU,
MaxPooling2D, Dropout, Add) forward and backward on the seed models' block orders.
"""
import itertools

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn import backend, gradcheck, perf
from minicnn.layers import Activation, Add, BatchNormalization, Dropout, MaxPooling2D
from minicnn.ops import elementwise
from minicnn.ops import epilogue as E
from minicnn.ops.padding import conv_geometry

EPSILON = 1e-3
POOLS = {"none": None, "2x2/2 valid": ((2, 2), (2, 2), "valid"), "3x3/2 same": ((3, 3), (2, 2), "same"),
         "3x3/1 same": ((3, 3), (1, 1), "same")}
# the seeds' blocks: cnn4 (BN, ReLU, pool, dropout; dense: no pool), cnn8 (ReLU, BN, ...), mini-Xception
# (BN, pool 3x3/2 same, Add; BN, ReLU), and a few more combinations
SEED_BLOCKS = [("after", "2x2/2 valid", True, False), ("after", "none", True, False),
               ("before", "2x2/2 valid", True, False), ("before", "none", False, False),
               (None, "3x3/2 same", False, True), ("after", "none", False, False)]
ALL_BLOCKS = list(itertools.product([None, "before", "after"], POOLS, [False, True], [False, True]))


def spec_of(relu, pool, h, w, rate=0.25):
    """An Epilogue with its pool geometry worked out for an h x w input."""
    if POOLS[pool] is None:
        return E.Epilogue(relu, None, rate)
    size, strides, padding = POOLS[pool]
    pads, _, _ = conv_geometry(h, w, size, strides, padding)
    return E.Epilogue(relu, (size, strides, pads), rate)


def block_inputs(spec, shape, dtype, seed, dropout, residual, spaced=False):
    """z, per-channel statistics (of this batch) and weights, dropout draws, residual and dy."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    z = gradcheck.spaced_input(shape, seed, gap=0.07) if spaced else rng.standard_normal(shape) * 2 + 0.3
    z = z.astype(dtype)
    mean, var = E.moments_reference(z, spec.relu == "before")
    inv_std = (1 / np.sqrt(var + dtype(EPSILON))).astype(dtype)
    gamma = (rng.standard_normal(c) * 0.5 + np.where(rng.random(c) < 0.2, -1.0, 1.0)).astype(dtype)  # some < 0
    beta = rng.standard_normal(c).astype(dtype)
    out_shape = spec.output_shape(shape)
    bits = elementwise.random_bits(rng, out_shape) if dropout else None
    res = rng.standard_normal(out_shape).astype(dtype) if residual else None
    dy = rng.standard_normal(out_shape).astype(dtype)
    return z, mean, inv_std, gamma, beta, bits, res, dy


def assert_close(actual, expected, dtype, tight=1e-12):
    """float64 to `tight`, float32 to 1e-4, relative to the array's largest entry."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == dtype
    rtol = tight if dtype == np.float64 else 1e-4
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def assert_same_cache(a, b):
    """The window offsets and dropout masks agree exactly (or are both absent)."""
    for x, y in zip(a[1:], b[1:]):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 5))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ALL_BLOCKS), shapes, st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31),
       st.booleans())
def test_naive_reference_and_numba_agree(block, shape, dtype, seed, training):
    relu, pool, dropout, residual = block
    n, h, w, c = shape
    assume(POOLS[pool] is None or POOLS[pool][2] == "same" or min(h, w) >= POOLS[pool][0][0])
    spec = spec_of(relu, pool, h, w)
    z_shape = shape if spec.pool is not None else (n * h, c)          # dense input without a pool
    z, mean, inv_std, gamma, beta, bits, res, dy = block_inputs(spec, z_shape, dtype, seed, dropout, residual)
    z_before, dy_before = z.copy(), dy.copy()
    outputs = [f(spec, z, mean, inv_std, gamma, beta, bits, res)
               for f in (E.forward_naive, E.forward_reference, E.forward_numba)]
    for out in outputs[1:]:
        assert_close(out[0], outputs[0][0], dtype)
        assert_same_cache(out, outputs[0])
    _, offsets, keep = outputs[0]
    grads = [f(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, training)
             for f in (E.backward_naive, E.backward_reference, E.backward_numba)]
    for grad in grads[1:]:
        for actual, expected in zip(grad, grads[0]):
            assert_close(actual, expected, dtype, tight=1e-10)
    assert np.array_equal(z, z_before) and np.array_equal(dy, dy_before)      # inputs never modified


@pytest.mark.parametrize("block", ALL_BLOCKS)
def test_numba_sums_over_many_rows_a_block_agree_with_the_reference(block):
    # the kernels sum runs of rows in z's dtype, then in float64 (ops/batchnorm.py's CHUNK): a long
    # batch puts several runs, the last one short, into every block of rows
    relu, pool, dropout, residual = block
    spec = spec_of(relu, pool, 8, 8)
    z_shape = (37, 8, 8, 3) if spec.pool is not None else (64 * E.CHUNK * 2 + 2 * 64 + 5, 3)
    for dtype in (np.float32, np.float64):
        z, mean, inv_std, gamma, beta, bits, res, dy = block_inputs(spec, z_shape, dtype, 4, dropout, residual)
        _, offsets, keep = E.forward_reference(spec, z, mean, inv_std, gamma, beta, bits, res)
        expected = E.backward_reference(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, True)
        actual = E.backward_numba(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, True)
        for a, e in zip(actual, expected):
            assert_close(a, e, dtype, tight=1e-10)
        for a, e in zip(E.moments_numba(z, relu == "before"), E.moments_reference(z, relu == "before")):
            assert_close(a, e, dtype, tight=1e-11)


@pytest.mark.parametrize("relu,pool,dropout,residual", [b for b in ALL_BLOCKS if b[1] != "none"])
def test_pooled_kernels_on_all_threads_agree_with_the_reference(relu, pool, dropout, residual):
    # a batch this size runs on numba's threads (perf.PARALLEL_MIN_SIZE): each thread starts mid-batch
    spec = spec_of(relu, pool, 12, 13)
    z_shape = (48, 12, 13, 24)
    assert np.prod(z_shape) >= perf.PARALLEL_MIN_SIZE
    z, mean, inv_std, gamma, beta, bits, res, dy = block_inputs(spec, z_shape, np.float32, 5, dropout, residual)
    expected = E.forward_reference(spec, z, mean, inv_std, gamma, beta, bits, res)
    actual = E.forward_numba(spec, z, mean, inv_std, gamma, beta, bits, res)
    assert_close(actual[0], expected[0], np.float32)
    assert_same_cache(actual, expected)
    offsets, keep = expected[1:]
    for a, e in zip(E.backward_numba(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, True),
                    E.backward_reference(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, True)):
        assert_close(a, e, np.float32)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moments_numba_equals_reference(relu, dtype):
    rng = np.random.default_rng(1)
    for shape, loc in [((3, 7, 5, 4), 0.0), ((1, 9, 9, 3), 1e3), ((700, 6), -0.5), ((1, 2), 0.0)]:
        z = (rng.standard_normal(shape) * 2 + loc).astype(dtype)
        for actual, expected in zip(E.moments_numba(z, relu), E.moments_reference(z, relu)):
            spread = 1.0 if loc == 0 else loc ** 2 * 1e-6
            assert_close(actual, expected, dtype, tight=1e-11 * max(1.0, spread))


def test_moments_with_relu_first_are_those_of_relu():
    z = np.random.default_rng(2).standard_normal((4, 5, 5, 3))
    expected = np.maximum(z, 0).reshape(-1, 3)
    for actual, e in zip(E.moments(z, relu_first=True), (expected.mean(axis=0), expected.var(axis=0))):
        np.testing.assert_allclose(actual, e, rtol=1e-12)


# ----------------------------------------------------------------------------------------
# central differences (float64)
# ----------------------------------------------------------------------------------------

def numeric_gradient(loss, a, h=1e-5):
    """d loss / d a by central differences, one entry at a time (a is changed and restored)."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        saved = a[i]
        a[i] = saved + h
        plus = loss()
        a[i] = saved - h
        minus = loss()
        a[i] = saved
        grad[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(analytic, numeric):
    return float(np.abs(analytic - numeric).sum() / max(np.abs(analytic).sum() + np.abs(numeric).sum(), 1e-12))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu,pool,dropout,residual", SEED_BLOCKS + [("after", "3x3/1 same", True, True)])
def test_backward_is_the_gradient(relu, pool, dropout, residual, training):
    spec = spec_of(relu, pool, 5, 7)
    shape = (2, 5, 7, 3) if spec.pool is not None else (9, 3)
    z, mean, inv_std, gamma, beta, bits, res, dy = block_inputs(spec, shape, np.float64, 3, dropout, residual,
                                                               spaced=True)
    statistics = {}

    def loss():
        if training:                     # the batch's statistics, as functions of z
            m, var = E.moments_reference(z, spec.relu == "before")
            statistics["mean"], statistics["inv_std"] = m, 1 / np.sqrt(var + EPSILON)
        else:
            statistics["mean"], statistics["inv_std"] = mean, inv_std
        y, _, _ = E.forward(spec, z, statistics["mean"], statistics["inv_std"], gamma, beta, bits, res)
        return float((y * dy).sum())

    loss()
    _, offsets, keep = E.forward(spec, z, statistics["mean"], statistics["inv_std"], gamma, beta, bits, res)
    for version in (E.backward_reference, E.backward_numba):
        dz, dgamma, dbeta = version(spec, dy, z, offsets, keep, statistics["mean"], statistics["inv_std"], gamma,
                                    beta, training)
        for analytic, a in [(dz, z), (dgamma, gamma), (dbeta, beta)]:
            assert relative_error(analytic, numeric_gradient(loss, a)) < 1e-7
        assert np.abs(dz).sum() > 0 and np.abs(dgamma).sum() > 0


# ----------------------------------------------------------------------------------------
# against the textbook layers
# ----------------------------------------------------------------------------------------

def textbook_chain(relu, pool, dropout, residual):
    """The layers of the block in the seed's order."""
    layers = [Activation("relu")] if relu == "before" else []
    layers.append(BatchNormalization())
    layers += [Activation("relu")] if relu == "after" else []
    if POOLS[pool] is not None:
        size, strides, padding = POOLS[pool]
        layers.append(MaxPooling2D(size, strides=strides, padding=padding))
    layers += [Dropout(0.25, seed=11)] if dropout else []
    return layers, (Add() if residual else None)


def chain_forward(layers, add, z, res, training):
    x = z
    for layer in layers:
        x = layer.forward(x, training=training)
    return add.forward([x, res], training=training) if add else x


def chain_backward(layers, add, dy):
    g = add.backward(dy)[0] if add else dy
    for layer in reversed(layers):
        g = layer.backward(g)
    return g


@pytest.fixture(params=["float32", "float64"])
def floatx(request):
    backend.set_floatx(request.param)
    yield np.dtype(request.param).type
    backend.set_floatx("float32")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu,pool,dropout,residual", SEED_BLOCKS + [(None, "3x3/2 same", True, True)])
def test_equals_the_textbook_layers(relu, pool, dropout, residual, training, floatx):
    spec = spec_of(relu, pool, 11, 13)
    shape = (3, 11, 13, 6) if spec.pool is not None else (17, 6)
    z, _, _, gamma, beta, _, res, dy = block_inputs(spec, shape, floatx, 5, False, residual)
    layers, add = textbook_chain(relu, pool, dropout, residual)
    bn = next(layer for layer in layers if isinstance(layer, BatchNormalization))
    bn.build((None,) + shape[1:])
    bn.gamma.value[...], bn.beta.value[...] = gamma, beta
    bn.moving_mean.value[...], bn.moving_variance.value[...] = beta * 0.1, gamma ** 2 + 0.5
    y_chain = chain_forward(layers, add, z, res, training)
    dz_chain = chain_backward(layers, add, dy)

    if training:
        mean, var = E.moments(z, relu_first=relu == "before")
    else:
        mean, var = beta * 0.1, gamma ** 2 + 0.5
    inv_std = 1 / np.sqrt(var + floatx(EPSILON))
    bits = elementwise.random_bits(np.random.default_rng(11), y_chain.shape) if dropout and training else None
    for forward, backward in [(E.forward_reference, E.backward_reference), (E.forward_numba, E.backward_numba)]:
        y, offsets, keep = forward(spec, z, mean, inv_std, gamma, beta, bits, res)
        dz, dgamma, dbeta = backward(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, training)
        assert_close(y, y_chain, floatx, tight=1e-10)
        for actual, expected in [(dz, dz_chain), (dgamma, bn.gamma.grad), (dbeta, bn.beta.grad)]:
            assert_close(actual, expected, floatx, tight=1e-10)
    if dropout and training:
        assert keep is not None and not keep.all() and keep.any()


# ----------------------------------------------------------------------------------------
# buffers, the reference switch, bad input
# ----------------------------------------------------------------------------------------

def test_forward_and_backward_write_into_the_buffers_given():
    spec = spec_of("after", "3x3/2 same", 9, 9)
    z, mean, inv_std, gamma, beta, bits, res, dy = block_inputs(spec, (2, 9, 9, 4), np.float32, 7, True, True)
    expected = E.forward_reference(spec, z, mean, inv_std, gamma, beta, bits, res)
    y_shape = expected[0].shape
    out, offsets_out, keep_out = np.full(y_shape, np.nan, np.float32), np.empty(y_shape, np.uint8), np.empty(
        y_shape, bool)
    result = E.forward(spec, z, mean, inv_std, gamma, beta, bits, res, out=out, offsets_out=offsets_out,
                       keep_out=keep_out)
    assert result[0] is out and result[1] is offsets_out and result[2] is keep_out
    assert_close(out, expected[0], np.float32)
    assert_same_cache(result, expected)
    in_place = res.copy()                                    # out may be the residual itself
    E.forward(spec, z, mean, inv_std, gamma, beta, bits, in_place, out=in_place)
    assert_close(in_place, expected[0], np.float32)
    dz_out = np.full(z.shape, np.nan, np.float32)
    dz, _, _ = E.backward(spec, dy, z, offsets_out, keep_out, mean, inv_std, gamma, beta, True, out=dz_out)
    assert dz is dz_out
    assert_close(dz, E.backward_reference(spec, dy, z, *expected[1:], mean, inv_std, gamma, beta, True)[0],
                 np.float32)


def test_the_reference_switch_runs_the_reference_and_fills_the_buffers(monkeypatch):
    spec = spec_of("before", "2x2/2 valid", 8, 8)
    z, mean, inv_std, gamma, beta, bits, res, dy = block_inputs(spec, (2, 8, 8, 3), np.float64, 8, True, False)
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    monkeypatch.setattr(E, "forward_numba", None)              # calling a kernel would fail
    monkeypatch.setattr(E, "backward_numba", None)
    out = np.empty((2, 4, 4, 3))
    y, offsets, keep = E.forward(spec, z, mean, inv_std, gamma, beta, bits, out=out)
    assert y is out
    assert_close(y, E.forward_naive(spec, z, mean, inv_std, gamma, beta, bits)[0], np.float64)
    dz_out = np.empty(z.shape)
    assert E.backward(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta, True, out=dz_out)[0] is dz_out


def test_bad_blocks_and_buffers_are_errors_naming_them():
    z = np.zeros((2, 4, 4, 3), np.float32)
    c = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="relu"):
        E.forward(E.Epilogue(relu="sideways"), z, c, c, c, c)
    with pytest.raises(ValueError, match="rate"):
        E.forward(E.Epilogue(rate=1.0), z, c, c, c, c)
    with pytest.raises(ValueError, match="256 window cells"):
        E.forward(E.Epilogue(pool=((17, 17), (1, 1), ((8, 8), (8, 8)))), z, c, c, c, c)
    with pytest.raises(ValueError, match=r"out must be a C-contiguous float32 array of shape \(2, 4, 4, 3\)"):
        E.forward_numba(E.Epilogue(), z, c, c, c, c, out=np.empty((2, 4, 4, 3), np.float64))
    with pytest.raises(ValueError, match="bits must have the output's shape"):
        E.forward_numba(E.Epilogue(rate=0.5), z, c, c, c, c, bits=np.zeros((2, 4, 4, 2), np.uint32))
