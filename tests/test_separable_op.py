"""ops/separable.py: the fused depthwise + pointwise op against its definition and the layer.

naive loops == NumPy reference == numba kernels on random shapes (odd sizes, batch 1, C = 1,
non-square kernels, "valid" and "same"), float64 to rtol 1e-12 (only the order of additions
differs) and float32 to 1e-4 relative; the backward against central differences in float64;
and both against SeparableConv2D's own forward and backward on the same weights.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import SeparableConv2D, backend, perf
from minicnn.gradcheck import numeric_gradient
from minicnn.ops import pointwise, separable
from minicnn.ops.depthwise import depthwise_conv_reference
from minicnn.ops.padding import conv_geometry

pytest.importorskip("scipy", reason="the numba kernels' np.dot needs scipy")


@st.composite
def cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = draw(st.sampled_from(["same", "valid"]))
    h = draw(st.integers(kh if padding == "valid" else 1, 9))
    w = draw(st.integers(kw if padding == "valid" else 1, 9))
    return dict(n=draw(st.integers(1, 3)), h=h, w=w, c=draw(st.integers(1, 5)), f=draw(st.integers(1, 6)),
                kernel_size=(kh, kw), padding=padding, seed=draw(st.integers(0, 2**32 - 1)))


def arrays(case, dtype=np.float64):
    """x, depthwise_kernel, pointwise_kernel, pads and a dy for one case."""
    rng = np.random.default_rng(case["seed"])
    (kh, kw), c, f = case["kernel_size"], case["c"], case["f"]
    pads, ho, wo = conv_geometry(case["h"], case["w"], (kh, kw), (1, 1), case["padding"])
    x = rng.standard_normal((case["n"], case["h"], case["w"], c)).astype(dtype)
    kd = rng.standard_normal((kh, kw, c, 1)).astype(dtype)
    kp = rng.standard_normal((1, 1, c, f)).astype(dtype)
    dy = rng.standard_normal((case["n"], ho, wo, f)).astype(dtype)
    return x, kd, kp, pads, dy


def close(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)


def test_statistics_of_a_batch_on_all_threads():
    # mini-Xception's first separable layer at batch 8: numba's threads, tiles of whole rows, the
    # sums taken 4 pixels a row (ops.batchnorm.widening) in float32 within a tile
    case = dict(n=8, h=44, w=44, c=8, f=16, kernel_size=(3, 3), padding="same", seed=3)
    x, kd, kp, pads, _ = arrays(case, np.float32)
    assert x.size * 9 >= perf.PARALLEL_MIN_SIZE
    y, sums, squares = separable.separable_conv2d_numba(x, kd, kp, pads, statistics=True)
    y64 = separable.separable_conv2d_reference(x.astype(np.float64), kd, kp, pads).reshape(-1, case["f"])
    np.testing.assert_allclose(y, y64.reshape(y.shape), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sums, y64.sum(axis=0), rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(squares, (y64 ** 2).sum(axis=0), rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(cases(), st.sampled_from([np.float64, np.float32]))
def test_forward_naive_reference_numba_agree(case, dtype):
    x, kd, kp, pads, _ = arrays(case, dtype)
    naive = separable.separable_conv2d_naive(x, kd, kp, pads)
    y_ref, sums_ref, squares_ref = separable.separable_conv2d_reference(x, kd, kp, pads, statistics=True)
    y, sums, squares = separable.separable_conv2d_numba(x, kd, kp, pads, statistics=True)
    assert y.dtype == y_ref.dtype == dtype and sums.dtype == np.float64
    np.testing.assert_allclose(y_ref, naive, **close(dtype))
    np.testing.assert_allclose(y, y_ref, **close(dtype))
    y64 = naive.astype(np.float64).reshape(-1, case["f"])
    np.testing.assert_allclose(sums, y64.sum(axis=0), rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-4)
    np.testing.assert_allclose(squares, (y64 ** 2).sum(axis=0), rtol=1e-4 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(sums_ref, sums, **close(dtype))
    np.testing.assert_allclose(squares_ref, squares, **close(dtype))


@settings(max_examples=40, deadline=None)
@given(cases(), st.sampled_from([np.float64, np.float32]), st.booleans())
def test_backward_naive_reference_numba_agree(case, dtype, need_input_gradient):
    x, kd, kp, pads, dy = arrays(case, dtype)
    naive = separable.separable_conv2d_backward_naive(dy, x, kd, kp, pads, need_input_gradient)
    ref = separable.separable_conv2d_backward_reference(dy, x, kd, kp, pads, need_input_gradient)
    fast = separable.separable_conv2d_backward_numba(dy, x, kd, kp, pads, need_input_gradient)
    for name, a, b, c in zip(("dx", "ddepthwise", "dpointwise"), naive, ref, fast):
        if name == "dx" and not need_input_gradient:
            assert a is b is c is None
            continue
        assert b.shape == c.shape == a.shape and c.dtype == dtype, name
        np.testing.assert_allclose(b, a, **close(dtype), err_msg=name)
        np.testing.assert_allclose(c, b, **close(dtype), err_msg=name)


@pytest.mark.parametrize("shape", [(2, 7, 5, 3, 4), (1, 6, 6, 8, 16), (3, 5, 9, 1, 2), (2, 44, 44, 8, 16),
                                   (2, 6, 6, 128, 128)])
def test_kept_depthwise_output_gives_the_same_backward(shape):
    n, h, w, c, f = shape
    x, kd, kp, pads, dy = arrays(dict(n=n, h=h, w=w, c=c, f=f, kernel_size=(3, 3), padding="same", seed=3))
    d = np.empty(x.shape[:3] + (c,))
    y = separable.separable_conv2d_numba(x, kd, kp, pads, depthwise_out=d)
    np.testing.assert_allclose(d, depthwise_conv_reference(x, kd, (1, 1), pads), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, separable.separable_conv2d_reference(x, kd, kp, pads), rtol=1e-12, atol=1e-12)
    recomputed = separable.separable_conv2d_backward_numba(dy, x, kd, kp, pads)
    kept = separable.separable_conv2d_backward_numba(dy, x, kd, kp, pads, depthwise=d)
    for a, b in zip(recomputed, kept):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


def test_backward_matches_central_differences():
    x, kd, kp, pads, _ = arrays(dict(n=2, h=5, w=4, c=3, f=2, kernel_size=(3, 2), padding="same", seed=7))
    g = np.random.default_rng(8).standard_normal((2, 5, 4, 2))        # L = sum(y * G), G not all ones
    for backward in (separable.separable_conv2d_backward_reference, separable.separable_conv2d_backward_numba):
        dx, dkd, dkp = backward(g, x, kd, kp, pads)
        for analytic, array in ((dx, x), (dkd, kd), (dkp, kp)):
            numeric = numeric_gradient(lambda: float((separable.separable_conv2d_numba(x, kd, kp, pads) * g).sum()),
                                       array).reshape(array.shape)
            error = np.abs(analytic - numeric).sum() / max(np.abs(analytic).sum() + np.abs(numeric).sum(), 1e-12)
            assert error < 1e-8, (backward.__name__, error)


@pytest.fixture
def float64_layers():
    backend.set_floatx("float64")
    yield
    backend.set_floatx("float32")


@pytest.mark.parametrize("padding, use_bias", [("same", True), ("valid", False)])
def test_equals_the_separable_conv2d_layer(padding, use_bias, float64_layers):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8, 7, 4))
    layer = SeparableConv2D(5, 3, padding=padding, use_bias=use_bias)
    layer.build(x.shape)
    if use_bias:
        layer.bias.value[...] = rng.standard_normal(5)
    y_layer = layer.forward(x, training=True)
    dy = rng.standard_normal(y_layer.shape)
    dx_layer = layer.backward(dy)
    pads = conv_geometry(8, 7, (3, 3), (1, 1), padding)[0]
    kd, kp = layer.depthwise_kernel.value, layer.pointwise_kernel.value
    bias = layer.bias.value if use_bias else 0
    for forward in (separable.separable_conv2d_reference, separable.separable_conv2d_numba):
        np.testing.assert_allclose(forward(x, kd, kp, pads) + bias, y_layer, rtol=1e-10, atol=1e-12)
    for backward in (separable.separable_conv2d_backward_reference, separable.separable_conv2d_backward_numba):
        dx, dkd, dkp = backward(dy, x, kd, kp, pads)
        np.testing.assert_allclose(dx, dx_layer, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dkd, layer.depthwise_kernel.grad, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dkp, layer.pointwise_kernel.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reference", [False, True])
def test_dispatchers_write_the_callers_buffers(monkeypatch, reference):
    if reference:
        monkeypatch.setenv("MINICNN_REFERENCE", "1")
    x, kd, kp, pads, dy = arrays(dict(n=2, h=6, w=5, c=3, f=4, kernel_size=(3, 3), padding="same", seed=1),
                                 np.float32)
    y_out, dx_out = np.full(dy.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
    d_out = np.full(x.shape, np.nan, np.float32)
    y, sums, squares = separable.separable_conv2d(x, kd, kp, pads, statistics=True, out=y_out, depthwise_out=d_out)
    dx, dkd, dkp = separable.separable_conv2d_backward(dy, x, kd, kp, pads, out=dx_out, depthwise=d_out)
    assert y is y_out and dx is dx_out
    np.testing.assert_allclose(d_out, depthwise_conv_reference(x, kd, (1, 1), pads), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, separable.separable_conv2d_reference(x, kd, kp, pads), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sums, y.astype(np.float64).reshape(-1, 4).sum(axis=0), rtol=1e-5, atol=1e-5)
    expected = separable.separable_conv2d_backward_reference(dy, x, kd, kp, pads)
    for a, b in zip((dx, dkd, dkp), expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert separable.separable_conv2d_backward(dy, x, kd, kp, pads, need_input_gradient=False)[0] is None


def test_bad_shapes_and_buffers_are_errors_naming_them():
    x, kd, kp, pads, dy = arrays(dict(n=1, h=5, w=5, c=3, f=2, kernel_size=(3, 3), padding="same", seed=0))
    with pytest.raises(ValueError, match="depth_multiplier must be 1"):
        separable.separable_conv2d(x, np.ones((3, 3, 3, 2)), kp, pads)
    with pytest.raises(ValueError, match="pointwise_kernel"):
        separable.separable_conv2d(x, kd, np.ones((1, 1, 4, 2)), pads)
    with pytest.raises(ValueError, match="out must be a C-contiguous float64 array of shape"):
        separable.separable_conv2d_numba(x, kd, kp, pads, out=np.empty((1, 5, 5, 3)))


def test_tiles_keep_products_on_one_blas_thread():
    for wo, c, f in [(44, 8, 16), (11, 64, 64), (6, 128, 128)]:
        rows = pointwise.tile_rows(wo, c, f)
        assert rows >= 1 and (rows == 1 or rows * wo * c * f <= perf.OPENBLAS_ONE_THREAD_WORK)
