"""The one process setting the scripts make before NumPy loads: OpenBLAS's idle-thread spin.

After each product OpenBLAS's worker threads spin, waiting for the next one, for 2^N CPU
cycles before they sleep (N = 28 by default: about a tenth of a second). In a training step
numba's kernels run between the products on the same cores, and on a 2-core machine a
spinning worker takes the core one of numba's threads needs, so the kernel waits for the
scheduler: a process that works in batches sets N = 16 (tens of microseconds). One face's
inference is the other way round: its few products come close together and its kernels
run on one thread, and a worker that has gone to sleep takes longer to wake than the next
product takes to arrive, so a process that classifies one face at a time sets N = 24 (a few
milliseconds). benchmarks/environment_ab.py and benchmarks/models.py measure both.

OpenBLAS reads the setting once, when NumPy loads it, so minicnn.perf.enable() is too late:
each script calls `set_blas_environment()` before its first import of NumPy. This module
imports only `os`.
"""
import os

BATCHES = "16"       # N for training and batch evaluation
ONE_FACE = "24"      # N for the webcam and predict.py: one face at a time


def set_blas_environment(one_face=False):
    """OPENBLAS_THREAD_TIMEOUT for this process and its children, unless the user set it."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", ONE_FACE if one_face else BATCHES)
