"""minicnn/ops/separable_lanes.py (eight channels a vector register) against ops.separable's NumPy
reference in float64: forward, statistics, the kept d, the backward with d kept or recomputed."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import perf
from minicnn.ops import separable, separable_lanes
from minicnn.ops.depthwise import depthwise_conv_reference


@st.composite
def cases(draw):
    """Rows and columns from one pixel (every pixel an edge pixel) up, eight to 24 channels,
    padding of 0 to 2 on each side."""
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    h, w = (draw(st.integers(max(1, 3 - sum(p)), 9)) for p in pads)
    return dict(n=draw(st.integers(1, 3)), h=h, w=w, c=8 * draw(st.integers(1, 3)), f=draw(st.integers(1, 9)),
                pads=pads, seed=draw(st.integers(0, 2**32 - 1)))


def arrays(case):
    """x, depthwise_kernel, pointwise_kernel, dy (float32) and pads of one case."""
    rng = np.random.default_rng(case["seed"])
    n, h, w, c, f, pads = (case[k] for k in ("n", "h", "w", "c", "f", "pads"))
    ho, wo = h + sum(pads[0]) - 2, w + sum(pads[1]) - 2
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kd = rng.standard_normal((3, 3, c, 1)).astype(np.float32)
    kp = rng.standard_normal((1, 1, c, f)).astype(np.float32)
    dy = rng.standard_normal((n, ho, wo, f)).astype(np.float32)
    return x, kd, kp, dy, pads


def as64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def assert_close(actual, expected, name=""):
    assert actual.dtype == np.float32 and actual.shape == expected.shape, name
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()), err_msg=name)


@settings(max_examples=40, deadline=None)
@given(cases())
def test_forward_statistics_and_kept_d_equal_the_reference(case):
    x, kd, kp, _, pads = arrays(case)
    assert separable._lanes_kernels(x.dtype, kd.shape) is separable_lanes
    y_ref, sums_ref, squares_ref = separable.separable_conv2d_reference(*as64(x, kd, kp), pads, statistics=True)
    d = np.empty(y_ref.shape[:3] + (case["c"],), np.float32)
    y, sums, squares = separable.separable_conv2d_numba(x, kd, kp, pads, statistics=True, depthwise_out=d)
    assert_close(y, y_ref, "y")
    assert_close(d, depthwise_conv_reference(*as64(x, kd), (1, 1), pads), "d")
    np.testing.assert_allclose(sums, sums_ref, rtol=1e-5, atol=1e-4 * max(1.0, np.abs(sums_ref).max()))
    np.testing.assert_allclose(squares, squares_ref, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(cases(), st.booleans(), st.booleans())
def test_backward_equals_the_reference(case, need_input_gradient, keep):
    x, kd, kp, dy, pads = arrays(case)
    expected = separable.separable_conv2d_backward_reference(*as64(dy, x, kd, kp), pads, need_input_gradient)
    d = None
    if keep:
        d = np.empty(dy.shape[:3] + (case["c"],), np.float32)
        separable.separable_conv2d_numba(x, kd, kp, pads, depthwise_out=d)
    before = [a.copy() for a in (x, kd, kp, dy)]
    result = separable.separable_conv2d_backward_numba(dy, x, kd, kp, pads, need_input_gradient, depthwise=d)
    for name, actual, reference in zip(("dx", "ddepthwise", "dpointwise"), result, expected):
        if reference is None:
            assert actual is None
        else:
            assert_close(actual, reference, name)
    assert all(np.array_equal(a, b) for a, b in zip((x, kd, kp, dy), before))


def test_the_bound_forward_equals_the_op():
    x, kd, kp, _, pads = arrays(dict(n=2, h=7, w=11, c=16, f=5, pads=((1, 1), (1, 1)), seed=4))
    run = separable.bind_separable_conv2d(x.shape, kd, kp, pads)
    np.testing.assert_array_equal(run(x), separable.separable_conv2d_numba(x, kd, kp, pads))


@pytest.mark.parametrize("dtype, shape, taken", [
    (np.float32, (3, 3, 16, 1), True),
    (np.float64, (3, 3, 16, 1), False),         # a register holds eight float32
    (np.float32, (3, 3, 12, 1), False),         # not a multiple of eight channels
    (np.float32, (5, 5, 16, 1), False),
    (np.float32, (3, 2, 16, 1), False),
])
def test_which_layers_the_lanes_kernels_take(dtype, shape, taken):
    assert (separable._lanes_kernels(dtype, shape) is separable_lanes) == taken


def test_lane_kernels_off_keeps_the_row_kernels(monkeypatch):
    monkeypatch.setattr(perf, "LANE_KERNELS", False)
    assert separable._lanes_kernels(np.float32, (3, 3, 16, 1)) is None
