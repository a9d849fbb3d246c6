"""numba's `njit` and `prange`, imported once here for every kernel file, and `pick`, the one
rule every op's dispatcher follows.

Without numba installed, MINICNN_REFERENCE=1 still runs: every op then takes its NumPy
reference, so the kernels below each reference are left as plain Python functions that
nothing calls. Without either, the import error says which to install or set.
"""
import functools
import importlib.util

from .. import backend, perf

try:
    from numba import njit, prange
except ImportError:
    if not backend.use_reference():
        raise ImportError("minicnn's kernels need numba (pip install numba); with MINICNN_REFERENCE=1 "
                          "minicnn runs its NumPy references without it") from None

    def njit(*args, **options):
        """numba.njit's stand-in: the function itself (the references run instead)."""
        if args and callable(args[0]):
            return args[0]
        return lambda function: function

    prange = range


@njit(inline="always")
def block_range(b, blocks, m):
    """Tasks [lo, hi) of block b of m tasks cut into `blocks` blocks (the last may be short): a
    kernel's fixed blocks of work, each summing into its own partial results."""
    step = (m + blocks - 1) // blocks
    return b * step, min(m, (b + 1) * step)


def pick(reference, kernel, kernel_pays=True):
    """The version of an op to run: the numba `kernel` where it pays (a threshold in
    minicnn.perf, measured by benchmarks/kernels.py), else the NumPy `reference`; always the
    reference under MINICNN_REFERENCE=1, read at every call."""
    return kernel if kernel_pays and not backend.use_reference() else reference


def lane_kernels_run():
    """Whether the kernels written on ops.lanes' registers may run: perf.LANE_KERNELS on, not
    MINICNN_REFERENCE=1, and numba compiling (its intrinsics have no plain-Python form, so under
    NUMBA_DISABLE_JIT=1 the loop kernels beside them run instead). Read at every call."""
    return perf.LANE_KERNELS and not backend.use_reference() and not _jit_disabled()


def _jit_disabled():
    """numba's NUMBA_DISABLE_JIT setting (True without numba: nothing compiles)."""
    try:
        from numba.core import config
    except ImportError:
        return True
    return bool(config.DISABLE_JIT)


@functools.lru_cache(maxsize=None)
def numba_dot_runs():
    """Whether numba's np.dot can run: it calls scipy's BLAS (looked up once: the lookup is slow)."""
    return importlib.util.find_spec("scipy") is not None


__all__ = ["block_range", "lane_kernels_run", "njit", "numba_dot_runs", "pick", "prange"]
