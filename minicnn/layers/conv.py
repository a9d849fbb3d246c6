"""Convolutions: Conv2D, DepthwiseConv2D and SeparableConv2D (channels-last, Keras weight layouts).

Conv2D is a matrix product on im2col's patch matrix:
    cols = im2col(x)                  (N*Ho*Wo, kh*kw*C)   every receptive field as a row
    z    = cols @ K + b               (N*Ho*Wo, F)         K reshaped to (kh*kw*C, F)
and its backward is the same product transposed, with col2im (the adjoint of im2col)
folding the patch gradients back onto the image. `ops.conv` computes exactly that
(MINICNN_REFERENCE=1 runs those lines in NumPy; by default numba's im2col where it pays).
Derivations: docs/backprop.md.
"""
import warnings

from .. import activations, initializers, regularizers
from ..ops.conv import conv2d, conv2d_backward
from ..ops.depthwise import depthwise_conv, depthwise_conv_backward
from ..ops.gemm import matmul
from ..ops.padding import conv_geometry
from .base import Layer, positive_int


def as_pair(value, what="kernel_size", layer="layer"):
    """3 -> (3, 3); (3, 5) -> (3, 5), as Keras accepts both."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{layer}: {what} must be a positive int or a pair of them, received {value!r}")
    return pair


def window_geometry(layer, input_shape, window):
    """conv_geometry of `layer`'s window (its strides and padding) on input_shape (N, H, W, C):
    (pads, Ho, Wo); an error naming the layer when no window fits, at build time when the
    input size is known then, else in forward."""
    try:
        return conv_geometry(input_shape[1], input_shape[2], window, layer.strides, layer.padding)
    except ValueError as error:
        raise ValueError(f"{layer.name}: {error}; received input_shape={tuple(input_shape)}") from None


class _Conv(Layer):
    """Shared geometry of the convolutions: kernel_size, strides, padding and the activation."""

    input_ndim = 4

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = as_pair(kernel_size, "kernel_size", self.name)
        self.strides = as_pair(strides, "strides", self.name)
        if padding not in ("valid", "same"):
            raise ValueError(f"{self.name}: padding must be 'valid' or 'same', received {padding!r}")
        self.padding = padding
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)

    def spatial_output_shape(self, input_shape):
        _, ho, wo = window_geometry(self, input_shape, self.kernel_size)
        return input_shape[0], ho, wo

    def geometry(self, x):
        """((top, bottom), (left, right)) padding and the output size Ho, Wo for x."""
        return window_geometry(self, x.shape, self.kernel_size)

    def activate(self, z):
        y = self.activation.forward(z)
        self.logits = z if self.activation.name == "softmax" else None   # for the fused loss
        return y

    def get_config(self):
        return {**super().get_config(), "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding, "activation": self.activation.name, "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer)}


class Conv2D(_Conv):
    """2-D convolution (cross-correlation, as every framework): y = activation(conv(x, K) + b).

    x: (N, H, W, C) -> y: (N, Ho, Wo, filters);  kernel K: (kh, kw, C, filters), bias: (filters,)
    valid: Ho = floor((H - kh) / sh) + 1;   same: Ho = ceil(H / sh), extra pad at bottom/right (TF).
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", **kwargs):
        super().__init__(kernel_size, strides, padding, **kwargs)
        self.filters = positive_int(filters, "filters", self.name)

    def build(self, input_shape):
        kh, kw = self.kernel_size
        self.kernel = self.add_weight("kernel", (kh, kw, input_shape[-1], self.filters), self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        self.bias = self.add_weight("bias", (self.filters,), self.bias_initializer) if self.use_bias else None
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return self.spatial_output_shape(input_shape) + (self.filters,)

    def forward(self, x, training=False):
        """z = im2col(x) @ K + b, y = activation(z):  (N, H, W, C) -> (N, Ho, Wo, F)."""
        x = self.prepare(x)
        pads, _, _ = self.geometry(x)
        z, saved = conv2d(x, self.kernel.value, self.strides, pads)               # (N, Ho, Wo, F)
        if self.use_bias:
            z += self.bias.value
        y = self.activate(z)
        self.cache = (saved, y)
        return y

    def backward(self, dy):
        """dK = colsᵀ·dz, db = Σ dz, dx = col2im(dz·Kᵀ), with dz = dy through the activation
        (docs/backprop.md, "Conv2D"). dy (N, Ho, Wo, F) -> dx (N, H, W, C), or None when
        needs_input_gradient is False (the graph's choice for a layer reading the model's input)."""
        _, y = self.cache
        return self.backward_from_logits(self.activation.backward(dy, y))

    def backward_from_logits(self, dz):
        """backward's rule from dz, the gradient before the activation (what a fused softmax loss gives)."""
        saved, _ = self.cache
        if self.use_bias:
            self.bias.grad = dz.reshape(-1, self.filters).sum(axis=0)              # Σ over N, Ho, Wo: (F,)
        dx, self.kernel.grad = conv2d_backward(dz, saved, self.kernel.value, self.needs_input_gradient)
        return dx

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


class DepthwiseConv2D(_Conv):
    """Each input channel convolved with its own depth_multiplier (M) filters.

    y[..., c*M + m] = sum_ij x[.., c] * K[i, j, c, m] + b[c*M + m]
    x: (N, H, W, C) -> y: (N, Ho, Wo, C*M);  depthwise_kernel: (kh, kw, C, M), bias: (C*M,)
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 depthwise_initializer="glorot_uniform", depthwise_regularizer=None, **kwargs):
        super().__init__(kernel_size, strides, padding, **kwargs)
        self.depth_multiplier = positive_int(depth_multiplier, "depth_multiplier", self.name)
        self.depthwise_initializer = depthwise_initializer
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        _warn_if_kernel_regularizer(self)

    def build(self, input_shape):
        kh, kw = self.kernel_size
        c, m = input_shape[-1], self.depth_multiplier
        self.depthwise_kernel = self.add_weight("depthwise_kernel", (kh, kw, c, m), self.depthwise_initializer,
                                                regularizer=self.depthwise_regularizer)
        self.bias = self.add_weight("bias", (c * m,), self.bias_initializer) if self.use_bias else None
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return self.spatial_output_shape(input_shape) + (input_shape[-1] * self.depth_multiplier,)

    def forward(self, x, training=False):
        """z = depthwise(x, K) + b, y = activation(z):  (N, H, W, C) -> (N, Ho, Wo, C*M)."""
        x = self.prepare(x)
        pads, _, _ = self.geometry(x)
        z = depthwise_conv(x, self.depthwise_kernel.value, self.strides, pads)   # (N, Ho, Wo, C*M)
        if self.use_bias:
            z += self.bias.value
        y = self.activate(z)
        self.cache = (x, pads, y)
        return y

    def backward(self, dy):
        """dK[i, j, c, m] = Σ xp[.., c]·dz[.., cM+m], db = Σ dz, dxp[.., c] += Σ_m K[i, j, c, m]·dz[.., cM+m],
        with dz = dy through the activation (docs/backprop.md, "DepthwiseConv2D").
        dy (N, Ho, Wo, C*M) -> dx (N, H, W, C), or None when needs_input_gradient is False."""
        *_, y = self.cache
        return self.backward_from_logits(self.activation.backward(dy, y))

    def backward_from_logits(self, dz):
        """backward's rule from dz, the gradient before the activation (what a fused softmax loss gives)."""
        x, pads, _ = self.cache
        if self.use_bias:
            self.bias.grad = dz.sum(axis=(0, 1, 2))
        dx, self.depthwise_kernel.grad = depthwise_conv_backward(dz, x, self.depthwise_kernel.value,
                                                                 self.strides, pads, self.needs_input_gradient)
        return dx

    def get_config(self):
        return {**super().get_config(), "depth_multiplier": self.depth_multiplier,
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "depthwise_regularizer": regularizers.serialize(self.depthwise_regularizer)}


class SeparableConv2D(_Conv):
    """Depthwise convolution, then a 1x1 "pointwise" convolution mixing channels.

    d = depthwise(x, Kd);  y = activation(d @ Kp + b)
    x: (N, H, W, C) -> y: (N, Ho, Wo, filters);  depthwise_kernel: (kh, kw, C, M),
    pointwise_kernel: (1, 1, C*M, filters), bias: (filters,)   (M = depth_multiplier, usually 1)
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 depthwise_regularizer=None, pointwise_regularizer=None, **kwargs):
        super().__init__(kernel_size, strides, padding, **kwargs)
        self.filters = positive_int(filters, "filters", self.name)
        self.depth_multiplier = positive_int(depth_multiplier, "depth_multiplier", self.name)
        self.depthwise_initializer, self.pointwise_initializer = depthwise_initializer, pointwise_initializer
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.pointwise_regularizer = regularizers.get(pointwise_regularizer)
        _warn_if_kernel_regularizer(self)

    def build(self, input_shape):
        kh, kw = self.kernel_size
        cm = input_shape[-1] * self.depth_multiplier
        self.depthwise_kernel = self.add_weight("depthwise_kernel", (kh, kw, input_shape[-1], self.depth_multiplier),
                                                self.depthwise_initializer, regularizer=self.depthwise_regularizer)
        self.pointwise_kernel = self.add_weight("pointwise_kernel", (1, 1, cm, self.filters),
                                                self.pointwise_initializer, regularizer=self.pointwise_regularizer)
        self.bias = self.add_weight("bias", (self.filters,), self.bias_initializer) if self.use_bias else None
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return self.spatial_output_shape(input_shape) + (self.filters,)

    def forward(self, x, training=False):
        """d = depthwise(x, Kd), z = d @ Kp + b, y = activation(z):  (N, H, W, C) -> (N, Ho, Wo, F)."""
        x = self.prepare(x)
        pads, ho, wo = self.geometry(x)
        n, f = x.shape[0], self.filters
        d = depthwise_conv(x, self.depthwise_kernel.value, self.strides, pads)   # (N, Ho, Wo, C*M)
        d2 = d.reshape(n * ho * wo, -1)                                           # (N*Ho*Wo, C*M)
        z = matmul(d2, self.pointwise_kernel.value.reshape(-1, f))                # (N*Ho*Wo, F)
        if self.use_bias:
            z += self.bias.value
        y = self.activate(z.reshape(n, ho, wo, f))
        self.cache = (x, pads, d2, y)
        return y

    def backward(self, dy):
        """dKp = dᵀ·dz, db = Σ dz, dd = dz·Kpᵀ, then the depthwise rule takes dd to dx and dKd, with
        dz = dy through the activation (docs/backprop.md, "SeparableConv2D").
        dy (N, Ho, Wo, F) -> dx (N, H, W, C), or None when needs_input_gradient is False."""
        *_, y = self.cache
        return self.backward_from_logits(self.activation.backward(dy, y))

    def backward_from_logits(self, dz):
        """backward's rule from dz, the gradient before the activation (what a fused softmax loss gives)."""
        x, pads, d2, _ = self.cache
        dz2 = dz.reshape(-1, self.filters)                                       # (N*Ho*Wo, F)
        pointwise = self.pointwise_kernel.value.reshape(-1, self.filters)        # (C*M, F)
        self.pointwise_kernel.grad = matmul(d2.T, dz2).reshape(self.pointwise_kernel.shape)
        if self.use_bias:
            self.bias.grad = dz2.sum(axis=0)
        dd = matmul(dz2, pointwise.T).reshape(dz.shape[:3] + (-1,))  # (N, Ho, Wo, C*M)
        dx, self.depthwise_kernel.grad = depthwise_conv_backward(dd, x, self.depthwise_kernel.value,
                                                                 self.strides, pads, self.needs_input_gradient)
        return dx

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "depth_multiplier": self.depth_multiplier,
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "pointwise_initializer": initializers.serialize(self.pointwise_initializer),
                "depthwise_regularizer": regularizers.serialize(self.depthwise_regularizer),
                "pointwise_regularizer": regularizers.serialize(self.pointwise_regularizer)}


def _warn_if_kernel_regularizer(layer):
    """Keras 2 accepts kernel_regularizer here but never uses it (these layers have no `kernel`);
    minicnn does the same, so that a Keras model trains the same way, and says so."""
    if layer.kernel_regularizer is not None:
        warnings.warn(f"{layer.name}: kernel_regularizer has no effect on {type(layer).__name__} (as in Keras); "
                      f"use depthwise_regularizer / pointwise_regularizer", stacklevel=3)
        layer.kernel_regularizer = None
