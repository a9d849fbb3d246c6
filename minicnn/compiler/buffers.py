"""The compiler's buffer plan: the temporaries a step needs, allocated once per shape and reused.

A fresh large array is paid in page faults every time it is touched first; a training step
that asks for the same temporaries (im2col's patch matrix, Winograd's V and M) on every batch
reuses them instead. Only arrays that never leave a step live here: an array handed out stays
in use (by the forward's saved state) until the same step asks for it again, which the order
forward, backward, next forward guarantees.
"""
import numpy as np


class Buffers:
    """`buffers(name, shape, dtype)`: the array `name`, the last one when its shape and dtype
    fit, else a new one kept for the next call (a new batch shape replaces the old arrays)."""

    def __init__(self):
        self.arrays = {}

    def __call__(self, name, shape, dtype):
        array = self.arrays.get(name)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = self.arrays[name] = np.empty(shape, dtype)
        return array

    def nbytes(self):
        """Bytes held, for benchmarks' memory tables."""
        return sum(a.nbytes for a in self.arrays.values())
