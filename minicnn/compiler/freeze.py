"""Inference steps with each BatchNormalization folded into the convolution before it.

At inference a BatchNormalization is one affine map per channel, with s = gamma / sqrt(moving_var + eps):
    BN(z) = (z - moving_mean) * s + beta,    z = conv(x, K) + b
so  BN(conv(x, K) + b) = conv(x, K * s) + (b - moving_mean) * s + beta
(K scaled along its output channels: a Conv2D's or Dense's kernel, a SeparableConv2D's pointwise kernel).
`freeze(model)` compiles the model (passes.py) and runs each step whose chain is such a product
followed by a BatchNormalization (a ReLU, pool, dropout or residual Add may follow it) with the
folded kernel; its bias goes into the pass after the product (BiasActivationStage, or the pooling
epilogue's). No statistics or normalization are set up per call, much of what a batch-1 forward (a
webcam) spends its time on beside its kernels. The folded weights are computed once,
from the weights as they are then (as torch.jit.freeze does). The frozen steps serve predict,
predict_on_batch and evaluate; training, or a forward a backward may follow (Model.forward, as
minicnn.explain runs it), brings back the plain compiled steps, since no gradient reaches a layer
through folded weights. Weights set afterwards (set_weights, load_weights, a layer's set_weights) are
folded again before the next inference; writing into weight arrays directly does not reach the
folded copies (freeze again).
"""
import copy

import numpy as np

from .. import perf
from ..activations import get as get_activation
from ..layers.base import Weight, weights_set_count
from ..ops.batchnorm import normalize
from ..layers.conv import SeparableConv2D
from .buffers import Buffers
from .epilogues import EpilogueStage
from .passes import compile_model
from .stages import ConvStage, DenseStage, SeparableStage
from .step import FusedStep


def freeze(model):
    """Compile `model` (built) for inference alone, each foldable BatchNormalization folded into
    the convolution before it (see the module docstring). Returns the model."""
    compile_model(model)
    folded = {layer: folded_step(layer) for layer, _ in model.steps if isinstance(layer, FusedStep)}
    steps = [(folded.get(layer, layer), [folded.get(s, s) for s in sources]) for layer, sources in model.steps]
    model.set_steps(steps, compiled=True, frozen=True)
    model.weights_frozen = weights_set_count()       # new weights after this: Model folds them again
    return model


def folded_step(step):
    """`step` with its BatchNormalization folded into its product, or `step` itself when its chain
    is not [Conv2D, SeparableConv2D or Dense, then an epilogue holding a BatchNormalization with no ReLU
    before it]."""
    stages = step.stages
    if (len(stages) != 2 or not isinstance(stages[0], (ConvStage, SeparableStage, DenseStage))
            or not isinstance(stages[1], EpilogueStage) or stages[1].parts.batchnorm is None
            or stages[1].parts.relu == "before"):
        return step
    product, epilogue = stages
    bn, rest = epilogue.parts.batchnorm, epilogue.parts._replace(batchnorm=None)
    (layer, bias), tail = folded_layer(product.layer, bn), [part for part in epilogue.layers if part is not bn]
    buffers = Buffers()
    stage = _reporting(type(product)(layer, buffers, activate=False), [product.layer, bn])
    if rest.pool is None and rest.dropout is None and rest.add is None:      # a ReLU at most
        return FusedStep([stage, BiasActivationStage(bias, rest.relu is not None, tail)], step.add)
    return FusedStep([stage, EpilogueStage(rest, tail, buffers, bias)], step.add)


def folded_layer(layer, bn):
    """(a copy of the Conv2D, SeparableConv2D or Dense `layer` without its bias, the output channels
    of its kernel scaled by s; the bias (b - moving_mean) * s + beta to add after it): together
    BN(layer(x)) at inference."""
    mean, inv_std = bn.statistics(None, training=False)
    scale = bn.gamma.value * inv_std
    folded = copy.copy(layer)
    name = "pointwise_kernel" if isinstance(layer, SeparableConv2D) else "kernel"
    kernel = getattr(layer, name)
    setattr(folded, name, Weight(kernel.name, (kernel.value * scale).astype(kernel.value.dtype), trainable=False))
    bias = ((layer.bias.value if layer.use_bias else 0) - mean) * scale + bn.beta.value
    folded.use_bias, folded.bias = False, None
    return folded, bias.astype(kernel.value.dtype)


class BiasActivationStage:
    """y = z + bias, then max(y, 0) with `relu`: what is left of BatchNormalization (and a ReLU)
    once folded. A big z takes one pass (ops.batchnorm.normalize with mean = -bias, scale 1); a
    small one (a face or two) two NumPy calls in place, cheaper to make: z is the product's own
    array at inference (new, or its plan's)."""

    def __init__(self, bias, relu, layers):
        self.bias, self.minus_bias, self.one, self.zero = bias, -bias, np.ones_like(bias), np.zeros_like(bias)
        self.activation = get_activation("relu" if relu else "linear")
        self.relu, self.layers = relu, layers      # layers: the ReLU's, if any (the product reports the BN)

    def forward(self, z, training):
        if z.size >= perf.ELEMENTWISE_NUMBA_MIN_SIZE:
            self.y = normalize(z, self.minus_bias, self.one, self.one, self.zero, relu=self.relu)
            return self.y
        z += self.bias
        self.y = np.maximum(z, 0, out=z) if self.relu else z
        return self.y

    def bind(self, z_shape, dtype):
        """forward itself: two in-place NumPy calls, or normalize's pass, have nothing to bind."""
        return (lambda z: self.forward(z, training=False)), z_shape, dtype

    def backward(self, dy):
        """The ReLU's rule; the bias passes dy on."""
        return self.activation.backward(dy, self.y)


def _reporting(stage, layers):
    """`stage`, reporting the graph's layers it runs (its own is a folded copy, whose weights never
    change: what it keeps from them, Winograd's kernel transform, needs no check)."""
    stage.layers, stage.weights_fixed = layers, True
    return stage
