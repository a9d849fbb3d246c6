"""Batch normalization over the last axis (channels for 4-D input, features for 2-D)."""
import numpy as np

from ..ops.batchnorm import moments, normalize, normalize_backward
from .base import Layer


class BatchNormalization(Layer):
    """y = gamma * (x - mean) / sqrt(var + epsilon) + beta, per channel.

    training=True:  mean, var of this batch over every axis but the last (m = N*H*W values), and
                    moving = moving * momentum + batch * (1 - momentum)   (Keras' update), where the
                    moving variance takes Keras 2's unbiased var * m / (m - 1 - epsilon)
    training=False: the moving mean and variance.
    relu=True:      y = max(y, 0) in the same pass: how a model runs BatchNormalization followed by
                    Activation("relu") (see models/network.py, `relu_fusions`).
    x: (N, H, W, C) or (N, C) -> y: same shape;  gamma, beta, moving_mean, moving_variance: (C,)
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        if axis not in (-1, 3) or not center or not scale:
            raise ValueError(f"{self.name}: only axis=-1 with center and scale is supported")
        if not 0 <= momentum <= 1 or not epsilon > 0:
            raise ValueError(f"{self.name}: momentum must be in [0, 1] and epsilon > 0, "
                             f"received momentum={momentum!r}, epsilon={epsilon!r}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def build(self, input_shape):
        c = (input_shape[-1],)
        self.gamma = self.add_weight("gamma", c, "ones")
        self.beta = self.add_weight("beta", c, "zeros")
        self.moving_mean = self.add_weight("moving_mean", c, "zeros", trainable=False)
        self.moving_variance = self.add_weight("moving_variance", c, "ones", trainable=False)
        super().build(input_shape)

    def forward(self, x, training=False, relu=False):
        x = self.prepare(x)
        if training:
            mean, var = moments(x)                 # over every axis but the channels
            m = x.size // x.shape[-1]
            unbiased = var * (m / (m - 1 - self.epsilon)) if m > 1 else var   # estimates the population's
            r = self.momentum
            self.moving_mean.value[...] = self.moving_mean.value * r + mean * (1 - r)
            self.moving_variance.value[...] = self.moving_variance.value * r + unbiased * (1 - r)
        else:
            mean, var = self.moving_mean.value, self.moving_variance.value
        inv_std = 1 / np.sqrt(var + self.epsilon)
        # x, not x_hat, is kept: the layer before already holds x, so this costs no memory
        self.cache = (x, mean, inv_std, training, relu)
        return normalize(x, mean, inv_std, self.gamma.value, self.beta.value, relu=relu)

    def backward(self, dy):
        """Training mode differentiates through the batch mean and variance too:
        dx = inv_std / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat)),  m = N*H*W
        (see minicnn/ops/batchnorm.py for the derivation and the NumPy reference); after a fused
        ReLU, dy is first zeroed where the output y was not positive.
        """
        x, mean, inv_std, training, relu = self.cache
        dx, self.gamma.grad, self.beta.grad = normalize_backward(dy, x, mean, inv_std, self.gamma.value, training,
                                                                 relu=relu, beta=self.beta.value)
        return dx

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}
