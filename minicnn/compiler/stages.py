"""The pieces of a fused step: each runs one layer (or a BatchNormalization + ReLU pair) of a
chain on arrays, forward then backward, and sets that layer's weight gradients.

A stage computes what its layers compute, with the same ops: `LayerStage` runs the layer's own
forward and backward; the others choose a faster method by shape or share a pass, and must
give the same numbers (tests/test_compiler.py holds every seed model to that). Each also has
`bind(x_shape, dtype) -> (run, y_shape, y_dtype)`: its inference forward for inputs of one shape
and dtype, the kernel calls' arguments made once, for an inference plan (plan.py).
"""
from typing import NamedTuple

import numpy as np

from ..activations import get as get_activation
from ..layers.conv import window_geometry
from ..ops import winograd
from ..ops.batchnorm import normalize, normalize_backward
from ..ops.conv import bind_conv2d, conv2d, conv2d_backward
from ..ops.depthwise import bind_depthwise_conv, depthwise_conv
from ..ops.direct_conv import bind_direct_conv2d, direct_conv2d, direct_conv2d_backward, direct_pays
from ..ops.gemm import bind_matmul, column_sums, matmul
from ..ops.im2col import numba_pays
from ..ops.separable import bind_separable_conv2d, separable_conv2d, separable_conv2d_backward, separable_pays

LINEAR = get_activation("linear")


class DirectSaved(NamedTuple):
    """What ops.direct_conv's backward needs from its forward: the input alone."""
    x: np.ndarray


class LayerStage:
    """A layer run as the textbook runs it: its forward, its backward, its cache."""

    def __init__(self, layer):
        self.layer, self.layers = layer, [layer]

    def forward(self, x, training):
        return self.layer.forward(x, training=training)

    def backward(self, dy):
        return self.layer.backward(dy)

    def bind(self, x_shape, dtype):
        """The layer's own forward (nothing to bind)."""
        layer = self.layer
        return (lambda x: layer.forward(x, training=False)), (x_shape[0],) + tuple(layer.output_shape[1:]), layer.dtype


def layer_bias(layer):
    """A Conv2D's, SeparableConv2D's or Dense's bias array, or None without one."""
    return layer.bias.value if layer.use_bias else None


def bound_product(product, layer, activation):
    """run(x) = activation(product(x) + bias): a Conv2D's, SeparableConv2D's or Dense's inference
    with `product` bound (the ops' bind_* functions), x cast to the layer's dtype."""
    bias = layer_bias(layer)

    def run(x):
        z = product(x.astype(layer.dtype, copy=False))
        if bias is not None:
            z += bias
        return activation.forward(z)
    return run


def batch_moments(sums, squares, z, bias=None):
    """(mean, var) per channel, in z's dtype, from the float64 sums of numbers and their squares over
    N, Ho, Wo that a product's pass took (what ops.epilogue.moments would take in a pass of its own);
    `bias`: one the pass had not yet added (it shifts the mean alone).

    A stage's `moments_floor` says which moments its epilogue wants: None, none; -inf, those of z;
    0, those of max(z, 0) (a ReLU before the BatchNormalization). The product's pass takes them
    where it can, and sets `moments`; otherwise the epilogue takes its own."""
    m = z.size // z.shape[-1]
    mean = sums / m
    var = np.maximum(squares / m - mean * mean, 0)
    if bias is not None:
        mean = mean + bias
    return mean.astype(z.dtype), var.astype(z.dtype)


class ConvStage:
    """Conv2D: z = conv(x, K) + b, y = activation(z), by the method that pays for the input's
    shape (chosen once per shape): Winograd's F(4x4) or F(2x2) (ops.winograd.winograd_tile), the
    direct loops for narrow layers (ops.direct_conv.direct_pays), else the textbook im2col
    product; their temporaries come from the step's buffers, and so does z when an epilogue
    follows in the step (z then never leaves it)."""

    def __init__(self, layer, buffers, activate=True):
        self.layer, self.layers, self.buffers = layer, [layer], buffers
        self.activation = layer.activation if activate else LINEAR      # LINEAR: an epilogue applies it
        self.epilogue_follows = not activate
        self.methods = {}    # (input shape, training) -> a Winograd Tiling, "direct", or None for im2col
        self.kept = None     # inference's (tiling, kernel copy, U): Winograd's kernel transform, kept
        self.weights_fixed = False    # True: the kernel never changes (a frozen step's folded copy)
        self.moments_floor, self.moments = None, None       # see batch_moments

    def method(self, x_shape, training):
        """Training pays for forward and backward, inference for the forward alone (its kernel
        transform kept between calls): each its own rule."""
        layer, key = self.layer, (x_shape, training)
        if key not in self.methods:
            tiling = winograd.winograd_tile(x_shape, layer.kernel.shape, layer.strides, layer.padding,
                                            kernel_kept=not training)
            direct = tiling is None and direct_pays(x_shape, layer.kernel.shape, layer.strides, training)
            self.methods[key] = "direct" if direct else tiling
        return self.methods[key]

    def forward(self, x, training):
        layer = self.layer
        x = layer.prepare(x)
        pads, ho, wo = layer.geometry(x)
        # None in inference: a predict between a training forward and its backward must not overwrite its arrays
        buffers = self.buffers if training else None
        self.moments = None
        z, saved = self.convolve(x, pads, ho, wo, buffers, training)
        y = self.activation.forward(z)
        self.cache = (x.shape, pads, saved, y, buffers)
        return y

    def convolve(self, x, pads, ho, wo, buffers, training):
        """(z, saved): z = conv(x, K) + b by this shape's method; in training, Winograd's output pass
        and the direct pass also set self.moments (batch_moments)."""
        layer, bias = self.layer, layer_bias(self.layer)
        kernel, tiling = layer.kernel.value, self.method(x.shape, training)
        (kh, kw, c, f), n = kernel.shape, x.shape[0]
        z = buffers("z", (n, ho, wo, f), x.dtype) if buffers is not None and self.epilogue_follows else None
        floor = self.moments_floor if training else None             # the moments the epilogue wants, if any
        if tiling not in (None, "direct"):        # Winograd's output pass adds b and sums z's or max(z, 0)'s moments
            sums = None if floor is None else np.zeros((2, f))
            u = None if training else self.kept_transform(kernel, tiling)
            z, saved = winograd.conv(x, kernel, pads[0][0], pads[1][0], ho, wo, buffers, tiling, out=z, moments=sums,
                                     u=u, bias=bias, moments_floor=-np.inf if sums is None else floor)
            self.moments = None if sums is None else batch_moments(*sums, z)
            return z, saved
        if tiling == "direct":                                        # its pass takes z's, before b
            sums = np.zeros((2, f)) if floor == -np.inf else None
            z, saved = direct_conv2d(x, kernel, layer.strides, pads, out=z, moments=sums), DirectSaved(x)
            self.moments = None if sums is None else batch_moments(*sums, z, bias)
            if bias is not None:
                z += bias
            return z, saved
        in_buffer = buffers is not None and numba_pays((kh, kw), c)         # NumPy's im2col makes its own array
        cols = buffers("cols", (n * ho * wo, kh * kw * c), x.dtype) if in_buffer else None
        return conv2d(x, kernel, layer.strides, pads, cols, out=z, bias=bias)    # its product's tiles add b

    def bind(self, x_shape, dtype):
        """The inference forward for inputs of x_shape by this shape's method, bound once (plan.py)."""
        layer, kernel = self.layer, self.layer.kernel.value
        pads, ho, wo = window_geometry(layer, x_shape, layer.kernel_size)
        tiling = self.method(tuple(x_shape), training=False)
        if tiling == "direct":
            conv = bind_direct_conv2d(x_shape, kernel, layer.strides, pads)
        elif tiling is not None:
            u = self.kept_transform(kernel, tiling)
            conv = winograd.bind_conv(x_shape, u, pads[0][0], pads[1][0], ho, wo, tiling)
        else:
            conv = bind_conv2d(x_shape, kernel, layer.strides, pads)
        return bound_product(conv, layer, self.activation), (x_shape[0], ho, wo, layer.filters), layer.dtype

    def kept_transform(self, kernel, tiling):
        """Winograd's U = G g G^T for inference, computed again only when the kernel no longer
        holds the numbers it was computed from (training, set_weights and loading change them in place)."""
        kept = self.kept
        stale = kept is None or kept[0] is not tiling or kept[1].dtype != kernel.dtype
        if stale or not (self.weights_fixed or np.array_equal(kept[1], kernel)):
            self.kept = kept = (tiling, kernel.copy(), winograd.kernel_transform(kernel, tiling))
        return kept[2]

    def backward(self, dy):
        """Conv2D.backward's rule (docs/backprop.md, "Conv2D")."""
        layer, (x_shape, pads, saved, y, buffers) = self.layer, self.cache
        dz = self.activation.backward(dy, y)
        need = layer.needs_input_gradient
        dz_sum = np.zeros(layer.filters) if layer.use_bias and isinstance(saved, winograd.Saved) else None
        if isinstance(saved, DirectSaved):
            dx, layer.kernel.grad = direct_conv2d_backward(dz, saved.x, layer.kernel.value, layer.strides, pads, need)
        elif isinstance(saved, winograd.Saved):           # its output adjoint's pass sums dz too
            dx, layer.kernel.grad = winograd.conv_backward(dz, saved, x_shape, pads[0][0], pads[1][0], buffers, need,
                                                           bias_sum=dz_sum)
        else:
            dcols = buffers("dcols", saved.cols.shape, dz.dtype) if need and buffers is not None else None
            dx, layer.kernel.grad = conv2d_backward(dz, saved, layer.kernel.value, need, dcols)
        if layer.use_bias:                                # db = sum of dz over N, Ho, Wo: (F,)
            db = column_sums(dz.reshape(-1, layer.filters)) if dz_sum is None else dz_sum
            layer.bias.grad = db.astype(layer.dtype, copy=False)
        return dx


class SeparableStage:
    """SeparableConv2D: d = depthwise(x, Kd), z = d @ Kp + b, y = activation(z): the layer's lines, or
    ops.separable's one pass over tiles where it pays (stride 1, depth_multiplier 1, separable_pays).
    In training, d comes from the step's buffers, and so does z when an epilogue follows in the step;
    the one pass writes d there for its backward to read."""

    def __init__(self, layer, buffers, activate=True):
        self.layer, self.layers, self.buffers = layer, [layer], buffers
        self.activation = layer.activation if activate else LINEAR
        self.epilogue_follows = not activate
        self.moments_floor, self.moments = None, None       # see batch_moments (this pass takes z's alone)

    def forward(self, x, training):
        layer = self.layer
        x = layer.prepare(x)
        pads, ho, wo = layer.geometry(x)
        fused = self.fused(x.shape, training)
        # None in inference: a predict between a training forward and its backward must not overwrite its arrays
        buffers = self.buffers if training else None
        outputs = self.outputs(x.shape, ho, wo, buffers)
        self.moments = None
        if fused and training and self.moments_floor == -np.inf:     # the one pass sums z and z**2 as it goes
            z, sums, squares = self.separable(x, pads, *outputs, statistics=True)
            self.moments = batch_moments(sums, squares, z, layer_bias(layer))
        else:
            z = self.separable(x, pads, *outputs) if fused else self.depthwise_pointwise(x, pads, *outputs)
        if layer.use_bias:
            z += layer.bias.value
        y = self.activation.forward(z)
        self.cache = (x, pads, fused, y, outputs[0])
        return y

    def outputs(self, x_shape, ho, wo, buffers):
        """(d, z): the step's buffers for the depthwise output and the product (z only when an
        epilogue follows), or None where the op makes its own (inference)."""
        if buffers is None:
            return None, None
        n, f, cm = x_shape[0], self.layer.filters, x_shape[3] * self.layer.depth_multiplier
        z = buffers("z", (n * ho * wo, f), self.layer.dtype) if self.epilogue_follows else None
        return buffers("depthwise", (n, ho, wo, cm), self.layer.dtype), z

    def fused(self, x_shape, training):
        """Whether ops.separable's pass pays for this layer and input shape (training: both ways)."""
        layer, (n, h, w, c) = self.layer, x_shape
        return (tuple(layer.strides) == (1, 1) and layer.depth_multiplier == 1
                and separable_pays(n, h, w, c, layer.filters, training=training))

    def separable(self, x, pads, d=None, z=None, statistics=False):
        """ops.separable's one pass; d, when given, receives the depthwise output for the backward;
        statistics=True: (z, its float64 sums and sums of squares per channel)."""
        layer = self.layer
        return separable_conv2d(x, layer.depthwise_kernel.value, layer.pointwise_kernel.value, pads,
                                statistics=statistics, out=z, depthwise_out=d)

    def depthwise_pointwise(self, x, pads, d=None, z=None):
        """The layer's two ops, d kept in the layer's cache for its backward_from_logits."""
        layer, f = self.layer, self.layer.filters
        d = depthwise_conv(x, layer.depthwise_kernel.value, layer.strides, pads, out=d)   # (N, Ho, Wo, C*M)
        n, ho, wo, _ = d.shape
        d2 = d.reshape(n * ho * wo, -1)                                             # (N*Ho*Wo, C*M)
        layer.cache = (x, pads, d2, None)     # SeparableConv2D.forward's cache, less y (backward_from_logits' input)
        return matmul(d2, layer.pointwise_kernel.value.reshape(-1, f), out=z).reshape(n, ho, wo, f)

    def bind(self, x_shape, dtype):
        """The inference forward for inputs of x_shape, the fused pass or the two ops, bound once (plan.py)."""
        layer = self.layer
        pads, ho, wo = window_geometry(layer, x_shape, layer.kernel_size)
        kd, kp, y_shape = layer.depthwise_kernel.value, layer.pointwise_kernel.value, (x_shape[0], ho, wo, layer.filters)
        if self.fused(tuple(x_shape), training=False):
            return bound_product(bind_separable_conv2d(x_shape, kd, kp, pads), layer, self.activation), y_shape, layer.dtype
        depthwise, pixels = bind_depthwise_conv(x_shape, kd, layer.strides, pads), x_shape[0] * ho * wo
        pointwise = bind_matmul(pixels, kp.reshape(-1, layer.filters))
        z = np.empty((pixels, layer.filters), layer.dtype)

        def product(x):
            return pointwise(depthwise(x).reshape(pixels, -1), z).reshape(y_shape)
        return bound_product(product, layer, self.activation), y_shape, layer.dtype

    def backward(self, dy):
        """SeparableConv2D.backward's rule (docs/backprop.md, "SeparableConv2D")."""
        layer, (x, pads, fused, y, d) = self.layer, self.cache
        dz = self.activation.backward(dy, y)
        if fused:
            if layer.use_bias:
                layer.bias.grad = column_sums(dz.reshape(-1, layer.filters))
            dx, layer.depthwise_kernel.grad, layer.pointwise_kernel.grad = separable_conv2d_backward(
                dz, x, layer.depthwise_kernel.value, layer.pointwise_kernel.value, pads, layer.needs_input_gradient,
                depthwise=d)
            return dx
        return layer.backward_from_logits(dz)


class DenseStage:
    """Dense: z = x @ W + b, y = activation(z) (the layer's lines)."""

    def __init__(self, layer, buffers, activate=True):
        self.layer, self.layers = layer, [layer]
        self.activation = layer.activation if activate else LINEAR
        self.moments_floor, self.moments = None, None       # its product takes none (batch_moments)

    def forward(self, x, training):
        layer = self.layer
        x = layer.prepare(x)
        z = matmul(x, layer.kernel.value)                           # (N, units)
        if layer.use_bias:
            z += layer.bias.value
        y = self.activation.forward(z)
        self.cache = (x, y)
        return y

    def bind(self, x_shape, dtype):
        """The inference forward for inputs of x_shape (N, n_in), the product's method chosen once (plan.py)."""
        layer = self.layer
        product, z = bind_matmul(x_shape[0], layer.kernel.value), np.empty((x_shape[0], layer.units), layer.dtype)
        return bound_product(lambda x: product(x, z), layer, self.activation), z.shape, layer.dtype

    def backward(self, dy):
        """Dense.backward's rule (docs/backprop.md, "Dense")."""
        layer, (x, y) = self.layer, self.cache
        dz = self.activation.backward(dy, y)
        layer.kernel.grad = matmul(x.T, dz)                         # (n_in, units)
        if layer.use_bias:
            layer.bias.grad = column_sums(dz)
        return matmul(dz, layer.kernel.value.T)                     # (N, n_in)


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

    def bind(self, x_shape, dtype):
        """forward itself: normalize's one pass takes its arguments as they are."""
        return (lambda x: self.forward(x, training=False)), x_shape, self.batchnorm.dtype

    def backward(self, dy):
        """BatchNormalization.backward of dy * (BN(x) > 0): docs/backprop.md, "BatchNormalization"."""
        bn, (x, mean, inv_std, training) = self.batchnorm, self.cache
        dx, bn.gamma.grad, bn.beta.grad = normalize_backward(dy, x, mean, inv_std, bn.gamma.value, training,
                                                             relu=True, beta=bn.beta.value)
        return dx
