"""The one process setting the scripts make before NumPy loads: OpenBLAS's idle-thread spin.

After each product OpenBLAS's worker threads spin, waiting for the next one, for 2^N CPU
cycles before they sleep (N = 28 by default: about a tenth of a second). Between two products
a training step runs numba's kernels on the same cores, and on a 2-core machine a spinning
worker takes the core one of numba's threads needs, so the kernel waits for the scheduler.
N = 16 (tens of microseconds) keeps the workers ready across a burst of products without
holding the cores through the kernels (benchmarks/models.py measures it; RESULTS.md records it).

OpenBLAS reads the setting once, when NumPy loads it, so minicnn.perf.enable() is too late:
each script calls `set_blas_environment()` before its first import of NumPy. This module
imports only `os`.
"""
import os

OPENBLAS_THREAD_TIMEOUT = "16"      # N: idle workers spin 2^N cycles, then sleep


def set_blas_environment():
    """OPENBLAS_THREAD_TIMEOUT for this process and its children, unless the user set it."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)
