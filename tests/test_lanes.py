"""minicnn/ops/lanes.py: each intrinsic does what its docstring says, checked against NumPy."""
import numba
import numpy as np
import pytest
from numba import njit

from minicnn.ops import lanes


@njit
def _fill(x, start, step, factor_at, out):
    block = lanes.broadcast_multiply_add(lanes.zeros(3), x, start, step, lanes.load(x, factor_at))
    lanes.store_all(block, out, 0, 8)
    lanes.add_all_into(block, out, 24, 8)
    lanes.add_all_into(block, out, 24, 8)
    sums, squares = lanes.add_squares(lanes.load(x, 0), lanes.load(x, 8), block)
    lanes.store(sums, out, 48)
    lanes.store(squares, out, 56)
    lanes.store(lanes.multiply_add(lanes.load(x, 0), lanes.load(x, 8), lanes.load(x, 16)), out, 64)


def test_the_intrinsics_compute_what_they_say():
    x = np.random.default_rng(0).standard_normal(40).astype(np.float32)
    out = np.zeros(72, np.float32)
    _fill(x, 5, 3, 11, out)
    factor = x[11:19]
    block = np.stack([x[5 + 3 * m] * factor for m in range(3)])            # (3, 8)
    np.testing.assert_allclose(out[:24].reshape(3, 8), block, rtol=1e-6)
    np.testing.assert_allclose(out[24:48].reshape(3, 8), 2 * block, rtol=1e-6)
    np.testing.assert_allclose(out[48:56], x[:8] + block.sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(out[56:64], x[8:16] + (block ** 2).sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(out[64:72], x[:8] * x[8:16] + x[16:24], rtol=1e-6)


@njit
def _load_from(x):
    return lanes.load(x, 0)


@pytest.mark.parametrize("array", [np.zeros(8), np.zeros((2, 8), np.float32), np.zeros(16, np.float32)[::2]],
                         ids=["float64", "2-D", "strided"])
def test_arrays_other_than_flat_contiguous_float32_are_a_typing_error(array):
    with pytest.raises(numba.core.errors.TypingError):
        _load_from(array)


@njit
def _matrix_updates(a, b_rows, out):
    block = lanes.zeros(6)                                             # 3 rows x 2 Lanes
    for k in range(a.shape[1]):
        block = lanes.outer_multiply_add(block, a.reshape(-1), k, a.shape[1], lanes.load_all(b_rows, 16 * k, 8, 2))
    lanes.store_rows(block, out, 0, 20, 2)
    lanes.add_rows(block, out, 60, 20, 2)
    lanes.add_rows(block, out, 60, 20, 2)


def test_rank_one_updates_store_rows_of_a_matrix():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((5, 16)).astype(np.float32)
    out = np.zeros(120, np.float32)
    _matrix_updates(a, b.reshape(-1), out)
    rows = out.reshape(6, 20)
    np.testing.assert_allclose(rows[:3, :16], a @ b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows[3:, :16], 2 * (a @ b), rtol=1e-5, atol=1e-6)
    assert not rows[:, 16:].any()                                      # nothing past each row's 16


@njit
def _loads(x, out):
    taps = lanes.load_all(x, 0, 8, 3)
    lanes.store(lanes.dot_loads(taps, x, 24, 8, lanes.zero()), out, 0)
    block = lanes.multiply_add_loads(lanes.zeros(2), x, 8, 16, lanes.load(x, 0))
    lanes.store_all(block, out, 8, 8)
    lanes.store(lanes.add(lanes.load(x, 0), lanes.load(x, 8)), out, 24)


def test_loads_weighted_sums_and_products():
    x = np.random.default_rng(2).standard_normal(48).astype(np.float32)
    out = np.zeros(32, np.float32)
    _loads(x, out)
    v = x[:48].reshape(6, 8)
    np.testing.assert_allclose(out[:8], v[0] * v[3] + v[1] * v[4] + v[2] * v[5], rtol=1e-5)
    np.testing.assert_allclose(out[8:24], np.concatenate([v[1] * v[0], v[3] * v[0]]), rtol=1e-6)
    np.testing.assert_allclose(out[24:], v[0] + v[1], rtol=1e-6)
