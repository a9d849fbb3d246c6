"""Elementwise activations as (forward, backward) pairs.

Each backward is written in terms of the forward's output y, so a layer caches only y:
    relu     y = max(z, 0)              dz = dy * (y > 0)
    sigmoid  y = 1 / (1 + exp(-z))      dz = dy * y * (1 - y)
    tanh     y = tanh(z)                dz = dy * (1 - y**2)
    softmax  y = exp(z) / sum(exp(z))   dz = y * (dy - sum(dy * y))     (over the last axis)
    linear   y = z                      dz = dy
"""
import numpy as np

from .ops.elementwise import relu, relu_backward   # noqa: F401  (relu is also activations.relu)


def softmax(z):
    """Softmax over the last axis, shifted by the max so exp never overflows."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z):
    """1 / (1 + exp(-z)); exp(-|z|) never overflows, so each sign takes its own equal form."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def tanh(z):
    return np.tanh(z)


def linear(z):
    return z


class ActivationFunction:
    """A named pair `forward(z) -> y`, `backward(dy, y) -> dz` (the Activation *layer* is in layers/core.py)."""

    def __init__(self, name, forward, backward):
        self.name, self.forward, self.backward = name, forward, backward

    def __repr__(self):
        return f"<activation {self.name}>"


_ALL = {
    "linear": ActivationFunction("linear", linear, lambda dy, y: dy),
    "relu": ActivationFunction("relu", relu, relu_backward),   # the backward is one numba pass: ops/elementwise.py
    "sigmoid": ActivationFunction("sigmoid", sigmoid, lambda dy, y: dy * y * (1 - y)),
    "tanh": ActivationFunction("tanh", tanh, lambda dy, y: dy * (1 - y * y)),
    "softmax": ActivationFunction("softmax", softmax, lambda dy, y: y * (dy - (dy * y).sum(axis=-1, keepdims=True))),
}


def get(identifier):
    """None -> linear; a name (relu, softmax, sigmoid, tanh, linear) or, as Keras takes them, the
    function of that name (`activations.relu`)."""
    if isinstance(identifier, ActivationFunction):
        return identifier
    name = getattr(identifier, "__name__", identifier) if callable(identifier) else (identifier or "linear")
    if name not in _ALL:
        raise ValueError(f"unknown activation {identifier!r}; known: {', '.join(sorted(_ALL))}")
    return _ALL[name]
