"""The pieces of a fused step: each runs one layer (or a BatchNormalization + ReLU pair) of a
chain on arrays, forward then backward, and sets that layer's weight gradients.

A stage computes what its layers compute, with the same ops: `LayerStage` runs the layer's own
forward and backward; the others choose a faster method by shape or share a pass, and must
give the same numbers (tests/test_compiler.py holds every seed model to that).
"""
from ..ops import winograd
from ..ops.batchnorm import normalize, normalize_backward
from ..ops.conv import conv2d, conv2d_backward
from ..ops.im2col import numba_pays


class LayerStage:
    """A layer run as the textbook runs it: its forward, its backward, its cache."""

    def __init__(self, layer):
        self.layer, self.layers = layer, [layer]

    def forward(self, x, training):
        return self.layer.forward(x, training=training)

    def backward(self, dy):
        return self.layer.backward(dy)


class ConvStage:
    """Conv2D: z = conv(x, K) + b, y = activation(z), by the method that pays for the input's
    shape (chosen once per shape): Winograd's F(4x4) or F(2x2) (ops.winograd.winograd_tile), else
    the textbook im2col product; their temporaries come from the step's buffers."""

    def __init__(self, layer, buffers):
        self.layer, self.layers, self.buffers = layer, [layer], buffers
        self.methods = {}             # input shape -> a Winograd Tiling, or None for im2col

    def method(self, x_shape):
        layer = self.layer
        if x_shape not in self.methods:
            self.methods[x_shape] = winograd.winograd_tile(x_shape, layer.kernel.shape, layer.strides, layer.padding)
        return self.methods[x_shape]

    def forward(self, x, training):
        layer = self.layer
        x = layer.prepare(x)
        pads, ho, wo = layer.geometry(x)
        z, saved = self.convolve(x, pads, ho, wo)
        if layer.use_bias:
            z += layer.bias.value
        y = layer.activation.forward(z)
        self.cache = (x.shape, pads, saved, y)
        return y

    def convolve(self, x, pads, ho, wo):
        """(z, saved) by this shape's method."""
        kernel, tiling = self.layer.kernel.value, self.method(x.shape)
        if tiling is not None:
            return winograd.conv(x, kernel, pads[0][0], pads[1][0], ho, wo, self.buffers, tiling)
        (kh, kw, c, _), n = kernel.shape, x.shape[0]
        cols = self.buffers("cols", (n * ho * wo, kh * kw * c), x.dtype) if numba_pays((kh, kw), c) else None
        return conv2d(x, kernel, self.layer.strides, pads, cols)

    def backward(self, dy):
        """Conv2D.backward's rule (docs/backprop.md, "Conv2D")."""
        layer, (x_shape, pads, saved, y) = self.layer, self.cache
        dz = layer.activation.backward(dy, y)
        if layer.use_bias:
            layer.bias.grad = dz.reshape(-1, layer.filters).sum(axis=0)        # (F,)
        need = layer.needs_input_gradient
        if isinstance(saved, winograd.Saved):
            dx, layer.kernel.grad = winograd.conv_backward(dz, saved, x_shape, pads[0][0], pads[1][0],
                                                           self.buffers, need)
        else:
            dcols = self.buffers("dcols", saved.cols.shape, dz.dtype) if need else None
            dx, layer.kernel.grad = conv2d_backward(dz, saved, layer.kernel.value, need, dcols)
        return dx


class BatchNormalizationReLUStage:
    """y = max(BN(x), 0) in the normalization's own pass each way (ops/batchnorm.py's relu=True
    kernels): backward applies ReLU's rule dy * (y > 0) with y > 0 recomputed from x."""

    def __init__(self, batchnorm, relu):
        self.batchnorm, self.layers = batchnorm, [batchnorm, relu]

    def forward(self, x, training):
        bn = self.batchnorm
        x = bn.prepare(x)
        mean, inv_std = bn.statistics(x, training)
        self.cache = (x, mean, inv_std, training)
        return normalize(x, mean, inv_std, bn.gamma.value, bn.beta.value, relu=True)      # max(BN(x), 0)

    def backward(self, dy):
        """BatchNormalization.backward of dy * (BN(x) > 0): docs/backprop.md, "BatchNormalization"."""
        bn, (x, mean, inv_std, training) = self.batchnorm, self.cache
        dx, bn.gamma.grad, bn.beta.grad = normalize_backward(dy, x, mean, inv_std, bn.gamma.value, training,
                                                             relu=True, beta=bn.beta.value)
        return dx
