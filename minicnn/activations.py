"""Elementwise activations as (forward, backward) pairs.

Each backward is written in terms of the forward's output y, so a layer caches only y:
    relu     y = max(z, 0)              dz = dy * (y > 0)
    sigmoid  y = 1 / (1 + exp(-z))      dz = dy * y * (1 - y)
    tanh     y = tanh(z)                dz = dy * (1 - y**2)
    softmax  y = exp(z) / sum(exp(z))   dz = y * (dy - sum(dy * y))     (over the last axis)
    linear   y = z                      dz = dy
"""
import numpy as np

from .ops.elementwise import relu, relu_backward


def softmax(z):
    """Softmax over the last axis, shifted by the max so exp never overflows."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z):
    # exp(-|z|) never overflows; pick the algebraically equal form for each sign
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


class Activation:
    """A named pair `forward(z) -> y`, `backward(dy, y) -> dz`."""

    def __init__(self, name, forward, backward):
        self.name, self.forward, self.backward = name, forward, backward

    def __repr__(self):
        return f"<activation {self.name}>"


_ALL = {
    "linear": Activation("linear", lambda z: z, lambda dy, y: dy),
    "relu": Activation("relu", relu, relu_backward),      # the backward is one numba pass: ops/elementwise.py
    "sigmoid": Activation("sigmoid", _sigmoid, lambda dy, y: dy * y * (1 - y)),
    "tanh": Activation("tanh", np.tanh, lambda dy, y: dy * (1 - y * y)),
    "softmax": Activation("softmax", softmax, lambda dy, y: y * (dy - (dy * y).sum(axis=-1, keepdims=True))),
}


def get(name):
    """None -> linear; otherwise one of relu, softmax, sigmoid, tanh, linear."""
    if isinstance(name, Activation):
        return name
    name = name or "linear"
    if name not in _ALL:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(_ALL))}")
    return _ALL[name]
