"""Input, Dense, Flatten, Dropout and the activation layers."""
import numpy as np

from .. import activations, backend, initializers, regularizers
from ..ops.elementwise import dropout, dropout_backward, random_bits
from ..ops.gemm import matmul
from .base import Layer, SymbolicTensor, positive_int


class InputLayer(Layer):
    """The graph's entry: checks the shape of x and passes it on.  x: (N, *shape)."""

    def __init__(self, input_shape=None, batch_input_shape=None, name=None, dtype=None, **kwargs):
        super().__init__(name=name or backend.unique_name("input"), dtype=dtype,
                         input_shape=input_shape, batch_input_shape=batch_input_shape, **kwargs)
        self.build((None,) + self.requested_input_shape)

    def forward(self, x, training=False):
        x = self.prepare(x)
        if x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"{self.name}: expected input of shape {self.input_shape}, received x.shape={x.shape}")
        return x

    def backward(self, dy):
        """dx = dy: the input passes through unchanged."""
        return dy


def Input(shape, name=None, dtype=None):
    """A symbolic input tensor of shape (None, *shape), as `keras.Input`."""
    layer = InputLayer(input_shape=tuple(shape), name=name, dtype=dtype)
    return SymbolicTensor(layer.output_shape, layer)


class Dense(Layer):
    """Fully connected layer: y = activation(x @ W + b).

    x: (N, n_in) -> y: (N, units);  kernel W: (n_in, units), bias b: (units,).
    """

    input_ndim = 2

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.units = positive_int(units, "units", self.name)
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: expected a 2-D input (N, features), received shape {input_shape}")
        self.kernel = self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        self.bias = self.add_weight("bias", (self.units,), self.bias_initializer) if self.use_bias else None
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def forward(self, x, training=False):
        x = self.prepare(x)
        z = matmul(x, self.kernel.value)                           # (N, units)
        if self.use_bias:
            z += self.bias.value
        y = self.activation.forward(z)
        self.logits = z if self.activation.name == "softmax" else None   # for the fused loss
        self.cache = (x, y)
        return y

    def backward(self, dy):
        """dz = the activation's backward of dy, then backward_from_logits(dz)."""
        x, y = self.cache
        return self.backward_from_logits(self.activation.backward(dy, y))

    def backward_from_logits(self, dz):
        """dW = x.T @ dz, db = sum_n dz, dx = dz @ W.T, from dz = dL/dz (before the activation).
        docs/backprop.md, "Dense"."""
        x, _ = self.cache
        self.kernel.grad = matmul(x.T, dz)                         # (n_in, units)
        if self.use_bias:
            self.bias.grad = dz.sum(axis=0)
        return matmul(dz, self.kernel.value.T)                     # (N, n_in)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation.name,
                "use_bias": self.use_bias, "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer)}


class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C), in row-major (H, W, C) order, as Keras on channels-last."""

    def compute_output_shape(self, input_shape):
        dims = input_shape[1:]
        return (input_shape[0], None if None in dims else int(np.prod(dims)))

    def forward(self, x, training=False):
        x = self.prepare(x)
        self.cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        """dx = dy.reshape(N, H, W, C): a reshape moves no value. docs/backprop.md, "Flatten"."""
        return dy.reshape(self.cache)


class Dropout(Layer):
    """Inverted dropout: y = x * mask / (1 - rate), mask ~ Bernoulli(1 - rate); identity when not training.

    `rate` is the probability of DROPPING a unit (Keras' meaning, not CS231n's keep probability).
    With `seed` the layer has its own generator; otherwise it draws from `backend.rng()`.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"{self.name}: rate must be in [0, 1), received {rate}")
        self.rate, self.seed = float(rate), seed
        self.rng = np.random.default_rng(seed) if seed is not None else None

    def forward(self, x, training=False):
        x = self.prepare(x)
        if not training or self.rate == 0:
            self.cache = None
            return x
        rng = self.rng or backend.rng()
        y, keep = dropout(x, random_bits(rng, x.shape), self.rate)   # keep = (u >= rate), u ~ U[0, 1)
        self.cache = keep
        return y

    def backward(self, dy):
        """dx = dy * mask / (1 - rate) in training (the forward's mask), dy otherwise.
        docs/backprop.md, "Dropout"."""
        keep = self.cache
        return dy if keep is None else dropout_backward(dy, keep, self.rate)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class Activation(Layer):
    """y = activation(x), elementwise (softmax: over the last axis).  Any shape."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def forward(self, x, training=False):
        x = self.prepare(x)
        y = self.activation.forward(x)
        self.logits = x if self.activation.name == "softmax" else None   # for the fused loss
        self.cache = y
        return y

    def backward(self, dy):
        """dx from the output y alone (relu: dy * (y > 0); softmax: y * (dy - sum(dy * y)); ...).
        docs/backprop.md, "Activations"."""
        return self.activation.backward(dy, self.cache)

    def backward_from_logits(self, dz):
        """dx = dz: given the gradient before the activation, nothing is left to do."""
        return dz

    def get_config(self):
        return {**super().get_config(), "activation": self.activation.name}


class ReLU(Activation):
    """y = max(x, 0)."""

    def __init__(self, **kwargs):
        kwargs.pop("activation", None)
        super().__init__("relu", **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["activation"]
        return config


class Softmax(Activation):
    """y = exp(x) / sum(exp(x)) over the last axis."""

    def __init__(self, axis=-1, **kwargs):
        if axis != -1:
            raise ValueError("Softmax: only axis=-1 is supported")
        kwargs.pop("activation", None)
        super().__init__("softmax", **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["activation"]
        return config
