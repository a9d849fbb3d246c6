"""Pooling: MaxPooling2D, AveragePooling2D and GlobalAveragePooling2D (channels-last)."""
import numpy as np

from ..ops.pooling import avg_pool, avg_pool_backward, max_pool, max_pool_backward
from .base import Layer
from .conv import as_pair, window_geometry


class _Pooling2D(Layer):
    input_ndim = 4

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = as_pair(pool_size, "pool_size", self.name)
        self.strides = as_pair(strides, "strides", self.name) if strides is not None else self.pool_size
        if padding not in ("valid", "same"):
            raise ValueError(f"{self.name}: padding must be 'valid' or 'same', received {padding!r}")
        self.padding = padding

    def compute_output_shape(self, input_shape):
        _, ho, wo = window_geometry(self, input_shape, self.pool_size)
        return input_shape[0], ho, wo, input_shape[3]

    def geometry(self, x):
        pads, _, _ = window_geometry(self, x.shape, self.pool_size)
        return pads

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}


class MaxPooling2D(_Pooling2D):
    """y = max over each pool window; the gradient flows only to the max ("same" pads with -inf).

    x: (N, H, W, C) -> y: (N, Ho, Wo, C); windows may overlap (pool 3, stride 2).
    """

    def forward(self, x, training=False):
        """y = max over each window, argmax = where it was:  (N, H, W, C) -> (N, Ho, Wo, C)."""
        x = self.prepare(x)
        pads = self.geometry(x)
        y, argmax = max_pool(x, self.pool_size, self.strides, pads)
        self.cache = (x.shape, pads, argmax)
        return y

    def backward(self, dy):
        """dx[argmax] += dy, zero elsewhere (docs/backprop.md, "MaxPooling2D"): (N, Ho, Wo, C) -> (N, H, W, C)."""
        x_shape, pads, argmax = self.cache
        return max_pool_backward(dy, argmax, x_shape, self.pool_size, self.strides, pads)


class AveragePooling2D(_Pooling2D):
    """y = mean over the real (unpadded) cells of each window, as TensorFlow.

    x: (N, H, W, C) -> y: (N, Ho, Wo, C); backward spreads dy / count over the window.
    """

    def forward(self, x, training=False):
        """y = mean of each window's real cells:  (N, H, W, C) -> (N, Ho, Wo, C)."""
        x = self.prepare(x)
        pads = self.geometry(x)
        self.cache = (x.shape, pads)
        return avg_pool(x, self.pool_size, self.strides, pads)

    def backward(self, dy):
        """dx[cell] += dy / count for every real cell of each window (docs/backprop.md, "AveragePooling2D")."""
        x_shape, pads = self.cache
        return avg_pool_backward(dy, x_shape, self.pool_size, self.strides, pads)


class GlobalAveragePooling2D(Layer):
    """y[n, c] = mean over H, W of x[n, :, :, c].  x: (N, H, W, C) -> y: (N, C)."""

    input_ndim = 4

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def forward(self, x, training=False):
        """y[n, c] = mean over H, W of x[n, :, :, c]:  (N, H, W, C) -> (N, C)."""
        x = self.prepare(x)
        self.cache = x.shape
        return x.mean(axis=(1, 2))

    def backward(self, dy):
        """dx[n, h, w, c] = dy[n, c] / (H*W): every cell contributed 1/(H*W) of the mean
        (docs/backprop.md, "GlobalAveragePooling2D")."""
        n, h, w, c = self.cache
        return np.broadcast_to((dy / (h * w))[:, None, None, :], (n, h, w, c)).copy()
