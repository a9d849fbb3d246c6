"""Global settings: the default float type, layer-name counters and the kernel switch.

`set_floatx("float64")` makes every layer built afterwards compute in float64 (what the
gradient checks need); `MINICNN_REFERENCE=1` in the environment runs every op on its plain
NumPy reference instead of the numba kernel, so a student can step through the math.
Speed settings (thresholds, threads, allocator) live in `minicnn.perf`.
"""
import os
import re
import threading
from collections import defaultdict
from contextlib import contextmanager

import numpy as np

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


_pass = threading.local()          # .reference: the setting read once for a whole pass, or None


def use_reference():
    """True when MINICNN_REFERENCE=1: ops run their NumPy reference instead of numba kernels."""
    fixed = getattr(_pass, "reference", None)
    if fixed is not None:
        return fixed
    return os.environ.get("MINICNN_REFERENCE", "0") not in ("", "0", "false", "False")


@contextmanager
def reference_read_once():
    """Read MINICNN_REFERENCE once for everything inside (a model's whole pass), on this thread:
    its ops ask dozens of times, and a batch-1 pass is short enough for the reads to show."""
    if getattr(_pass, "reference", None) is not None:
        yield
        return
    try:
        _pass.reference = use_reference()
        yield
    finally:
        _pass.reference = None


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
