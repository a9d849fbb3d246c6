"""Winograd F(2x2, 3x3) and F(4x4, 3x3) (minicnn/ops/winograd.py): the matrices compute the
correlation, the naive loops, references and numba kernels agree, the convolution and its
backward equal im2col's, central differences confirm the backward, and the per-shape rule."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn import backend, gradcheck, perf
from minicnn.layers import Conv2D
from minicnn.compiler import FusedStep
from minicnn.compiler.buffers import Buffers
from minicnn.compiler.stages import ConvStage
from minicnn.ops import conv, winograd
from minicnn.ops.padding import conv_geometry

TILINGS = [winograd.F2, winograd.F4, winograd.F4_5X5]
case = st.fixed_dictionaries({
    "n": st.integers(1, 3), "h": st.integers(1, 11), "w": st.integers(1, 11), "c": st.integers(1, 5),
    "f": st.integers(1, 5), "padding": st.sampled_from(["same", "valid"]),
    "dtype": st.sampled_from([np.float32, np.float64]), "seed": st.integers(0, 2**32 - 1)})


def geometry(k, r=3):
    assume(k["padding"] == "same" or (k["h"] >= r and k["w"] >= r))
    pads, ho, wo = conv_geometry(k["h"], k["w"], (r, r), (1, 1), k["padding"])
    return pads[0][0], pads[1][0], ho, wo, pads


def arrays(k, *shapes):
    rng = np.random.default_rng(k["seed"])
    return [rng.standard_normal(s).astype(k["dtype"]) for s in shapes]


def assert_close(actual, expected, dtype, tiling=winograd.F2):
    """Equal to float64's 1e-12, or float32's 1e-5 (1e-4 for 8x8 tiles: F(4x4, 5x5)'s transforms sum 64
    terms with entries up to 8 or so, so their rounding grows about tenfold; hypothesis found 5e-5)."""
    assert actual.dtype == expected.dtype == dtype and actual.shape == expected.shape
    rtol = 1e-12 if dtype == np.float64 else (1e-4 if tiling.a >= 8 else 1e-5)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(1.0, float(np.abs(expected).max())))


@pytest.fixture(autouse=True)
def kernels_on(monkeypatch):
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)


# ---- the matrices ---------------------------------------------------------------------------

@pytest.mark.parametrize("tiling", TILINGS + [winograd.toom_cook(2, (0, 1, -1, 2, -2), r=5),
                                              winograd.toom_cook(3, (0, 1, -1, Fraction(-1, 3)))],
                         ids=repr)
def test_the_matrices_compute_the_correlation(tiling):
    # y_i = sum_j d[i + j] g[j] for every d, g: one tile of the 1-D convolution
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, g = rng.standard_normal(tiling.a), rng.standard_normal(tiling.r)
        expected = [d[i:i + tiling.r] @ g for i in range(tiling.m)]
        np.testing.assert_allclose(tiling.AT @ ((tiling.G @ g) * (tiling.BT @ d)), expected, rtol=1e-12, atol=1e-12)


def test_f2_is_lavin_and_grays_and_f4_takes_the_more_accurate_points():
    # Lavin & Gray's F(2x2, 3x3) up to the sign of the infinity row of B^T and column of A^T
    flip = np.diag([1, 1, 1, -1])
    np.testing.assert_array_equal(flip @ winograd.F2.BT, [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
    np.testing.assert_array_equal(winograd.F2.G, [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    np.testing.assert_array_equal(winograd.F2.AT @ flip, [[1, 1, 1, 0], [0, 1, -1, -1]])
    # F(4x4) evaluates at 0, 1, -1, 1/2, -2 (A^T's second row) and infinity
    np.testing.assert_array_equal(winograd.F4.AT[1], [0, 1, -1, 0.5, -2, 0])
    assert winograd.tiling(4) is winograd.F4 and winograd.tiling(2, 3) is winograd.F2


def test_bad_points_and_unknown_tilings_are_refused():
    with pytest.raises(ValueError, match="needs 3 distinct points"):
        winograd.toom_cook(2, (0, 1, 1))
    with pytest.raises(ValueError, match="needs 5 distinct points"):
        winograd.toom_cook(4, (0, 1, -1))
    with pytest.raises(ValueError, match=r"no F\(3x3, 3x3\)"):
        winograd.tiling(3)
    x, kernel = np.zeros((1, 8, 8, 2)), np.zeros((5, 5, 2, 2))
    with pytest.raises(ValueError, match="takes a 3x3 kernel"):
        winograd.conv(x, kernel, 2, 2, 8, 8, tiling=winograd.F4)


# ---- naive == reference == numba ------------------------------------------------------------

@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
@settings(max_examples=40, deadline=None)
@given(k=case)
def test_numba_transforms_equal_the_references(tiling, k):
    top, left, ho, wo, _ = geometry(k, tiling.r)
    th, tw = winograd.tiles_hw(ho, wo, tiling.m)
    planes = tiling.a * tiling.a
    x, dy, v = arrays(k, (k["n"], k["h"], k["w"], k["c"]), (k["n"], ho, wo, k["f"]), (planes, k["n"] * th * tw, k["c"]))
    m, = arrays({**k, "seed": k["seed"] + 1}, (planes, k["n"] * th * tw, k["f"]))
    t = tiling
    pairs = [(winograd.input_transform_numba(x, top, left, ho, wo, t),
              winograd.input_transform_reference(x, top, left, ho, wo, t)),
             (winograd.output_transform_numba(m, k["n"], ho, wo, t),
              winograd.output_transform_reference(m, k["n"], ho, wo, t)),
             (winograd.output_adjoint_numba(dy, t), winograd.output_adjoint_reference(dy, t)),
             (winograd.input_adjoint_numba(v, x.shape, top, left, ho, wo, t),
              winograd.input_adjoint_reference(v, x.shape, top, left, ho, wo, t))]
    for actual, expected in pairs:
        assert_close(actual, expected, k["dtype"])


@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
@settings(max_examples=25, deadline=None)
@given(k=case)
def test_each_transform_is_the_transpose_of_its_adjoint(tiling, k):
    # <T x, v> = <x, T^T v> for every x, v: the backward transforms are the forward ones' transposes
    k, t = {**k, "dtype": np.float64}, tiling
    top, left, ho, wo, _ = geometry(k, t.r)
    th, tw = winograd.tiles_hw(ho, wo, t.m)
    x, v = arrays(k, (k["n"], k["h"], k["w"], k["c"]), (t.a * t.a, k["n"] * th * tw, k["c"]))
    m, dy = arrays({**k, "seed": k["seed"] + 1}, (t.a * t.a, k["n"] * th * tw, k["f"]), (k["n"], ho, wo, k["f"]))
    lhs = np.vdot(winograd.input_transform_reference(x, top, left, ho, wo, t), v)
    assert np.isclose(lhs, np.vdot(x, winograd.input_adjoint_reference(v, x.shape, top, left, ho, wo, t)), rtol=1e-12)
    lhs = np.vdot(winograd.output_transform_reference(m, k["n"], ho, wo, t), dy)
    assert np.isclose(lhs, np.vdot(m, winograd.output_adjoint_reference(dy, t)), rtol=1e-12)
    g, du = arrays(k, (t.r, t.r, k["c"], k["f"]), (t.a * t.a, k["c"], k["f"]))
    assert np.isclose(np.vdot(winograd.kernel_transform(g, t), du),
                      np.vdot(g, winograd.kernel_transform_adjoint(du, t)), rtol=1e-12)


@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
@settings(max_examples=40, deadline=None)
@given(k=case)
def test_conv_and_its_backward_equal_the_im2col_convolution(tiling, k):
    top, left, ho, wo, pads = geometry(k, tiling.r)
    n, c, f = k["n"], k["c"], k["f"]
    x, kernel, dz = arrays(k, (n, k["h"], k["w"], c), (tiling.r, tiling.r, c, f), (n, ho, wo, f))
    z_expected, cols = conv.conv2d_reference(x, kernel, (1, 1), pads)
    dx_expected, dkernel_expected = conv.conv2d_backward_reference(dz, cols, kernel, x.shape, (1, 1), pads)
    z, saved = winograd.conv(x, kernel, top, left, ho, wo, tiling=tiling)
    dx, dkernel = winograd.conv_backward(dz, saved, x.shape, top, left)
    for actual, expected in [(z, z_expected), (dx, dx_expected), (dkernel, dkernel_expected)]:
        assert_close(actual, expected, k["dtype"], tiling)
    dx_again, _ = winograd.conv_backward(dz, saved, x.shape, top, left)   # backward leaves `saved` intact
    np.testing.assert_array_equal(dx_again, dx)
    z_naive = winograd.conv_naive(x, kernel, top, left, ho, wo, tiling)      # the formula, tile by tile
    assert_close(z_naive.astype(k["dtype"]), z_expected, k["dtype"], tiling)


@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
def test_the_references_run_under_minicnn_reference(tiling, monkeypatch):
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    rng = np.random.default_rng(0)
    x, kernel = rng.standard_normal((1, 7, 9, 3)), rng.standard_normal((tiling.r, tiling.r, 3, 2))
    dz = rng.standard_normal((1, 7, 9, 2))
    moments, pad = np.zeros((2, 2)), tiling.r // 2
    z, saved = winograd.conv(x, kernel, pad, pad, 7, 9, tiling=tiling, moments=moments)
    dx, dkernel = winograd.conv_backward(dz, saved, x.shape, pad, pad)
    pads = ((pad, pad), (pad, pad))
    z_expected, cols = conv.conv2d_reference(x, kernel, (1, 1), pads)
    dx_expected, dk_expected = conv.conv2d_backward_reference(dz, cols, kernel, x.shape, (1, 1), pads)
    for actual, expected in [(z, z_expected), (dx, dx_expected), (dkernel, dk_expected)]:
        assert_close(actual, expected, np.float64)
    np.testing.assert_allclose(moments, [z.sum(axis=(0, 1, 2)), (z * z).sum(axis=(0, 1, 2))], rtol=1e-12)


# ---- central differences ----------------------------------------------------------------------

@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
@pytest.mark.parametrize("shape, padding", [((1, 5, 6, 2), "same"), ((2, 7, 5, 2), "valid"), ((1, 3, 3, 1), "same")])
def test_conv_backward_matches_central_differences(tiling, shape, padding):
    # L = sum(conv(x, K) * G), float64, h = 1e-5: the norm-wise error of dx and dK
    rng = np.random.default_rng(5)
    r = tiling.r
    pads, ho, wo = conv_geometry(shape[1], shape[2], (r, r), (1, 1), padding if min(shape[1:3]) >= r else "same")
    top, left = pads[0][0], pads[1][0]
    x, kernel = rng.standard_normal(shape), rng.standard_normal((r, r, shape[3], 3))
    g = rng.standard_normal((shape[0], ho, wo, 3))

    def loss():
        return float(np.sum(winograd.conv(x, kernel, top, left, ho, wo, tiling=tiling)[0] * g))

    _, saved = winograd.conv(x, kernel, top, left, ho, wo, tiling=tiling)
    dx, dkernel = winograd.conv_backward(g, saved, x.shape, top, left)
    for array, analytic in [(x, dx), (kernel, dkernel)]:
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            kept = array[index]
            array[index] = kept + gradcheck.H
            plus = loss()
            array[index] = kept - gradcheck.H
            numeric[index] = (plus - loss()) / (2 * gradcheck.H)
            array[index] = kept
        assert gradcheck.relative_error(analytic, numeric) <= 1e-8


# ---- buffers and moments ----------------------------------------------------------------------

@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
def test_out_buffers_are_written_and_returned(tiling):
    rng = np.random.default_rng(2)
    r, p = tiling.r, tiling.r // 2
    x, kernel, dz = (rng.standard_normal(s).astype(np.float32) for s in [(2, 9, 7, 3), (r, r, 3, 4), (2, 9, 7, 4)])
    workspace = Buffers()
    z_out, dx_out = np.full((2, 9, 7, 4), np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
    z, saved = winograd.conv(x, kernel, p, p, 9, 7, workspace, tiling, out=z_out)
    dx, dkernel = winograd.conv_backward(dz, saved, x.shape, p, p, workspace, out=dx_out)
    assert z is z_out and dx is dx_out and saved.v is workspace.arrays["V"]
    z_fresh, fresh = winograd.conv(x, kernel, p, p, 9, 7, tiling=tiling)
    np.testing.assert_array_equal(z, z_fresh)
    np.testing.assert_array_equal(dx, winograd.conv_backward(dz, fresh, x.shape, p, p)[0])
    with pytest.raises(ValueError, match=r"out must be a C-contiguous float32 array of shape \(2, 9, 7, 4\)"):
        winograd.conv(x, kernel, p, p, 9, 7, tiling=tiling, out=np.empty((2, 9, 7, 4)))


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("floor", [-np.inf, 0.0])
@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
def test_output_transform_adds_up_the_moments_a_batch_norm_needs(tiling, floor, reference, monkeypatch):
    # floor 0: the moments of max(z, 0), what a BatchNormalization after a ReLU normalizes by
    monkeypatch.setenv("MINICNN_REFERENCE", "1" if reference else "0")
    rng = np.random.default_rng(3)
    r, p = tiling.r, tiling.r // 2
    x, kernel = (rng.standard_normal(s).astype(np.float32) for s in [(3, 7, 6, 2), (r, r, 2, 5)])
    moments = np.full((2, 5), np.nan)
    z, _ = winograd.conv(x, kernel, p, p, 7, 6, tiling=tiling, moments=moments, moments_floor=floor)
    v64 = np.maximum(z, floor).astype(np.float64)
    assert (floor == -np.inf) == (v64 < 0).any()
    np.testing.assert_allclose(moments, [v64.sum(axis=(0, 1, 2)), (v64 * v64).sum(axis=(0, 1, 2))], rtol=1e-10)


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("tiling", TILINGS)
def test_the_bias_rides_the_output_passes_both_ways(tiling, reference, monkeypatch):
    """conv(..., bias=b) = conv(...) + b (the moments of the sum), and conv_backward's bias_sum = dz
    summed over N, Ho, Wo: what a Conv2D's bias needs, numba's kernels and the references alike."""
    monkeypatch.setenv("MINICNN_REFERENCE", "1" if reference else "0")
    rng = np.random.default_rng(4)
    r, p = tiling.r, tiling.r // 2
    x, kernel, bias, dz = (rng.standard_normal(s) for s in [(3, 7, 6, 2), (r, r, 2, 5), (5,), (3, 7, 6, 5)])
    moments, bias_sum = np.full((2, 5), np.nan), np.full(5, np.nan)
    z, saved = winograd.conv(x, kernel, p, p, 7, 6, tiling=tiling, moments=moments, bias=bias)
    plain, _ = winograd.conv(x, kernel, p, p, 7, 6, tiling=tiling)
    assert_close(z, plain + bias, np.float64, tiling)
    np.testing.assert_allclose(moments, [z.sum(axis=(0, 1, 2)), (z * z).sum(axis=(0, 1, 2))], rtol=1e-10)
    winograd.conv_backward(dz, saved, x.shape, p, p, bias_sum=bias_sum)
    np.testing.assert_allclose(bias_sum, dz.sum(axis=(0, 1, 2)), rtol=1e-12)


# ---- which method, and Conv2D through F(2x2) ---------------------------------------------------

@pytest.fixture
def every_conv3x3_on_winograd(monkeypatch):
    monkeypatch.setattr(perf, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(perf, "WINOGRAD_MIN_TILES", 1)
    backend.set_floatx("float64")
    yield
    backend.set_floatx("float32")


@pytest.mark.parametrize("padding, shape", [("same", (2, 5, 6, 3)), ("valid", (2, 7, 5, 2)), ("same", (1, 3, 3, 1))])
def test_conv2d_gradients_through_winograd(every_conv3x3_on_winograd, padding, shape, monkeypatch):
    # the compiler's Conv2D step (minicnn/compiler/stages.py) takes Winograd where it pays; the layer never does
    layer = Conv2D(4, 3, padding=padding)
    layer.build((None,) + shape[1:])
    calls = []
    by_tiles = winograd.conv
    monkeypatch.setattr(winograd, "conv", lambda *a, **k: calls.append(1) or by_tiles(*a, **k))
    step = FusedStep([ConvStage(layer, Buffers())])
    results = gradcheck.check_layer(step, gradcheck.spaced_input(shape, seed=3), training=True)
    assert calls, "the compiled step did not take the Winograd path"
    assert {"x", "kernel", "bias"} <= set(results)
    for result in results.values():
        assert result.error <= 1e-7, repr(result)


def test_conv2d_takes_winograd_only_where_it_was_measured_to_pay(monkeypatch):
    assert winograd.pays((3, 3), (1, 1), 64, 12, 12, 128, 512)        # cnn4's third conv, training batch
    assert winograd.pays((3, 3), (1, 1), 64, 6, 6, 512, 512)          # its fourth: 576 tiles
    assert not winograd.pays((3, 3), (1, 1), 1, 12, 12, 128, 512)     # one image: 36 tiles
    assert not winograd.pays((3, 3), (1, 1), 64, 48, 48, 32, 32)      # 32 channels
    assert not winograd.pays((5, 5), (1, 1), 64, 24, 24, 64, 128)     # cnn4's 5x5 conv
    assert not winograd.pays((3, 3), (2, 2), 64, 12, 12, 128, 512)    # strided
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    assert not winograd.pays((3, 3), (1, 1), 64, 12, 12, 128, 512)    # the reference is im2col's


def test_winograd_tile_picks_by_shape(monkeypatch):
    tile = winograd.winograd_tile
    assert tile((64, 12, 12, 128), (3, 3, 128, 512)) is winograd.F4   # cnn4's third conv: 4x4 tiles fit 12x12
    assert tile((64, 24, 24, 64), (3, 3, 64, 64)) is winograd.F4      # cnn8's 64 -> 64
    assert tile((64, 48, 48, 32), (3, 3, 32, 32)) is winograd.F4      # cnn8's first 32 -> 32
    assert tile((16, 12, 12, 128), (3, 3, 128, 128)) is winograd.F4   # 144 tiles
    assert tile((64, 24, 24, 64), (5, 5, 64, 128)) is winograd.F4_5X5  # cnn4's 5x5 conv
    assert tile((64, 24, 24, 64), (4, 4, 64, 128)) is None            # no tiling for a 4x4 kernel
    assert tile((64, 6, 6, 512), (3, 3, 512, 512)) is winograd.F2     # 6x6: 4x4 tiles would compute 8x8
    assert tile((1, 12, 12, 128), (3, 3, 128, 512)) is None           # one image: too few tiles
    # a transform kept between inference calls is paid once: F(4x4) from fewer tiles where it is small
    assert tile((1, 12, 12, 128), (3, 3, 128, 128), kernel_kept=True) is winograd.F4      # cnn8's face, 9 tiles
    # ... else F(2x2) from WINOGRAD_2X2_KEPT_MIN_TILES 2x2 tiles
    assert tile((1, 12, 12, 128), (3, 3, 128, 512), kernel_kept=True) is winograd.F2     # F(4x4): too many numbers
    assert tile((1, 8, 8, 128), (3, 3, 128, 128), kernel_kept=True) is winograd.F2       # 4 tiles of 4x4, 16 of 2x2
    assert tile((1, 6, 6, 512), (3, 3, 512, 512), kernel_kept=True) is winograd.F2       # cnn4's face, 9 tiles
    assert tile((1, 4, 4, 128), (3, 3, 128, 128), kernel_kept=True) is None              # 4 tiles of 2x2
    assert tile((1, 24, 24, 64), (5, 5, 64, 128), kernel_kept=True) is winograd.F4_5X5   # cnn4's face, 36 tiles
    assert tile((1, 24, 24, 64), (5, 5, 64, 128)) is None
    assert tile((64, 12, 12, 128), (3, 3, 128, 512), strides=(2, 2)) is None
    assert tile((64, 48, 48, 1), (3, 3, 1, 32)) is None               # one input channel
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    assert tile((64, 12, 12, 128), (3, 3, 128, 512)) is None
