"""minicnn/ops/direct_conv.py: naive loops == NumPy reference == numba kernels, forward (with the
per-channel moments) and backward, and the backward is the gradient (central differences)."""
import numpy as np
import pytest

from minicnn import gradcheck
from minicnn.ops import direct_conv
from minicnn.ops.padding import conv_geometry

# (n, h, w, c, (kh, kw), f, strides, padding): odd sizes, strides 1 and 2, batch 1, C = 1,
# non-square windows and inputs, and the seed models' narrow layers in small
CASES = [
    (2, 7, 6, 3, (3, 3), 4, (1, 1), "same"),
    (1, 9, 8, 1, (3, 3), 5, (2, 2), "valid"),
    (3, 5, 5, 2, (1, 1), 3, (2, 2), "same"),
    (1, 6, 6, 1, (3, 3), 8, (1, 1), "valid"),       # mini_xception conv2d_1 in small
    (2, 8, 7, 8, (3, 3), 8, (1, 1), "valid"),       # conv2d_2
    (2, 11, 11, 4, (1, 1), 8, (2, 2), "same"),      # a residual 1x1 stride-2 conv
    (1, 3, 3, 6, (3, 3), 7, (1, 1), "same"),        # the head: 3x3 "same" on a 3x3 input
    (2, 9, 10, 1, (5, 5), 6, (1, 1), "same"),       # tflearn's first layer
    (2, 7, 9, 3, (2, 3), 5, (2, 1), "same"),
    (1, 10, 5, 2, (3, 2), 3, (1, 2), "valid"),
    (1, 13, 4, 2, (3, 3), 2, (2, 2), "same"),       # more rows than one tile at a narrow width
    (1, 40, 30, 2, (3, 3), 3, (1, 1), "same"),      # three tiles of the stride-1 three-tap rows
]
IDS = ["x".join(map(str, case[:4])) + f"-{case[4][0]}x{case[4][1]}/{case[6][0]}{case[6][1]}-{case[7]}" for case in CASES]


def arrays(case, dtype, seed=0):
    """x, kernel, dz, strides and pads of one case."""
    n, h, w, c, kernel_size, f, strides, padding = case
    pads, ho, wo = conv_geometry(h, w, kernel_size, strides, padding)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    kernel = rng.standard_normal(kernel_size + (c, f)).astype(dtype)
    dz = rng.standard_normal((n, ho, wo, f)).astype(dtype)
    return x, kernel, dz, strides, pads


def assert_close(actual, expected, dtype):
    """float64: equal up to the order of additions; float32: 1e-4 relative to the largest entry."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    rtol = 1e-12 if dtype == np.float64 else 1e-4
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_equals_the_naive_loops(case):
    x, kernel, dz, strides, pads = arrays(case, np.float64)
    z = direct_conv.direct_conv2d_naive(x, kernel, strides, pads)
    assert_close(direct_conv.direct_conv2d_reference(x, kernel, strides, pads), z, np.float64)
    np.testing.assert_allclose(direct_conv.channel_moments_reference(z), direct_conv.channel_moments_naive(z),
                               rtol=1e-12)
    dx, dk = direct_conv.direct_conv2d_backward_naive(dz, x, kernel, strides, pads)
    dx_ref, dk_ref = direct_conv.direct_conv2d_backward_reference(dz, x, kernel, strides, pads)
    assert_close(dx_ref, dx, np.float64)
    assert_close(dk_ref, dk, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_numba_forward_and_moments_equal_the_reference(case, dtype):
    x, kernel, _, strides, pads = arrays(case, dtype)
    x_before, kernel_before = x.copy(), kernel.copy()
    z_ref = direct_conv.direct_conv2d_reference(x, kernel, strides, pads)
    moments = np.full((2, kernel.shape[3]), np.nan)
    z = direct_conv.direct_conv2d_numba(x, kernel, strides, pads, moments=moments)
    assert_close(z, z_ref, dtype)
    assert_close(direct_conv.direct_conv2d_numba(x, kernel, strides, pads), z_ref, dtype)   # no moments asked
    expected = direct_conv.channel_moments_reference(z_ref)
    np.testing.assert_allclose(moments, expected, rtol=1e-10 if dtype == np.float64 else 1e-4,
                               atol=1e-4 * np.abs(expected).max())
    assert np.array_equal(x, x_before) and np.array_equal(kernel, kernel_before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_numba_backward_equals_the_reference(case, dtype):
    x, kernel, dz, strides, pads = arrays(case, dtype)
    dz_before = dz.copy()
    dx_ref, dk_ref = direct_conv.direct_conv2d_backward_reference(dz, x, kernel, strides, pads)
    dx, dk = direct_conv.direct_conv2d_backward_numba(dz, x, kernel, strides, pads)
    assert_close(dx, dx_ref, dtype)
    assert_close(dk, dk_ref, dtype)
    no_dx, dk_alone = direct_conv.direct_conv2d_backward_numba(dz, x, kernel, strides, pads,
                                                                need_input_gradient=False)
    assert no_dx is None
    assert_close(dk_alone, dk_ref, dtype)
    assert np.array_equal(dz, dz_before)


def test_the_backward_zeroes_its_input_gradient_itself(monkeypatch):
    """dx comes from np.empty_like and is zeroed image by image inside the kernel: stale numbers
    in the fresh buffer (NaN here) must not reach the result."""
    x, kernel, dz, strides, pads = arrays(CASES[0], np.float32)
    expected = direct_conv.direct_conv2d_backward_reference(dz, x, kernel, strides, pads)[0]
    monkeypatch.setattr(np, "empty_like", lambda a, *args, **kwargs: np.full_like(a, np.nan, *args, **kwargs))
    assert_close(direct_conv.direct_conv2d_backward_numba(dz, x, kernel, strides, pads)[0], expected, np.float32)


def loss_and_gradients(case, seed):
    """L(x, K) = sum(conv(x, K) * G) for a fixed random G, and the dispatchers' dL/dx, dL/dK."""
    x, kernel, g, strides, pads = arrays(case, np.float64, seed)

    def loss():
        return float(np.sum(direct_conv.direct_conv2d(x, kernel, strides, pads) * g))

    dx, dk = direct_conv.direct_conv2d_backward(g, x, kernel, strides, pads)
    return loss, x, kernel, dx, dk


@pytest.mark.parametrize("path", ["numba", "reference"])
@pytest.mark.parametrize("case", CASES[:9], ids=IDS[:9])
def test_backward_equals_central_differences(monkeypatch, case, path):
    if path == "reference":
        monkeypatch.setenv("MINICNN_REFERENCE", "1")
    loss, x, kernel, dx, dk = loss_and_gradients(case, seed=1)
    assert gradcheck.relative_error(dx, gradcheck.numeric_gradient(loss, x).reshape(x.shape)) < 1e-8
    assert gradcheck.relative_error(dk, gradcheck.numeric_gradient(loss, kernel).reshape(kernel.shape)) < 1e-8


@pytest.mark.parametrize("path", ["numba", "reference"])
def test_no_input_gradient_gives_none_and_the_same_kernel_gradient(monkeypatch, path):
    if path == "reference":
        monkeypatch.setenv("MINICNN_REFERENCE", "1")
    x, kernel, dz, strides, pads = arrays(CASES[3], np.float64)
    dx, dk = direct_conv.direct_conv2d_backward(dz, x, kernel, strides, pads)
    no_dx, dk_alone = direct_conv.direct_conv2d_backward(dz, x, kernel, strides, pads, need_input_gradient=False)
    assert dx is not None and dx.shape == x.shape and no_dx is None
    np.testing.assert_array_equal(dk_alone, dk)


@pytest.mark.parametrize("path", ["numba", "reference"])
def test_the_dispatcher_writes_out_and_moments(monkeypatch, path):
    if path == "reference":
        monkeypatch.setenv("MINICNN_REFERENCE", "1")
    x, kernel, dz, strides, pads = arrays(CASES[4], np.float32)
    out = np.full(dz.size, np.nan, np.float32)                 # any shape of the right size
    moments = np.full((2, kernel.shape[3]), np.nan)
    z = direct_conv.direct_conv2d(x, kernel, strides, pads, out=out, moments=moments)
    assert z.shape == dz.shape and np.shares_memory(z, out)
    assert_close(z, direct_conv.direct_conv2d_reference(x, kernel, strides, pads), np.float32)
    np.testing.assert_allclose(moments, direct_conv.channel_moments_reference(z), rtol=1e-4,
                               atol=1e-4 * np.abs(moments).max())


@pytest.mark.parametrize("path", ["numba", "reference"])
@pytest.mark.parametrize("bad", [np.empty(5, np.float32), np.empty(4 * 6 * 5 * 8, np.float64)])
def test_a_wrong_out_buffer_is_refused(monkeypatch, path, bad):
    if path == "reference":
        monkeypatch.setenv("MINICNN_REFERENCE", "1")
    x, kernel, _, strides, pads = arrays(CASES[4], np.float32)
    with pytest.raises(ValueError, match="out must be a C-contiguous float32 array"):
        direct_conv.direct_conv2d(x, kernel, strides, pads, out=bad)


def test_minicnn_reference_runs_the_reference(monkeypatch):
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    for name in ("direct_conv2d_numba", "direct_conv2d_backward_numba"):
        monkeypatch.setattr(direct_conv, name, lambda *args, **kwargs: pytest.fail("numba kernel called"))
    x, kernel, dz, strides, pads = arrays(CASES[0], np.float64)
    direct_conv.direct_conv2d(x, kernel, strides, pads, moments=np.empty((2, kernel.shape[3])))
    direct_conv.direct_conv2d_backward(dz, x, kernel, strides, pads)


# the seed models' layers: (input shape, kernel shape) -> whether the direct kernels take them
SEED_LAYERS = {
    "mini_xception conv2d_1": ((64, 48, 48, 1), (3, 3, 1, 8)),
    "mini_xception conv2d_2": ((64, 46, 46, 8), (3, 3, 8, 8)),
    "a residual 1x1 conv": ((64, 44, 44, 8), (1, 1, 8, 16)),
    "the head": ((64, 3, 3, 128), (3, 3, 128, 7)),
    "cnn4 conv2d_1": ((64, 48, 48, 1), (3, 3, 1, 64)),
    "cnn8 conv2d_1": ((64, 48, 48, 1), (3, 3, 1, 32)),
    "cnn4 conv2d_2": ((64, 24, 24, 64), (5, 5, 64, 128)),
}


@pytest.mark.parametrize("training", [True, False])
def test_direct_pays_only_for_narrow_windows_wider_than_1x1(training):
    picks = {name: direct_conv.direct_pays(x_shape, kernel_shape, (1, 1), training)
             for name, (x_shape, kernel_shape) in SEED_LAYERS.items()}
    assert picks["mini_xception conv2d_1"]
    assert picks["mini_xception conv2d_2"]          # in training too: its whole step is quicker direct
    assert picks["cnn8 conv2d_1"] == (not training)         # 32 filters: the backward's product wins
    assert not picks["a residual 1x1 conv"] and not picks["the head"] and not picks["cnn4 conv2d_2"]
