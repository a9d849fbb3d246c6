"""The stateless kernels in minicnn/ops: numba against NumPy reference, both against naive loops.

Shapes come from hypothesis: non-square kernels (the CS231n Cython im2col mixes up
field_height and field_width), H != W, strides 1-3, odd and even sizes with "same" and
"valid", C = 1, batch > 1, float32 and float64. Gathers (im2col, max pool, argmax) must
match exactly; sums (col2im, backward ops, average pool, depthwise) to rtol 1e-12 in
float64, where only the order of the additions differs.
"""
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minicnn import backend, perf
from minicnn.ops import batchnorm, conv, depthwise, im2col, pooling, winograd
from minicnn.ops.padding import conv_geometry


@dataclass
class Case:
    """One drawn geometry: x (n, h, w, c) and a (kh, kw) window with strides and padding."""
    n: int
    h: int
    w: int
    c: int
    kernel_size: tuple
    strides: tuple
    padding: str
    dtype: type
    seed: int

    @property
    def x_shape(self):
        return (self.n, self.h, self.w, self.c)

    @property
    def pads(self):
        return conv_geometry(self.h, self.w, self.kernel_size, self.strides, self.padding)[0]

    def rng(self):
        return np.random.default_rng(self.seed)

    def random(self, shape, rng):
        return rng.standard_normal(shape).astype(self.dtype)


@st.composite
def cases(draw, max_n=3, max_hw=9, max_c=4, max_k=4, max_s=3):
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    padding = draw(st.sampled_from(["same", "valid"]))
    # "valid" needs the window to fit; "same" fits any size
    h = draw(st.integers(kh if padding == "valid" else 1, max(max_hw, kh)))
    w = draw(st.integers(kw if padding == "valid" else 1, max(max_hw, kw)))
    return Case(n=draw(st.integers(1, max_n)), h=h, w=w, c=draw(st.integers(1, max_c)),
                kernel_size=(kh, kw),
                strides=(draw(st.integers(1, max_s)), draw(st.integers(1, max_s))),
                padding=padding, dtype=draw(st.sampled_from([np.float32, np.float64])),
                seed=draw(st.integers(0, 2**32 - 1)))


def assert_sums_close(actual, expected, dtype):
    """Equal up to the order of additions: rtol 1e-12 in float64, 1e-5 in float32."""
    assert actual.dtype == expected.dtype == dtype          # float32 is never upcast
    assert actual.shape == expected.shape
    assert actual.flags.c_contiguous and expected.flags.c_contiguous
    rtol = 1e-12 if expected.dtype == np.float64 else 1e-5
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def tf_same_pads(size, k, s):
    """TensorFlow's "same", written out again here so the test does not trust conv_geometry."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2                         # the extra pixel goes after (bottom/right)


def naive_pads(case):
    """((top, bottom), (left, right)) from the textbook formulas, for the naive loops in minicnn.ops."""
    if case.padding == "valid":
        return (0, 0), (0, 0)
    pads = []
    for size, k, s in zip((case.h, case.w), case.kernel_size, case.strides):
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))    # the extra pixel goes after (bottom/right)
    return tuple(pads)


def naive_geometry(h_in, w_in, kernel_size, strides, padding):
    """(Ho, Wo, top, left) from the textbook formulas, for the naive loops below."""
    (kh, kw), (sh, sw) = kernel_size, strides
    if padding == "same":
        ho_n, top = tf_same_pads(h_in, kh, sh)
        wo_n, left = tf_same_pads(w_in, kw, sw)
        return ho_n, wo_n, top, left
    return (h_in - kh) // sh + 1, (w_in - kw) // sw + 1, 0, 0


def window_cells(case, ho, wo):
    """Real (h, w) cells of window (ho, wo) in row-major order, computed the slow way."""
    (kh, kw), (sh, sw) = case.kernel_size, case.strides
    _, _, top, left = naive_geometry(case.h, case.w, case.kernel_size, case.strides, case.padding)
    return [(ho * sh - top + i, wo * sw - left + j) for i in range(kh) for j in range(kw)
            if 0 <= ho * sh - top + i < case.h and 0 <= wo * sw - left + j < case.w]


SETTINGS = settings(max_examples=40, deadline=None)


# ----------------------------------------------------------------------------------------
# im2col / col2im
# ----------------------------------------------------------------------------------------

@SETTINGS
@given(cases())
def test_im2col_numba_equals_reference(case):
    x = case.random(case.x_shape, case.rng())
    x_before = x.copy()
    expected = im2col.im2col_reference(x, case.kernel_size, case.strides, case.pads)
    actual = im2col.im2col_numba(x, case.kernel_size, case.strides, case.pads)
    assert np.array_equal(actual, expected)
    assert actual.dtype == expected.dtype == case.dtype and actual.flags.c_contiguous
    assert np.array_equal(x, x_before)


@SETTINGS
@given(cases())
def test_col2im_numba_equals_reference(case):
    rng = case.rng()
    x_shape = case.x_shape
    cols_shape = im2col.im2col_reference(np.zeros(x_shape, case.dtype), case.kernel_size,
                                         case.strides, case.pads).shape
    g = case.random(cols_shape, rng)
    g2d = g.reshape(-1, case.kernel_size[0] * case.kernel_size[1] * case.c)   # as conv backward
    g_before = g.copy()
    expected = im2col.col2im_reference(g, x_shape, case.kernel_size, case.strides, case.pads)
    actual = im2col.col2im_numba(g2d, x_shape, case.kernel_size, case.strides, case.pads)
    assert_sums_close(actual, expected, case.dtype)
    assert np.array_equal(g, g_before)


def test_depthwise_backward_zeroes_its_input_gradient_itself(monkeypatch):
    """The row kernels' dx comes from np.empty_like, zeroed image by image inside the kernel:
    stale numbers in the fresh buffer (NaN here) must not reach the result."""
    rng = np.random.default_rng(0)
    x, kernel = rng.normal(size=(3, 7, 6, 4)), rng.normal(size=(3, 3, 4, 1))
    pads = ((1, 1), (1, 1))
    dy = rng.normal(size=depthwise.depthwise_conv_reference(x, kernel, (1, 1), pads).shape)
    expected = depthwise.depthwise_conv_backward_reference(dy, x, kernel, (1, 1), pads)[0]
    monkeypatch.setattr(np, "empty_like", lambda a, *args, **kwargs: np.full_like(a, np.nan, *args, **kwargs))
    np.testing.assert_allclose(depthwise.depthwise_conv_backward_numba(dy, x, kernel, (1, 1), pads)[0], expected,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "numba"])
@settings(max_examples=25, deadline=None)
@given(cases())
def test_col2im_is_the_adjoint_of_im2col(impl, case):
    # <im2col(x), g> = <x, col2im(g)>: why conv backward may use col2im for dx
    rng = case.rng()
    x = rng.standard_normal(case.x_shape)
    fwd, adj = getattr(im2col, f"im2col_{impl}"), getattr(im2col, f"col2im_{impl}")
    cols = fwd(x, case.kernel_size, case.strides, case.pads)
    g = rng.standard_normal(cols.shape)
    lhs = np.vdot(cols, g)
    rhs = np.vdot(x, adj(g, x.shape, case.kernel_size, case.strides, case.pads))
    assert np.isclose(lhs, rhs, rtol=1e-12, atol=1e-12 * np.abs(cols).sum() * np.abs(g).max())


@settings(max_examples=25, deadline=None)
@given(cases(max_n=2, max_hw=7, max_c=3))
def test_im2col_and_col2im_references_equal_the_naive_loops(case):
    rng = case.rng()
    x = case.random(case.x_shape, rng)
    cols = im2col.im2col_naive(x, case.kernel_size, case.strides, naive_pads(case))
    assert np.array_equal(im2col.im2col_reference(x, case.kernel_size, case.strides, case.pads), cols)
    g = case.random(cols.shape, rng)
    assert_sums_close(im2col.col2im_reference(g, x.shape, case.kernel_size, case.strides, case.pads),
                      im2col.col2im_naive(g, x.shape, case.kernel_size, case.strides, naive_pads(case)), case.dtype)


def naive_conv(x, kernel, strides, padding):
    """minicnn.ops.conv.conv2d_naive with the padding from the textbook formulas."""
    h, w = x.shape[1:3]
    case = Case(1, h, w, 1, kernel.shape[:2], strides, padding, np.float64, 0)
    return conv.conv2d_naive(x, kernel, strides, naive_pads(case))


@pytest.mark.parametrize("impl", ["reference", "numba"])
@settings(max_examples=25, deadline=None)
@given(case=cases(max_n=2, max_hw=7, max_c=3, max_k=3), filters=st.integers(1, 3))
# stride 2 "same" on even sizes: the extra pad row/column must go at the bottom/right
@example(case=Case(2, 4, 6, 2, (3, 3), (2, 2), "same", np.float64, 0), filters=2)
@example(case=Case(1, 6, 4, 1, (2, 3), (2, 2), "same", np.float64, 1), filters=1)
def test_conv_via_im2col_equals_naive_conv(impl, case, filters):
    rng = case.rng()
    x = rng.standard_normal(case.x_shape)
    kernel = rng.standard_normal(case.kernel_size + (case.c, filters))
    cols = getattr(im2col, f"im2col_{impl}")(x, case.kernel_size, case.strides, case.pads)
    n, ho, wo = cols.shape[:3]
    y = (cols.reshape(n * ho * wo, -1) @ kernel.reshape(-1, filters)).reshape(n, ho, wo, filters)
    np.testing.assert_allclose(y, naive_conv(x, kernel, case.strides, case.padding),
                               rtol=1e-12, atol=1e-12)


def conv_case(case, filters):
    rng = case.rng()
    x = case.random(case.x_shape, rng)
    kernel = case.random(case.kernel_size + (case.c, filters), rng)
    return x, kernel, rng


@settings(max_examples=25, deadline=None)
@given(case=cases(max_n=2, max_hw=7, max_c=3, max_k=3), filters=st.integers(1, 3))
def test_conv2d_reference_equals_the_naive_loops(case, filters):
    x, kernel, _ = conv_case(case, filters)
    z, cols = conv.conv2d_reference(x, kernel, case.strides, case.pads)
    assert_sums_close(z, conv.conv2d_naive(x, kernel, case.strides, naive_pads(case)), case.dtype)
    assert cols.shape == (z.size // filters, kernel.size // filters)


@pytest.mark.parametrize("path", ["reference", "im2col"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases(max_n=3, max_hw=8, max_c=4), filters=st.integers(1, 4), need_dx=st.booleans())
@example(case=Case(2, 5, 6, 3, (3, 3), (1, 1), "same", np.float64, 0), filters=2, need_dx=True)
def test_conv2d_and_its_backward_equal_the_reference(monkeypatch, path, case, filters, need_dx):
    # the dispatcher (numba im2col, buffers handed in) against im2col + product
    monkeypatch.setenv("MINICNN_REFERENCE", "1" if path == "reference" else "0")
    x, kernel, rng = conv_case(case, filters)
    z_ref, cols = conv.conv2d_reference(x, kernel, case.strides, case.pads)
    buffers = np.empty(cols.shape, case.dtype), np.empty(cols.shape, case.dtype)
    for x in (x, case.random(x.shape, rng)):   # the second call reuses the buffers, on new numbers
        z_ref, cols = conv.conv2d_reference(x, kernel, case.strides, case.pads)
        dz = case.random(z_ref.shape, rng)
        dx_ref, dk_ref = conv.conv2d_backward_reference(dz, cols, kernel, x.shape, case.strides, case.pads)
        z, saved = conv.conv2d(x, kernel, case.strides, case.pads, cols=buffers[0])
        dx, dk = conv.conv2d_backward(dz, saved, kernel, need_dx, dcols=buffers[1])
        assert saved.method == path
        assert_sums_close(z, z_ref, case.dtype)
        assert_sums_close(dk, dk_ref, case.dtype)
        if need_dx:
            assert_sums_close(dx, dx_ref, case.dtype)
        else:
            assert dx is None


@pytest.mark.parametrize("window, channels, uses_buffer", [((2, 2), 1, False), ((3, 3), 1, True), ((3, 3), 3, True)])
def test_conv2d_writes_a_cols_buffer_only_in_the_numba_im2col(monkeypatch, window, channels, uses_buffer):
    # a 2x2 window on one channel runs NumPy's im2col, which makes its own array and leaves the buffer
    monkeypatch.setenv("MINICNN_REFERENCE", "0")
    rng = np.random.default_rng(0)
    x, kernel = rng.standard_normal((2, 5, 6, channels)), rng.standard_normal(window + (channels, 2))
    pads = conv_geometry(5, 6, window, (1, 1), "same")[0]
    assert im2col.numba_pays(window, channels) == uses_buffer
    buffer = np.zeros(2 * 5 * 6 * window[0] * window[1] * channels)
    z, saved = conv.conv2d(x, kernel, (1, 1), pads, cols=buffer)
    assert saved.method == "im2col" and np.shares_memory(saved.cols, buffer) == uses_buffer
    assert_sums_close(z, conv.conv2d_reference(x, kernel, (1, 1), pads)[0], np.float64)


def backward_ops(monkeypatch, x, need_dx):
    """(name, the op's gradients) for every backward op with a kernel, on x (2, 5, 6, 3): (dx, dK...)."""
    rng = np.random.default_rng(1)
    kernel, dkernel = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal((3, 3, 3, 2))
    pads = conv_geometry(5, 6, (3, 3), (1, 1), "same")[0]
    z, cols = conv.conv2d_reference(x, kernel, (1, 1), pads)
    dz, ddz = rng.standard_normal(z.shape), rng.standard_normal((2, 5, 6, 6))
    monkeypatch.setattr(perf, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(perf, "WINOGRAD_MIN_TILES", 1)
    _, by_winograd = winograd.conv3x3(x, kernel, 1, 1, 5, 6)
    results = {"conv2d_backward_reference": conv.conv2d_backward_reference(dz, cols, kernel, x.shape, (1, 1),
                                                                           pads, need_dx),
               "winograd.conv3x3_backward": winograd.conv3x3_backward(dz, by_winograd, x.shape, 1, 1, None, need_dx)}
    _, saved = conv.conv2d(x, kernel, (1, 1), pads)
    assert saved.method == "im2col"
    results["conv2d_backward (im2col)"] = conv.conv2d_backward(dz, saved, kernel, need_dx)
    for impl in ("reference", "numba"):
        results[f"depthwise_conv_backward_{impl}"] = getattr(depthwise, f"depthwise_conv_backward_{impl}")(
            ddz, x, dkernel, (1, 1), pads, need_dx)
    return results, {"conv": kernel.shape, "depthwise": dkernel.shape}


def test_every_backward_op_with_a_kernel_returns_dx_first_then_the_kernel_gradient(monkeypatch):
    # one order in ops/, as normalize_backward's (dx, dgamma, dbeta); dx None when not needed
    monkeypatch.setenv("MINICNN_REFERENCE", "0")
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 3))
    full, shapes = backward_ops(monkeypatch, x, need_dx=True)
    skipped, _ = backward_ops(monkeypatch, x, need_dx=False)
    for name, (dx, dk) in full.items():
        assert dx.shape == x.shape, name
        assert dk.shape == shapes["depthwise" if "depthwise" in name else "conv"], name
        assert skipped[name][0] is None, name
        np.testing.assert_array_equal(skipped[name][1], dk, err_msg=name)
    stats = np.zeros(3), np.ones(3), np.ones(3)
    dx, dgamma, _ = batchnorm.normalize_backward(x, x, *stats, training=True)
    assert dx.shape == x.shape and dgamma.shape == (3,)

# ----------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------

def pool_input(case, rng, ties):
    """Gaussian values, or small integers so that windows hold ties."""
    if ties:
        return rng.integers(-2, 3, size=case.x_shape).astype(case.dtype)
    return case.random(case.x_shape, rng)


@SETTINGS
@given(cases(), st.booleans())
def test_max_pool_numba_equals_reference(case, ties):
    rng = case.rng()
    x = pool_input(case, rng, ties)
    x_before = x.copy()
    args = (case.kernel_size, case.strides, case.pads)
    y_ref, arg_ref = pooling.max_pool_reference(x, *args)
    y, arg = pooling.max_pool_numba(x, *args)
    assert np.array_equal(y, y_ref) and np.array_equal(arg, arg_ref)
    assert y.dtype == y_ref.dtype == case.dtype and np.issubdtype(arg.dtype, np.integer)
    assert np.array_equal(x, x_before)

    dy = case.random(y.shape, rng)
    dy_before = dy.copy()
    dx_ref = pooling.max_pool_backward_reference(dy, arg_ref, x.shape, *args)
    assert_sums_close(pooling.max_pool_backward_numba(dy, arg, x.shape, *args), dx_ref, case.dtype)
    assert np.array_equal(dy, dy_before) and np.array_equal(arg, arg_ref)


@pytest.mark.parametrize("impl", ["reference", "numba"])
@SETTINGS
@given(cases(), st.booleans(), st.sampled_from(["any", "negative", "-inf"]))
def test_max_pool_equals_naive_and_padding_never_wins(impl, case, ties, sign):
    rng = case.rng()
    x = pool_input(case, rng, ties)
    if sign != "any":                               # all-negative: -inf padding must still lose
        x = -np.abs(x) - 1
    if sign == "-inf":                              # even against real -inf cells
        x[rng.random(x.shape) < 0.7] = -np.inf
    args = (case.kernel_size, case.strides, case.pads)
    y, arg = getattr(pooling, f"max_pool_{impl}")(x, *args)
    dy = case.random(y.shape, rng)
    dx = getattr(pooling, f"max_pool_backward_{impl}")(dy, arg, x.shape, *args)
    dx_naive = np.zeros_like(x)
    for n in range(case.n):
        for ho in range(y.shape[1]):
            for wo in range(y.shape[2]):
                cells = window_cells(case, ho, wo)
                for c in range(case.c):
                    values = [x[n, h, w, c] for h, w in cells]
                    first = int(np.argmax(values))          # np.argmax: first max on ties
                    h, w = cells[first]
                    assert y[n, ho, wo, c] == values[first]
                    assert arg[n, ho, wo, c] == h * case.w + w
                    dx_naive[n, h, w, c] += dy[n, ho, wo, c]
    assert_sums_close(dx, dx_naive, case.dtype)


@settings(max_examples=25, deadline=None)
@given(cases(max_n=2, max_hw=7, max_c=3), st.booleans())
def test_pool_references_equal_the_naive_loops(case, ties):
    rng = case.rng()
    x = pool_input(case, rng, ties)
    args, naive_args = (case.kernel_size, case.strides, case.pads), (case.kernel_size, case.strides, naive_pads(case))
    y, arg = pooling.max_pool_reference(x, *args)
    y_naive, arg_naive = pooling.max_pool_naive(x, *naive_args)
    assert np.array_equal(y, y_naive) and np.array_equal(arg, arg_naive)
    dy = case.random(y.shape, rng)
    assert_sums_close(pooling.max_pool_backward_reference(dy, arg, x.shape, *args),
                      pooling.max_pool_backward_naive(dy, arg_naive, x.shape), case.dtype)
    assert_sums_close(pooling.avg_pool_reference(x, *args), pooling.avg_pool_naive(x, *naive_args), case.dtype)
    assert_sums_close(pooling.avg_pool_backward_reference(dy, x.shape, *args),
                      pooling.avg_pool_backward_naive(dy, x.shape, *naive_args), case.dtype)


@SETTINGS
@given(cases())
def test_avg_pool_numba_equals_reference(case):
    rng = case.rng()
    x = case.random(case.x_shape, rng)
    x_before = x.copy()
    args = (case.kernel_size, case.strides, case.pads)
    y_ref = pooling.avg_pool_reference(x, *args)
    assert_sums_close(pooling.avg_pool_numba(x, *args), y_ref, case.dtype)
    dy = case.random(y_ref.shape, rng)
    dy_before = dy.copy()
    assert_sums_close(pooling.avg_pool_backward_numba(dy, x.shape, *args),
                      pooling.avg_pool_backward_reference(dy, x.shape, *args), case.dtype)
    assert np.array_equal(x, x_before) and np.array_equal(dy, dy_before)


@pytest.mark.parametrize("impl", ["reference", "numba"])
@SETTINGS
@given(cases())
def test_avg_pool_equals_mean_of_real_cells(impl, case):
    rng = case.rng()
    x = case.random(case.x_shape, rng)
    args = (case.kernel_size, case.strides, case.pads)
    y = getattr(pooling, f"avg_pool_{impl}")(x, *args)
    dy = case.random(y.shape, rng)
    dx = getattr(pooling, f"avg_pool_backward_{impl}")(dy, x.shape, *args)
    y_naive = np.zeros_like(y)
    dx_naive = np.zeros_like(x)
    for ho in range(y.shape[1]):
        for wo in range(y.shape[2]):
            cells = window_cells(case, ho, wo)
            for h, w in cells:
                y_naive[:, ho, wo] += x[:, h, w] / len(cells)
                dx_naive[:, h, w] += dy[:, ho, wo] / len(cells)
    tol = 1e-12 if case.dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, y_naive, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, dx_naive, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", ["reference", "numba"])
def test_avg_pool_same_border_divides_by_real_cells(impl):
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)   # [[1 2 3] [4 5 6] [7 8 9]]
    avg_pool = getattr(pooling, f"avg_pool_{impl}")
    # 3x3 window, stride 1, "same": one pad cell on every side
    pads, _, _ = conv_geometry(3, 3, (3, 3), (1, 1), "same")
    y = avg_pool(x, (3, 3), (1, 1), pads)[0, :, :, 0]
    expected = [[(1 + 2 + 4 + 5) / 4, (1 + 2 + 3 + 4 + 5 + 6) / 6, (2 + 3 + 5 + 6) / 4],
                [(1 + 2 + 4 + 5 + 7 + 8) / 6, 45 / 9, (2 + 3 + 5 + 6 + 8 + 9) / 6],
                [(4 + 5 + 7 + 8) / 4, (4 + 5 + 6 + 7 + 8 + 9) / 6, (5 + 6 + 8 + 9) / 4]]
    np.testing.assert_allclose(y, expected, rtol=1e-15)
    # 2x2 window, stride 2, "same" on odd 3x3: the one pad row/column is at the bottom/right
    pads, _, _ = conv_geometry(3, 3, (2, 2), (2, 2), "same")
    y = avg_pool(x, (2, 2), (2, 2), pads)[0, :, :, 0]
    np.testing.assert_allclose(y, [[(1 + 2 + 4 + 5) / 4, (3 + 6) / 2], [(7 + 8) / 2, 9]], rtol=1e-15)


# ----------------------------------------------------------------------------------------
# depthwise convolution
# ----------------------------------------------------------------------------------------

def naive_depthwise(x, kernel, strides, padding):
    """minicnn.ops.depthwise.depthwise_conv_naive with the padding from the textbook formulas."""
    h, w = x.shape[1:3]
    case = Case(1, h, w, 1, kernel.shape[:2], strides, padding, np.float64, 0)
    return depthwise.depthwise_conv_naive(x, kernel, strides, naive_pads(case))


@SETTINGS
@given(cases(), st.integers(1, 3))
@example(case=Case(2, 6, 7, 3, (3, 3), (1, 1), "same", np.float32, 1), multiplier=1)     # the row kernels
@example(case=Case(3, 5, 4, 2, (3, 2), (1, 1), "valid", np.float64, 2), multiplier=1)
@example(case=Case(1, 2, 3, 5, (4, 4), (1, 1), "same", np.float64, 3), multiplier=1)     # taps past both edges
def test_depthwise_numba_equals_reference(case, multiplier):
    rng = case.rng()
    x = case.random(case.x_shape, rng)
    kernel = case.random(case.kernel_size + (case.c, multiplier), rng)
    x_before, kernel_before = x.copy(), kernel.copy()
    y_ref = depthwise.depthwise_conv_reference(x, kernel, case.strides, case.pads)
    assert_sums_close(depthwise.depthwise_conv_numba(x, kernel, case.strides, case.pads), y_ref,
                      case.dtype)
    dy = case.random(y_ref.shape, rng)
    dy_before = dy.copy()
    dx_ref, dk_ref = depthwise.depthwise_conv_backward_reference(dy, x, kernel, case.strides, case.pads)
    dx, dk = depthwise.depthwise_conv_backward_numba(dy, x, kernel, case.strides, case.pads)
    assert_sums_close(dx, dx_ref, case.dtype)
    assert_sums_close(dk, dk_ref, case.dtype)
    assert np.array_equal(x, x_before) and np.array_equal(kernel, kernel_before)
    assert np.array_equal(dy, dy_before)


@pytest.mark.parametrize("impl", ["reference", "numba"])
@settings(max_examples=25, deadline=None)
@given(case=cases(max_n=2, max_hw=7, max_c=3, max_k=3), multiplier=st.integers(1, 2))
@example(case=Case(2, 4, 6, 2, (3, 3), (2, 2), "same", np.float64, 0), multiplier=2)
@example(case=Case(2, 5, 6, 3, (3, 3), (1, 1), "same", np.float64, 0), multiplier=1)     # the row kernels
def test_depthwise_equals_naive_and_backward_is_its_adjoint(impl, case, multiplier):
    rng = case.rng()
    x = rng.standard_normal(case.x_shape)
    kernel = rng.standard_normal(case.kernel_size + (case.c, multiplier))
    y = getattr(depthwise, f"depthwise_conv_{impl}")(x, kernel, case.strides, case.pads)
    np.testing.assert_allclose(y, naive_depthwise(x, kernel, case.strides, case.padding),
                               rtol=1e-12, atol=1e-12)
    # y is linear in x and in kernel, so <y, dy> = <x, dx> = <kernel, dkernel>
    dy = rng.standard_normal(y.shape)
    dx, dk = getattr(depthwise, f"depthwise_conv_backward_{impl}")(dy, x, kernel, case.strides, case.pads)
    inner = np.vdot(y, dy)
    scale = np.abs(y).sum() * np.abs(dy).max() + 1.0
    assert np.isclose(np.vdot(x, dx), inner, rtol=1e-12, atol=1e-12 * scale)
    assert np.isclose(np.vdot(kernel, dk), inner, rtol=1e-12, atol=1e-12 * scale)


# ----------------------------------------------------------------------------------------
# dispatch: MINICNN_REFERENCE=1 routes every op to its reference
# ----------------------------------------------------------------------------------------

def dispatch_calls():
    """(module, op name, arguments) for every dispatcher, on a small 2-channel input."""
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 2))
    pads, _, _ = conv_geometry(5, 5, (3, 3), (2, 2), "same")
    args = ((3, 3), (2, 2), pads)
    y, arg = pooling.max_pool_reference(x, *args)
    cols = im2col.im2col_reference(x, *args)
    kernel = np.ones((3, 3, 2, 1))
    return [
        (im2col, "im2col", (x, *args)),
        (im2col, "col2im", (cols, x.shape, *args)),
        (pooling, "max_pool", (x, *args)),
        (pooling, "max_pool_backward", (y, arg, x.shape, *args)),
        (pooling, "avg_pool", (x, *args)),
        (pooling, "avg_pool_backward", (y, x.shape, *args)),
        (depthwise, "depthwise_conv", (x, kernel, (2, 2), pads)),
        (depthwise, "depthwise_conv_backward", (y, x, kernel, (2, 2), pads)),
    ]


@pytest.mark.parametrize("module, name, args", dispatch_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_minicnn_reference_routes_to_the_reference(monkeypatch, module, name, args):
    calls = []
    for kind in ("reference", "numba"):
        monkeypatch.setattr(module, f"{name}_{kind}", lambda *a, kind=kind: calls.append(kind))
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    getattr(module, name)(*args)
    monkeypatch.setenv("MINICNN_REFERENCE", "0")
    getattr(module, name)(*args)
    monkeypatch.delenv("MINICNN_REFERENCE")
    getattr(module, name)(*args)
    assert calls == ["reference", "numba", "numba"]    # read at call time, numba by default here


@pytest.mark.parametrize("during, after", [("1", "0"), ("0", "1")])
def test_reference_read_once_holds_the_setting_for_a_pass_then_reads_again(monkeypatch, during, after):
    monkeypatch.setenv("MINICNN_REFERENCE", during)
    with backend.reference_read_once():
        monkeypatch.setenv("MINICNN_REFERENCE", after)
        with backend.reference_read_once():
            assert backend.use_reference() == (during == "1")
        assert backend.use_reference() == (during == "1")     # the inner exit kept the outer pass's reading
    assert backend.use_reference() == (after == "1")
    with pytest.raises(KeyError):
        with backend.reference_read_once():
            raise KeyError("a failing pass")
    monkeypatch.setenv("MINICNN_REFERENCE", during)
    assert backend.use_reference() == (during == "1")        # read afresh after the failed pass


@pytest.mark.parametrize("kernel_size, channels, col2im_by", [((1, 1), 16, "numba"), ((2, 2), 1, "reference")])
def test_im2col_keeps_the_reference_where_numba_does_not_pay(monkeypatch, kernel_size, channels, col2im_by):
    # measured (benchmarks/kernels.py): 1x1 windows, numba < 1.5x; windows whose rows hold two numbers
    # or fewer stay NumPy's (1-channel 3x3 windows go to numba); col2im of a 1x1 window is numba's one pass
    calls = []
    for name in ("im2col", "col2im"):
        for kind in ("reference", "numba"):
            monkeypatch.setattr(im2col, f"{name}_{kind}", lambda *a, n=f"{name}_{kind}": calls.append(n))
    x = np.zeros((2, 6, 6, channels))
    pads, _, _ = conv_geometry(6, 6, kernel_size, (2, 2), "same")
    im2col.im2col(x, kernel_size, (2, 2), pads)
    im2col.col2im(None, x.shape, kernel_size, (2, 2), pads)
    im2col.im2col(np.zeros((2, 6, 6, 2)), (3, 3), (2, 2), pads)       # 3x3 on 2 channels: numba
    assert calls == ["im2col_reference", f"col2im_{col2im_by}", "im2col_numba"]


def test_a_reused_buffer_is_taken_as_it_is_seen_as_the_shape_or_refused_by_name():
    from minicnn.ops.buffers import reuse_or_new
    out = np.zeros((2, 3), np.float32)
    assert reuse_or_new(out, (2, 3), np.float32, "op: out") is out
    flat = reuse_or_new(out, (6,), np.float32, "op: out")
    assert flat.shape == (6,) and np.shares_memory(flat, out)
    assert reuse_or_new(None, (4, 1), np.float64, "op: out").shape == (4, 1)
    for bad in (np.zeros((2, 3)), np.zeros((7,), np.float32), np.zeros((3, 2), np.float32).T):
        with pytest.raises(ValueError, match=r"op: out must be a C-contiguous float32 array of shape \(2, 3\)"):
            reuse_or_new(bad, (2, 3), np.float32, "op: out")
