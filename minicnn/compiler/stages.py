"""The pieces of a fused step: each runs one layer (or a BatchNormalization + ReLU pair) of a
chain on arrays, forward then backward, and sets that layer's weight gradients.

A stage computes what its layers compute, with the same ops: `LayerStage` runs the layer's own
forward and backward; the others choose a faster method by shape or share a pass, and must
give the same numbers (tests/test_compiler.py holds every seed model to that).
"""
from ..ops.batchnorm import normalize, normalize_backward
from ..ops.conv import conv2d, conv2d_backward


class LayerStage:
    """A layer run as the textbook runs it: its forward, its backward, its cache."""

    def __init__(self, layer):
        self.layer, self.layers = layer, [layer]

    def forward(self, x, training):
        return self.layer.forward(x, training=training)

    def backward(self, dy):
        return self.layer.backward(dy)


class ConvStage:
    """Conv2D: z = conv(x, K) + b, y = activation(z), its temporaries from the step's buffers."""

    def __init__(self, layer, buffers):
        self.layer, self.layers, self.buffers = layer, [layer], buffers

    def forward(self, x, training):
        layer = self.layer
        x = layer.prepare(x)
        pads, _, _ = layer.geometry(x)
        z, saved = conv2d(x, layer.kernel.value, layer.strides, pads, self.buffers if training else None)
        if layer.use_bias:
            z += layer.bias.value
        y = layer.activation.forward(z)
        self.cache = (saved, y)
        return y

    def backward(self, dy):
        """Conv2D.backward's rule (docs/backprop.md, "Conv2D")."""
        layer, (saved, y) = self.layer, self.cache
        dz = layer.activation.backward(dy, y)
        if layer.use_bias:
            layer.bias.grad = dz.reshape(-1, layer.filters).sum(axis=0)        # (F,)
        dx, layer.kernel.grad = conv2d_backward(dz, saved, layer.kernel.value, layer.needs_input_gradient)
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
