"""Weight initializers, by their Keras names.

Each is a function `(shape, dtype, layer_name) -> array` drawing from `backend.rng()`, so
`backend.set_seed(s)` makes initialization repeatable.
fan_in / fan_out follow Keras: for a kernel (kh, kw, C_in, F), fan_in = kh*kw*C_in and
fan_out = kh*kw*F; for a dense kernel (n_in, n_out), fan_in = n_in and fan_out = n_out.
"""
import numpy as np

from . import backend


def _fans(shape):
    if len(shape) < 2:
        return shape[0] if shape else 1, shape[0] if shape else 1
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(shape, dtype, name=""):
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Keras' default kernel initializer)."""
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return backend.rng().uniform(-limit, limit, size=shape).astype(dtype)


def he_normal(shape, dtype, name=""):
    """Truncated normal with std = sqrt(2 / fan_in), redrawn beyond 2 std, as Keras."""
    fan_in, _ = _fans(shape)
    std = np.sqrt(2.0 / fan_in) / 0.87962566103423978   # std of a unit normal truncated at +-2
    values = backend.rng().standard_normal(shape)
    outside = np.abs(values) > 2
    while outside.any():
        values[outside] = backend.rng().standard_normal(outside.sum())
        outside = np.abs(values) > 2
    return (values * std).astype(dtype)


def zeros(shape, dtype, name=""):
    return np.zeros(shape, dtype)


def ones(shape, dtype, name=""):
    return np.ones(shape, dtype)


_BY_NAME = {"glorot_uniform": glorot_uniform, "he_normal": he_normal, "zeros": zeros, "ones": ones}


def get(identifier):
    """A name from `_BY_NAME` or a callable `(shape, dtype, name) -> array`."""
    if callable(identifier):
        return identifier
    if identifier not in _BY_NAME:
        raise ValueError(f"unknown initializer {identifier!r}; known: {', '.join(sorted(_BY_NAME))}")
    return _BY_NAME[identifier]


def serialize(identifier):
    """The name to store in a model config. A custom callable is stored as glorot_uniform: the
    trained weights are saved anyway, the name only matters for re-initializing a loaded model."""
    if isinstance(identifier, str):
        return identifier
    return next((name for name, fn in _BY_NAME.items() if fn is identifier), "glorot_uniform")
