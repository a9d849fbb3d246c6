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


def test_the_intrinsics_compute_what_they_say():
    x = np.random.default_rng(0).standard_normal(40).astype(np.float32)
    out = np.zeros(64, np.float32)
    _fill(x, 5, 3, 11, out)
    factor = x[11:19]
    block = np.stack([x[5 + 3 * m] * factor for m in range(3)])            # (3, 8)
    np.testing.assert_allclose(out[:24].reshape(3, 8), block, rtol=1e-6)
    np.testing.assert_allclose(out[24:48].reshape(3, 8), 2 * block, rtol=1e-6)
    np.testing.assert_allclose(out[48:56], x[:8] + block.sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(out[56:64], x[8:16] + (block ** 2).sum(axis=0), rtol=1e-5)


@njit
def _load_from(x):
    return lanes.load(x, 0)


@pytest.mark.parametrize("array", [np.zeros(8), np.zeros((2, 8), np.float32), np.zeros(16, np.float32)[::2]],
                         ids=["float64", "2-D", "strided"])
def test_arrays_other_than_flat_contiguous_float32_are_a_typing_error(array):
    with pytest.raises(numba.core.errors.TypingError):
        _load_from(array)
