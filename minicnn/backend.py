"""Global settings: the default float type, layer-name counters and the kernel switch.

`set_floatx("float64")` makes every layer built afterwards compute in float64 (what the
gradient checks need); `MINICNN_REFERENCE=1` in the environment runs every op on its plain
NumPy reference instead of the numba kernel, so a student can step through the math.
"""
import ctypes
import os
import re
from collections import defaultdict
from contextlib import contextmanager

import numpy as np

# numba's OpenMP threads spin-wait between parallel kernels by default. On a 2-core machine
# shared with other jobs, a spinning or descheduled thread made every parallel kernel wait
# a scheduler tick (8-16 ms measured, for kernels that take 0.2-3 ms alone); sleeping
# threads wake in microseconds. This must be set before numba starts its threads (at the
# first parallel kernel); a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def keep_freed_memory():
    """Ask glibc's malloc to serve big arrays from memory this process already holds.

    By default glibc maps every allocation over its mmap threshold (at most 32 MB) afresh
    and returns it to the system when freed, so each new 38 MB activation of cnn4's first
    block is paid again in page faults as the kernel zeroes it (1,100-2,500 faults a
    step). With the threshold at 1 GB and no trimming, freed arrays are reused: 20-140
    faults a step, and cnn4 trained faster in 11 of 15 pairs of runs taken in turns (step
    time ratio: median 0.94, range 0.83-1.12). The cost: memory a training run has freed
    stays with the process until it exits. Returns False where there is no glibc (or
    MINICNN_MALLOC=default in the environment, to keep glibc's own settings)."""
    if os.environ.get("MINICNN_MALLOC") == "default":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3                  # from glibc's malloc.h
    # a glibc that refuses a threshold over 32 MB returns 0: then nothing is changed
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, -1))   # -1: never trim


MALLOC_KEEPS_FREED_MEMORY = keep_freed_memory()

_FLOATX = "float32"
_NAME_COUNTS = defaultdict(int)


def floatx():
    """The default float type of new layers, as a string ("float32" or "float64")."""
    return _FLOATX


def set_floatx(value):
    """Set the default float type of layers built from now on: "float32" or "float64"."""
    global _FLOATX
    if value not in ("float32", "float64"):
        raise ValueError(f"set_floatx: expected 'float32' or 'float64', received {value!r}")
    _FLOATX = value


def as_dtype(dtype):
    """`None` -> the current floatx; anything else -> the numpy float dtype it names."""
    dtype = np.dtype(dtype or _FLOATX)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"minicnn computes in float32 or float64, not {dtype}")
    return dtype


def use_reference():
    """True when MINICNN_REFERENCE=1: ops run their NumPy reference instead of numba kernels."""
    return os.environ.get("MINICNN_REFERENCE", "0") not in ("", "0", "false", "False")


PARALLEL_MIN_SIZE = 1 << 17   # numbers a kernel must touch before a second thread pays (measured)


@contextmanager
def kernel_threads(size):
    """Run the numba kernels inside on one thread when they touch fewer than PARALLEL_MIN_SIZE numbers.

    Waking numba's second thread costs 12 us on a quiet machine and over 100 us on a busy
    one: more than a whole pass over a 48x48x8 image (batch-1 inference). Larger work keeps
    numba's own thread count. (numba's setting is per calling thread, so this is safe.)
    """
    if size >= PARALLEL_MIN_SIZE:
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def to_snake_case(name):
    """Keras' rule: "MaxPooling2D" -> "max_pooling2d", "Conv2D" -> "conv2d"."""
    name = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(prefix):
    """Keras 2 numbering: the first conv2d is "conv2d_1", the next "conv2d_2"."""
    _NAME_COUNTS[prefix] += 1
    return f"{prefix}_{_NAME_COUNTS[prefix]}"


def clear_session():
    """Restart layer numbering at 1, as `keras.backend.clear_session()` does."""
    _NAME_COUNTS.clear()


_RNG = np.random.default_rng()


def set_seed(seed):
    """Seed the generator behind every random choice in minicnn (init, shuffle, dropout)."""
    global _RNG
    _RNG = np.random.default_rng(seed)


def rng():
    """The shared `numpy.random.Generator`; layers with their own `seed=` use their own."""
    return _RNG
