"""minicnn/ops/panels.py: packed products equal NumPy's in float64, on one thread or shared, and
ops.gemm.bind_matmul takes them where panel_pays says."""
import numpy as np
import pytest

from minicnn import perf
from minicnn.ops import gemm, panels

# (M, K, N): rows in blocks and left over, sums shorter and longer than a pass (DEPTH), one and
# several panels, and the seed models' face products
SHAPES = [(1, 1, 32), (5, 7, 32), (6, 300, 64), (13, 257, 96), (36, 600, 128), (1, 4608, 256), (9, 64, 128)]


def arrays(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)


def assert_product(out, a, b):
    expected = a.astype(np.float64) @ b.astype(np.float64)
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("shared", [False, True], ids=["one thread", "shared"])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_the_packed_product_equals_numpys(monkeypatch, m, k, n, shared):
    monkeypatch.setattr(perf, "PANEL_PRODUCT_SHARED_MIN_WORK", 1 if shared else 1 << 62)
    a, b = arrays(m, k, n)
    packed = panels.pack(b)
    assert packed.shape == (n // panels.COLUMNS, k, panels.COLUMNS)
    assert_product(panels.panel_product(a, packed), a, b)
    out = np.full((m, n), np.nan, np.float32)
    assert panels.panel_product(a, packed, out) is out
    assert_product(out, a, b)


def test_a_non_contiguous_left_side_and_a_wrong_one():
    a, b = arrays(8, 40, 64)
    wide = np.zeros((8, 80), np.float32)
    wide[:, ::2] = a
    assert_product(panels.panel_product(wide[:, ::2], panels.pack(b)), a, b)
    with pytest.raises(ValueError, match="a has 39 columns, the packed b 40 rows"):
        panels.panel_product(a[:, :39], panels.pack(b))


def test_an_output_buffer_or_batch_that_does_not_fit_is_an_error_not_a_write_out_of_bounds():
    a, b = arrays(8, 40, 64)
    for out in (np.empty((8, 32), np.float32), np.empty((8, 64)), np.empty((64, 8), np.float32).T):
        with pytest.raises(ValueError, match="panel_product: out must be a C-contiguous float32"):
            panels.panel_product(a, panels.pack(b), out)
    product = panels.bind_batched_panel_product(np.stack([b, b]))
    for batch in (np.stack([a, a, a]), np.stack([a, a])[:, :, :39], np.stack([a, a]).astype(np.float64)):
        with pytest.raises(ValueError, match=r"batched panel product: a must be a C-contiguous float32 \(2, M, 40\)"):
            product(batch, np.empty((len(batch), 8, 64), np.float32))
    with pytest.raises(ValueError, match="batched panel product: out must be"):
        product(np.stack([a, a]), np.empty((2, 8, 32), np.float32))


@pytest.mark.parametrize("m, k, n, dtype, pays", [
    (36, 4608, 512, np.float32, True),          # cnn4's conv2d_4 at batch 1
    (36, 4608, 512, np.float64, False),
    (36, 1152, 7, np.float32, False),            # the head: not whole panels
    (9216, 4608, 512, np.float32, False),        # a batch: a is read once a panel
])
def test_panel_pays_for_few_rows_of_float32(m, k, n, dtype, pays):
    assert panels.panel_pays(m, k, n, dtype) == pays


@pytest.mark.parametrize("lanes", [True, False])
def test_bound_products_take_the_panels_where_they_pay(monkeypatch, lanes):
    monkeypatch.setattr(perf, "LANE_KERNELS", lanes)
    calls = []
    monkeypatch.setattr(panels, "panel_product", lambda *args: calls.append(args) or args[2])
    a, b = arrays(36, 50, 64)
    gemm.bind_matmul(36, b)(a, np.empty((36, 64), np.float32))
    gemm.bind_matmul(36, b.astype(np.float64))(a.astype(np.float64), np.empty((36, 64)))
    assert len(calls) == (1 if lanes else 0)


@pytest.mark.parametrize("shared", [False, True], ids=["one thread", "shared"])
def test_a_batch_of_packed_products_equals_numpys(monkeypatch, shared):
    monkeypatch.setattr(perf, "PANEL_PRODUCT_SHARED_MIN_WORK", 1 if shared else 1 << 62)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 9, 70)).astype(np.float32), rng.standard_normal((5, 70, 64)).astype(np.float32)
    out = np.full((5, 9, 64), np.nan, np.float32)
    assert panels.bind_batched_panel_product(b)(a, out) is out
    expected = np.stack([a[i].astype(np.float64) @ b[i] for i in range(5)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("lanes", [True, False])
def test_bound_batches_take_the_panels_where_they_pay(monkeypatch, lanes):
    monkeypatch.setattr(perf, "LANE_KERNELS", lanes)
    a, b = np.ones((3, 4, 8), np.float32), np.ones((3, 8, 32), np.float32)
    product = gemm.bind_batched_matmul(4, b)
    np.testing.assert_array_equal(product(a, np.empty((3, 4, 32), np.float32)), np.full((3, 4, 32), 8.0))
    assert (product.__qualname__.startswith("bind_batched_panel_product")) == lanes


@pytest.mark.parametrize("a_transposed", [False, True], ids=["a", "a^T"])
@pytest.mark.parametrize("b_transposed", [False, True], ids=["b", "b^T"])
@pytest.mark.parametrize("m, k, n", [(9, 300, 32), (64, 5, 64), (1, 1, 32), (13, 600, 64)])
def test_training_batches_equal_numpys(monkeypatch, m, k, n, a_transposed, b_transposed):
    """Winograd's three products: V @ U, dM @ U^T (b a transposed view), V^T @ dM (a one); wider
    ones than perf.LANE_PRODUCT_MAX_WIDTH lets through too (several column panels)."""
    monkeypatch.setattr(perf, "LANE_PRODUCT_MAX_WIDTH", 1 << 30)
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, k, m) if a_transposed else (3, m, k)).astype(np.float32)
    b = rng.standard_normal((3, n, k) if b_transposed else (3, k, n)).astype(np.float32)
    a, b = (a.transpose(0, 2, 1) if a_transposed else a), (b.transpose(0, 2, 1) if b_transposed else b)
    out = np.full((3, m, n), np.nan, np.float32)
    assert panels.batch_pays(a, b, out)
    assert panels.batched_product(a, b, out) is out
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_which_training_batches_the_lanes_take():
    f32 = np.float32
    assert panels.batch_pays(np.ones((2, 900, 32), f32), np.ones((2, 32, 32), f32), np.ones((2, 900, 32), f32))
    assert panels.batch_pays(np.ones((2, 32, 900), f32), np.ones((2, 900, 32), f32), None)     # V^T dM
    assert not panels.batch_pays(np.ones((2, 900, 64), f32), np.ones((2, 64, 64), f32), np.ones((2, 900, 64), f32))
    assert not panels.batch_pays(np.ones((2, 9, 32), f32), np.ones((2, 32, 48), f32), np.ones((2, 9, 48), f32))
    assert not panels.batch_pays(np.ones((2, 99, 128), f32), np.ones((2, 128, 128), f32), np.ones((2, 99, 128), f32))
    assert not panels.batch_pays(np.ones((2, 9, 32)), np.ones((2, 32, 64)), np.ones((2, 9, 64)))
    strided = np.ones((2, 9, 64), f32)[:, :, ::2]
    assert not panels.batch_pays(strided, np.ones((2, 32, 32), f32), np.ones((2, 9, 32), f32))


@pytest.mark.parametrize("lanes", [True, False])
def test_batched_matmul_takes_the_lanes_where_they_pay(monkeypatch, lanes):
    monkeypatch.setattr(perf, "LANE_KERNELS", lanes)
    calls = []
    monkeypatch.setattr(panels, "batched_product", lambda a, b, out: calls.append(1) or np.matmul(a, b, out=out))
    a, b = np.ones((4, 9, 32), np.float32), np.ones((4, 32, 32), np.float32)
    np.testing.assert_array_equal(gemm.batched_matmul(a, b), np.full((4, 9, 32), 32.0))
    assert len(calls) == (1 if lanes else 0)
