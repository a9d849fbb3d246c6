"""The pointwise half of a separable layer's tile, shared by ops/separable.py and
ops/separable_lanes.py: the tile's 1x1 products and the sums a BatchNormalization reads.

    y[p, f]          = sum_c d[p, c] * pointwise[c, f]        (forward: one product a tile)
    dpointwise[c, f] += sum_p d[p, c] * g[p, f]                (backward: two products a tile)
    dd[p, c]         = sum_f g[p, f] * pointwise[c, f]

over the tile's pixels p. The products are np.dot calls (OpenBLAS through scipy, as numba does
it): no loop written in numba comes near them. A tile keeps within perf.OPENBLAS_ONE_THREAD_WORK
multiply-adds, so that OpenBLAS runs each on the calling thread: a larger one would wake
OpenBLAS's own threads inside numba's. numba checks a cached kernel against its own file only:
after editing this file, touch ops/separable.py and ops/separable_lanes.py, whose kernels inline it.
"""
import numpy as np

from .. import perf
from .jit import njit

TILE_PIXELS = 256    # output pixels per tile (rounded to whole rows): its d fits in the L1 cache


def tile_rows(wo, c, f):
    """Output rows per tile: about TILE_PIXELS pixels and products of at most
    perf.OPENBLAS_ONE_THREAD_WORK multiply-adds, but at least one row."""
    return max(1, min(TILE_PIXELS, perf.OPENBLAS_ONE_THREAD_WORK // (c * f)) // wo)


@njit(inline="always")
def add_to(total, part):
    """total += part, in loops (an array expression in a prange body would be a parallel loop of its own)."""
    for i in range(total.shape[0]):
        for j in range(total.shape[1]):
            total[i, j] += part[i, j]


@njit(inline="always")
def add_statistics(y, sums, squares):
    """sums[j] += y[p, j], squares[j] += y[p, j]**2 over the tile's rows p: in y's dtype over the
    tile (a few hundred numbers a column), then once into the float64 totals."""
    part, part_squares = np.zeros(y.shape[1], y.dtype), np.zeros(y.shape[1], y.dtype)
    for p in range(y.shape[0]):
        for j in range(y.shape[1]):
            v = y[p, j]
            part[j] += v
            part_squares[j] += v * v
    for j in range(y.shape[1]):
        sums[j] += part[j]
        squares[j] += part_squares[j]


@njit
def forward_products(d, kp, y, n, ho0, rows, sums, squares, task):
    """y[n, ho0:ho0 + rows] = the tile's d (rows, Wo*C) @ kp (C, F), as (pixels, C) @ (C, F); with
    sums and squares ((tasks, k*F) float64, or None: no statistics), the tile's per-column sums and
    sums of squares into sums[task] and squares[task] (k pixels a row: ops.batchnorm.widening)."""
    wo_n, f_n = y.shape[2], y.shape[3]
    tile = y[n, ho0:ho0 + rows].reshape(rows * wo_n, f_n)
    np.dot(d.reshape(rows * wo_n, kp.shape[0]), kp, tile)                # (pixels, C) @ (C, F)
    if sums is not None:
        add_statistics(tile.reshape(-1, sums.shape[1]), sums[task], squares[task])


@njit(inline="always")
def backward_products(d, g, kpt, dkp, dd):
    """dkp (C, F) += d.T @ g and dd (pixels, C) = g @ kpt, for d (pixels, C), g (pixels, F), kpt (F, C)."""
    add_to(dkp, np.dot(d.T, g))                                         # (C, pixels) @ (pixels, F)
    np.dot(g, kpt, dd)                                                  # (pixels, F) @ (F, C)
