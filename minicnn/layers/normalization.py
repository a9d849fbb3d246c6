"""Batch normalization over the last axis (channels for 4-D input, features for 2-D)."""
import numpy as np

from .base import Layer


class BatchNormalization(Layer):
    """y = gamma * (x - mean) / sqrt(var + epsilon) + beta, per channel.

    training=True:  mean, var of this batch over every axis but the last, and
                    moving = moving * momentum + batch * (1 - momentum)   (Keras' update)
    training=False: the moving mean and variance.
    x: (N, H, W, C) or (N, C) -> y: same shape;  gamma, beta, moving_mean, moving_variance: (C,)
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        if axis not in (-1, 3) or not center or not scale:
            raise ValueError(f"{self.name}: only axis=-1 with center and scale is supported")
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def build(self, input_shape):
        c = (input_shape[-1],)
        self.gamma = self.add_weight("gamma", c, "ones")
        self.beta = self.add_weight("beta", c, "zeros")
        self.moving_mean = self.add_weight("moving_mean", c, "zeros", trainable=False)
        self.moving_variance = self.add_weight("moving_variance", c, "ones", trainable=False)
        super().build(input_shape)

    def forward(self, x, training=False):
        x = self.prepare(x)
        axes = tuple(range(x.ndim - 1))            # every axis but the channels
        if training:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
            m = self.momentum
            self.moving_mean.value[...] = self.moving_mean.value * m + mean * (1 - m)
            self.moving_variance.value[...] = self.moving_variance.value * m + var * (1 - m)
        else:
            mean, var = self.moving_mean.value, self.moving_variance.value
        inv_std = 1 / np.sqrt(var + self.epsilon)
        x_hat = (x - mean) * inv_std
        self.cache = (x_hat, inv_std, training)
        return x_hat * self.gamma.value + self.beta.value

    def backward(self, dy):
        """Training mode differentiates through the batch mean and variance too:
        dx = inv_std / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat)),  m = N*H*W.
        """
        x_hat, inv_std, training = self.cache
        axes = tuple(range(dy.ndim - 1))
        self.gamma.grad = (dy * x_hat).sum(axis=axes)
        self.beta.grad = dy.sum(axis=axes)
        dx_hat = dy * self.gamma.value
        if not training:                           # mean and var are constants
            return dx_hat * inv_std
        m = dy.size // dy.shape[-1]
        return (inv_std / m) * (m * dx_hat - dx_hat.sum(axis=axes) - x_hat * (dx_hat * x_hat).sum(axis=axes))

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}
