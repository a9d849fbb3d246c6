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
    x: (N, H, W, C) or (N, C) -> y: same shape;  gamma, beta, moving_mean, moving_variance: (C,)
    Derivation: docs/backprop.md, "BatchNormalization".
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

    def statistics(self, x, training):
        """(mean, inv_std) per channel: this batch's, updating the moving ones (training), or the moving ones."""
        if training:
            mean, var = moments(x)                 # over every axis but the channels
            return self.batch_statistics(mean, var, x.size // x.shape[-1])
        return self.moving_mean.value, 1 / np.sqrt(self.moving_variance.value + self.epsilon)

    def batch_statistics(self, mean, var, m):
        """(mean, inv_std) of a batch whose m values per channel have this mean and variance, after
        the moving update (what the compiler calls when its kernels computed the moments)."""
        unbiased = var * (m / (m - 1 - self.epsilon)) if m > 1 else var   # estimates the population's
        r = self.momentum
        self.moving_mean.value[...] = self.moving_mean.value * r + mean * (1 - r)
        self.moving_variance.value[...] = self.moving_variance.value * r + unbiased * (1 - r)
        return mean, 1 / np.sqrt(var + self.epsilon)

    def forward(self, x, training=False):
        x = self.prepare(x)
        mean, inv_std = self.statistics(x, training)
        # x, not x_hat, is kept: the layer before already holds x, so this costs no memory
        self.cache = (x, mean, inv_std, training)
        return normalize(x, mean, inv_std, self.gamma.value, self.beta.value)     # gamma * x_hat + beta

    def backward(self, dy):
        """dgamma = sum dy * x_hat, dbeta = sum dy; dx = inv_std / m * (m * dx_hat - sum dx_hat -
        x_hat * sum(dx_hat * x_hat)) in training (through the batch statistics), dx_hat * inv_std in
        inference; dx_hat = dy * gamma, m = N*H*W. docs/backprop.md, "BatchNormalization"."""
        x, mean, inv_std, training = self.cache
        dx, self.gamma.grad, self.beta.grad = normalize_backward(dy, x, mean, inv_std, self.gamma.value, training)
        return dx

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}
