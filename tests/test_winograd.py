"""Winograd F(2x2, 3x3) (minicnn/ops/winograd.py): kernels against references, the convolution
against im2col's, each transform against its adjoint, and Conv2D's gradients through it."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn import backend, gradcheck, perf
from minicnn.layers import Conv2D
from minicnn.ops import winograd
from minicnn.ops.im2col import col2im_reference, im2col_reference
from minicnn.ops.padding import conv_geometry

case = st.fixed_dictionaries({
    "n": st.integers(1, 3), "h": st.integers(1, 9), "w": st.integers(1, 9), "c": st.integers(1, 5),
    "f": st.integers(1, 5), "padding": st.sampled_from(["same", "valid"]),
    "dtype": st.sampled_from([np.float32, np.float64]), "seed": st.integers(0, 2**32 - 1)})


def geometry(k):
    assume(k["padding"] == "same" or (k["h"] >= 3 and k["w"] >= 3))
    pads, ho, wo = conv_geometry(k["h"], k["w"], (3, 3), (1, 1), k["padding"])
    return pads[0][0], pads[1][0], ho, wo, pads


def arrays(k, *shapes):
    rng = np.random.default_rng(k["seed"])
    return [rng.standard_normal(s).astype(k["dtype"]) for s in shapes]


def assert_close(actual, expected, dtype):
    assert actual.dtype == expected.dtype == dtype and actual.shape == expected.shape
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(1.0, float(np.abs(expected).max())))


@settings(max_examples=40, deadline=None)
@given(case)
def test_numba_transforms_equal_the_references(k):
    top, left, ho, wo, _ = geometry(k)
    th, tw = winograd.tiles_hw(ho, wo)
    x, dy, v = arrays(k, (k["n"], k["h"], k["w"], k["c"]), (k["n"], ho, wo, k["f"]), (16, k["n"] * th * tw, k["c"]))
    m, = arrays({**k, "seed": k["seed"] + 1}, (16, k["n"] * th * tw, k["f"]))
    pairs = [(winograd.input_transform_numba(x, top, left, ho, wo), winograd.input_transform_reference(x, top, left, ho, wo)),
             (winograd.output_transform_numba(m, k["n"], ho, wo), winograd.output_transform_reference(m, k["n"], ho, wo)),
             (winograd.output_adjoint_numba(dy), winograd.output_adjoint_reference(dy)),
             (winograd.input_adjoint_numba(v, x.shape, top, left, ho, wo),
              winograd.input_adjoint_reference(v, x.shape, top, left, ho, wo))]
    for actual, expected in pairs:
        assert_close(actual, expected, k["dtype"])


@settings(max_examples=25, deadline=None)
@given(case)
def test_each_transform_is_the_transpose_of_its_adjoint(k):
    # <T x, v> = <x, T^T v> for every x, v: the backward transforms are the forward ones' transposes
    k = {**k, "dtype": np.float64}
    top, left, ho, wo, _ = geometry(k)
    th, tw = winograd.tiles_hw(ho, wo)
    x, v = arrays(k, (k["n"], k["h"], k["w"], k["c"]), (16, k["n"] * th * tw, k["c"]))
    m, dy = arrays({**k, "seed": k["seed"] + 1}, (16, k["n"] * th * tw, k["f"]), (k["n"], ho, wo, k["f"]))
    lhs = np.vdot(winograd.input_transform_reference(x, top, left, ho, wo), v)
    assert np.isclose(lhs, np.vdot(x, winograd.input_adjoint_reference(v, x.shape, top, left, ho, wo)), rtol=1e-12)
    lhs = np.vdot(winograd.output_transform_reference(m, k["n"], ho, wo), dy)
    assert np.isclose(lhs, np.vdot(m, winograd.output_adjoint_reference(dy)), rtol=1e-12)
    g, du = arrays(k, (3, 3, k["c"], k["f"]), (16, k["c"], k["f"]))
    assert np.isclose(np.vdot(winograd.kernel_transform(g), du), np.vdot(g, winograd.kernel_transform_adjoint(du)),
                      rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(case)
def test_conv3x3_and_its_backward_equal_the_im2col_convolution(k):
    top, left, ho, wo, pads = geometry(k)
    n, c, f = k["n"], k["c"], k["f"]
    x, kernel, dz = arrays(k, (n, k["h"], k["w"], c), (3, 3, c, f), (n, ho, wo, f))
    cols = im2col_reference(x, (3, 3), (1, 1), pads).reshape(-1, 9 * c)
    z_expected = (cols @ kernel.reshape(-1, f)).reshape(n, ho, wo, f)
    dkernel_expected = (cols.T @ dz.reshape(-1, f)).reshape(kernel.shape)
    dx_expected = col2im_reference(dz.reshape(-1, f) @ kernel.reshape(-1, f).T, x.shape, (3, 3), (1, 1), pads)
    z, saved = winograd.conv3x3(x, kernel, top, left, ho, wo)
    dx, dkernel = winograd.conv3x3_backward(dz, saved, x.shape, top, left)
    for actual, expected in [(z, z_expected), (dx, dx_expected), (dkernel, dkernel_expected)]:
        assert_close(actual, expected, k["dtype"])
    dx_again, _ = winograd.conv3x3_backward(dz, saved, x.shape, top, left)   # backward leaves `saved` intact
    np.testing.assert_array_equal(dx_again, dx)
    z_naive = winograd.conv3x3_naive(x, kernel, top, left, ho, wo)            # the formula, tile by tile
    assert_close(z_naive.astype(k["dtype"]), z_expected, k["dtype"])


@pytest.fixture
def every_conv3x3_on_winograd(monkeypatch):
    monkeypatch.setattr(perf, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(perf, "WINOGRAD_MIN_TILES", 1)
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)
    backend.set_floatx("float64")
    yield
    backend.set_floatx("float32")


@pytest.mark.parametrize("padding, shape", [("same", (2, 5, 6, 3)), ("valid", (2, 7, 5, 2)), ("same", (1, 3, 3, 1))])
def test_conv2d_gradients_through_winograd(every_conv3x3_on_winograd, padding, shape, monkeypatch):
    layer = Conv2D(4, 3, padding=padding)
    calls = []
    conv3x3 = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(1) or conv3x3(*a))
    results = gradcheck.check_layer(layer, gradcheck.spaced_input(shape, seed=3), training=True)
    assert calls, "the layer did not take the Winograd path"
    assert {"x", "kernel", "bias"} <= set(results)
    for result in results.values():
        assert result.error <= 1e-7, repr(result)


def test_conv2d_takes_winograd_only_where_it_was_measured_to_pay(monkeypatch):
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)
    assert winograd.pays((3, 3), (1, 1), 64, 12, 12, 128, 512)        # cnn4's third conv, training batch
    assert winograd.pays((3, 3), (1, 1), 64, 6, 6, 512, 512)          # its fourth: 576 tiles
    assert not winograd.pays((3, 3), (1, 1), 1, 12, 12, 128, 512)     # one image: 36 tiles
    assert not winograd.pays((3, 3), (1, 1), 64, 48, 48, 32, 32)      # 32 channels
    assert not winograd.pays((5, 5), (1, 1), 64, 24, 24, 64, 128)     # cnn4's 5x5 conv
    assert not winograd.pays((3, 3), (2, 2), 64, 12, 12, 128, 512)    # strided
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    assert not winograd.pays((3, 3), (1, 1), 64, 12, 12, 128, 512)    # the reference is im2col's
