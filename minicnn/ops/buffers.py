"""The check every op makes of a caller's reused output buffer (the compiler preallocates them)."""
import math

import numpy as np


def reuse_or_new(out, shape, dtype, where):
    """`out` seen as `shape` when it fits (C-contiguous, this dtype, as many elements), or a new
    array when `out` is None; a ValueError naming `where` (the op and argument) otherwise."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    shape = tuple(int(s) for s in shape)
    if out.dtype != dtype or out.size != math.prod(shape) or not out.flags.c_contiguous:
        raise ValueError(f"{where} must be a C-contiguous {np.dtype(dtype).name} array of shape {shape}, "
                         f"received {out.dtype} {out.shape}")
    return out if out.shape == shape else out.reshape(shape)


def copied_into(result, out, where):
    """`result`, or copied into the caller's buffer `out` when one was given (a NumPy reference
    makes its own array); checked as reuse_or_new checks it."""
    if out is None or result is None:
        return result
    out = reuse_or_new(out, result.shape, result.dtype, where)
    out[...] = result
    return out
