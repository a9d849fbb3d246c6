"""minicnn/ops/pixel_conv.py (eight channels in and out, a pixel's filters in one register) against
ops.direct_conv's NumPy reference in float64, and ops.direct_conv's routing to it."""
import numba
import numpy as np
import pytest

from minicnn import perf
from minicnn.ops import direct_conv, pixel_conv

# (n, h, w, (kh, kw), ((top, bottom), (left, right))): widths whose rows end in blocks of 8, 4, 2
# and 1 pixels, rows narrower than one block, padding on every side and on one, windows of one
# row or column and wider than three taps (more than 24 registers of kernel gradient a row)
CASES = [
    (2, 8, 7, (3, 3), ((0, 0), (0, 0))),         # mini_xception conv2d_2 in small
    (3, 9, 17, (3, 3), ((1, 1), (1, 1))),        # "same": 8 + 4 + 2 + 1 columns
    (1, 5, 4, (3, 3), ((1, 1), (1, 1))),
    (2, 6, 13, (2, 3), ((0, 1), (1, 1))),        # TensorFlow's "same" for an even window
    (1, 4, 30, (1, 3), ((0, 0), (2, 0))),        # padding on the left alone
    (2, 7, 9, (3, 1), ((1, 1), (0, 0))),
    (1, 9, 11, (5, 5), ((2, 2), (2, 2))),        # 40 sums of eight a kernel row: 24 + 8 + 8
    (1, 3, 3, (3, 3), ((2, 2), (2, 2))),         # the input gradient's own padding, bigger than x
]
IDS = [f"{n}x{h}x{w}-{k[0]}x{k[1]}-{p[0][0]}{p[0][1]}{p[1][0]}{p[1][1]}" for n, h, w, k, p in CASES]


def arrays(case, seed=0):
    """x, kernel, dz (float32) and pads of one case."""
    n, h, w, (kh, kw), pads = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, 8)).astype(np.float32)
    kernel = rng.standard_normal((kh, kw, 8, 8)).astype(np.float32)
    dz = rng.standard_normal(pixel_conv.output_shape(x.shape, kernel.shape, pads)).astype(np.float32)
    return x, kernel, dz, pads


def as64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def assert_close(actual, expected):
    """float32 against a float64 reference: 1e-5 of the largest entry."""
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_moments_equal_the_reference(case):
    x, kernel, _, pads = arrays(case)
    expected = direct_conv.direct_conv2d_reference(*as64(x, kernel), (1, 1), pads)
    moments = np.full((2, 8), np.nan)
    assert_close(pixel_conv.pixel_conv2d(x, kernel, pads, moments=moments), expected)
    assert_close(pixel_conv.pixel_conv2d(x, kernel, pads), expected)
    reference = direct_conv.channel_moments_reference(expected)
    np.testing.assert_allclose(moments, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_equals_the_reference(case):
    x, kernel, dz, pads = arrays(case)
    before = [a.copy() for a in (x, kernel, dz)]
    dx_ref, dk_ref = direct_conv.direct_conv2d_backward_reference(*as64(dz, x, kernel), (1, 1), pads)
    dx, dk = pixel_conv.pixel_conv2d_backward(dz, x, kernel, pads)
    assert_close(dx, dx_ref)
    assert_close(dk, dk_ref)
    no_dx, dk_alone = pixel_conv.pixel_conv2d_backward(dz, x, kernel, pads, need_input_gradient=False)
    assert no_dx is None
    np.testing.assert_array_equal(dk_alone, dk)
    assert all(np.array_equal(a, b) for a, b in zip((x, kernel, dz), before))


def test_the_bound_forward_equals_the_op_and_reuses_its_output():
    x, kernel, _, pads = arrays(CASES[1])
    run = pixel_conv.bind_pixel_conv2d(x.shape, kernel, pads)
    z = run(x)
    np.testing.assert_array_equal(z, pixel_conv.pixel_conv2d(x, kernel, pads))
    assert run(x[::-1].copy()) is z
    np.testing.assert_array_equal(z, pixel_conv.pixel_conv2d(x[::-1], kernel, pads))


def test_the_sums_over_the_batch_do_not_depend_on_the_thread_count():
    """Each block of images sums into its own partials, whichever thread runs it."""
    x, kernel, dz, pads = arrays((9, 6, 10, (3, 3), ((1, 1), (1, 1))))
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = pixel_conv.pixel_conv2d_backward(dz, x, kernel, pads)[1], np.empty((2, 8))
        pixel_conv.pixel_conv2d(x, kernel, pads, moments=one[1])
        numba.set_num_threads(threads)
        two = pixel_conv.pixel_conv2d_backward(dz, x, kernel, pads)[1], np.empty((2, 8))
        pixel_conv.pixel_conv2d(x, kernel, pads, moments=two[1])
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


@pytest.mark.parametrize("dtype, kernel_shape, strides, taken", [
    (np.float32, (3, 3, 8, 8), (1, 1), True),
    (np.float32, (1, 3, 8, 8), (1, 1), True),
    (np.float64, (3, 3, 8, 8), (1, 1), False),      # the vector registers hold eight float32
    (np.float32, (3, 3, 8, 8), (2, 2), False),
    (np.float32, (3, 3, 1, 8), (1, 1), False),      # one input channel: channel-major tiles
    (np.float32, (3, 3, 8, 4), (1, 1), False),
])
def test_direct_conv_sends_eight_channels_at_stride_one_in_float32(dtype, kernel_shape, strides, taken):
    assert (direct_conv._pixel_conv(dtype, kernel_shape, strides) is pixel_conv) == taken


def test_direct_conv_runs_its_own_kernels_on_what_pixel_conv_does_not_take(monkeypatch):
    monkeypatch.setattr(pixel_conv, "pixel_conv2d", lambda *args, **kwargs: pytest.fail("pixel_conv called"))
    x, kernel, _, pads = arrays(CASES[0])
    x64, kernel64 = as64(x, kernel)
    z = direct_conv.direct_conv2d_numba(x64, kernel64, (1, 1), pads)
    np.testing.assert_allclose(z, direct_conv.direct_conv2d_reference(x64, kernel64, (1, 1), pads), rtol=1e-12)


def test_lane_kernels_off_keeps_every_layer_channel_major(monkeypatch):
    monkeypatch.setattr(perf, "LANE_KERNELS", False)
    assert direct_conv._pixel_conv(np.float32, (3, 3, 8, 8), (1, 1)) is None
