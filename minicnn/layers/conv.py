"""Convolutions: Conv2D, DepthwiseConv2D and SeparableConv2D (channels-last, Keras weight layouts).

Conv2D is a matrix product on im2col's patch matrix:
    cols = im2col(x)                  (N*Ho*Wo, kh*kw*C)   every receptive field as a row
    z    = cols @ K + b               (N*Ho*Wo, F)         K reshaped to (kh*kw*C, F)
and its backward is the same product transposed, with col2im (the adjoint of im2col)
folding the patch gradients back onto the image.

A 3x3, stride-1 Conv2D between wide layers (64 channels or more on both sides), given a
batch (256 output tiles of 2x2 or more), computes the same z with Winograd's F(2x2, 3x3)
instead (ops/winograd.py): 16 products, each 1/36 of im2col's one, 2.25x fewer
multiplications in all. cnn4's 12x12x128->512 and 6x6x512->512 layers, timed alone
(batch 64, medians): forward 29.6 -> 19.8 and 29.9 -> 18.6 ms, backward 57.4 -> 42.0 and
59.1 -> 34.6 ms. At 32 channels (48x48x32->32) it was faster alone too (27.7 -> 19.1,
40.0 -> 34.1 ms), but cnn8, whose largest layer that is, trained no faster with it (253.1 vs
254.6 ms a step, alternating): the 64-channel threshold stays. MINICNN_REFERENCE=1 keeps
every convolution on im2col.
"""
import warnings

import numpy as np

from .. import activations, initializers, regularizers
from ..ops import winograd
from ..ops.depthwise import depthwise_conv, depthwise_conv_backward
from ..ops.gemm import matmul
from ..ops.im2col import col2im, im2col
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
        self._scratch = {}

    def scratch(self, name, shape, dtype):
        """An array kept from one step to the next, for temporaries that never leave the layer.
        A fresh 200 MB array (the 5x5 conv's patch matrix) costs ~25 ms of page faults a step."""
        buffer = self._scratch.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = self._scratch[name] = np.empty(shape, dtype)
        return buffer

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
        x = self.prepare(x)
        pads, ho, wo = self.geometry(x)
        n, f = x.shape[0], self.filters
        kh, kw = self.kernel_size
        # in training, big temporaries are reused from step to step (see scratch): they are
        # borrowed by self.cache until the next forward; inference allocates, so it holds no
        # batch-256 buffer
        scratch = self.scratch if training else None
        cols = winograd_saved = None
        if winograd.pays(self.kernel_size, self.strides, n, ho, wo, x.shape[3], f):   # same z, fewer multiplications
            z, winograd_saved = winograd.conv3x3(x, self.kernel.value, pads[0][0], pads[1][0], ho, wo, scratch)
        else:
            shape = (n * ho * wo, kh * kw * x.shape[3])
            cols = scratch("cols", shape, x.dtype) if training else np.empty(shape, x.dtype)
            im2col(x, self.kernel_size, self.strides, pads, out=cols)                      # (N*Ho*Wo, kh*kw*C)
            z = matmul(cols, self.kernel.value.reshape(-1, f))                            # (N*Ho*Wo, F)
        if self.use_bias:
            z += self.bias.value
        y = self.activate(z.reshape(n, ho, wo, f))
        self.cache = (x.shape, pads, cols, winograd_saved, y)
        return y

    def backward(self, dy, input_gradient=True):
        *_, y = self.cache
        return self.backward_from_logits(self.activation.backward(dy, y), input_gradient)

    def backward_from_logits(self, dz, input_gradient=True):
        """dz -> dx, setting the kernel's and bias' .grad; input_gradient=False: no dx (None),
        for a layer that reads the model's input (see Network.backward)."""
        x_shape, pads, cols, winograd_saved, _ = self.cache
        if self.use_bias:
            self.bias.grad = dz.reshape(-1, self.filters).sum(axis=0)
        if winograd_saved is not None:
            dx, self.kernel.grad = winograd.conv3x3_backward(dz, winograd_saved, x_shape, pads[0][0], pads[1][0],
                                                             self.scratch)
            return dx if input_gradient else None
        dz = dz.reshape(-1, self.filters)                                    # (N*Ho*Wo, F)
        self.kernel.grad = matmul(cols.T, dz).reshape(self.kernel.shape)     # (kh*kw*C, F) -> (kh, kw, C, F)
        if not input_gradient:
            return None
        # K.T is a view: OpenBLAS reads it transposed (copying it cost 7 ms a step for a 3x3x512x512 K)
        kernel_t = self.kernel.value.reshape(-1, self.filters).T             # (F, kh*kw*C)
        dcols = matmul(dz, kernel_t, out=self.scratch("dcols", (dz.shape[0], kernel_t.shape[1]), dz.dtype))
                                                                             # (N*Ho*Wo, kh*kw*C)
        return col2im(dcols, x_shape, self.kernel_size, self.strides, pads)  # (N, H, W, C)

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
        x = self.prepare(x)
        pads, _, _ = self.geometry(x)
        z = depthwise_conv(x, self.depthwise_kernel.value, self.strides, pads)   # (N, Ho, Wo, C*M)
        if self.use_bias:
            z += self.bias.value
        y = self.activate(z)
        self.cache = (x, pads, y)
        return y

    def backward(self, dy):
        *_, y = self.cache
        return self.backward_from_logits(self.activation.backward(dy, y))

    def backward_from_logits(self, dz):
        x, pads, _ = self.cache
        if self.use_bias:
            self.bias.grad = dz.sum(axis=(0, 1, 2))
        dx, self.depthwise_kernel.grad = depthwise_conv_backward(dz, x, self.depthwise_kernel.value,
                                                                 self.strides, pads)
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
        *_, y = self.cache
        return self.backward_from_logits(self.activation.backward(dy, y))

    def backward_from_logits(self, dz):
        x, pads, d2, _ = self.cache
        dz2 = dz.reshape(-1, self.filters)                                       # (N*Ho*Wo, F)
        pointwise = self.pointwise_kernel.value.reshape(-1, self.filters)        # (C*M, F)
        self.pointwise_kernel.grad = matmul(d2.T, dz2).reshape(self.pointwise_kernel.shape)
        if self.use_bias:
            self.bias.grad = dz2.sum(axis=0)
        dd = matmul(dz2, pointwise.T).reshape(dz.shape[:3] + (-1,))  # (N, Ho, Wo, C*M)
        dx, self.depthwise_kernel.grad = depthwise_conv_backward(dd, x, self.depthwise_kernel.value,
                                                                 self.strides, pads)
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
