"""An opt-in graph pass: each BatchNormalization + ReLU pair runs as one step.

    fuse_batchnorm_relu(model)     # after the model is built; scripts/train.py applies it

A BatchNormalization whose output only an Activation("relu") reads is followed by a pass of
the ReLU over the same activations, each way. `BatchNormalizationReLU` does both in the
normalization's own pass (ops/batchnorm.py's relu=True kernels): forward writes max(y, 0),
backward applies ReLU's rule dy * (y > 0) with y > 0 recomputed from x inside the same loops.
Only `model.steps` changes: the graph, its layers, weights and names (what summary(), save()
and explain.get_activations read) stay the plain model's, and the two give the same outputs
and gradients (tests/test_models.py). Without the pass every layer runs on its own.
"""
from ..layers.base import Layer
from ..layers.core import Activation
from ..layers.normalization import BatchNormalization
from ..ops.batchnorm import normalize, normalize_backward


class BatchNormalizationReLU(Layer):
    """y = max(BN(x), 0) in one pass each way, with `batchnorm`'s weights and statistics.

    Not a layer of any architecture: a step made by fuse_batchnorm_relu, never saved.
    """

    def __init__(self, batchnorm, relu):
        super().__init__(name=f"{batchnorm.name}+{relu.name}", dtype=batchnorm.dtype)
        self.batchnorm = batchnorm
        self._weights = batchnorm._weights      # the same Weight objects: a model lists them once, by its nodes
        self.build(batchnorm.input_shape)

    def forward(self, x, training=False):
        bn = self.batchnorm
        x = bn.prepare(x)
        mean, inv_std = bn.statistics(x, training)
        self.cache = (x, mean, inv_std, training)
        return normalize(x, mean, inv_std, bn.gamma.value, bn.beta.value, relu=True)      # max(BN(x), 0)

    def backward(self, dy):
        """BatchNormalization.backward of dy * (BN(x) > 0): docs/backprop.md, "BatchNormalization"."""
        bn = self.batchnorm
        x, mean, inv_std, training = self.cache
        dx, bn.gamma.grad, bn.beta.grad = normalize_backward(dy, x, mean, inv_std, bn.gamma.value, training,
                                                             relu=True, beta=bn.beta.value)
        return dx


def relu_pairs(model):
    """{Activation("relu"): the BatchNormalization it reads} for each BatchNormalization step whose
    output nothing else reads, and whose ReLU keeps its dtype (a casting ReLU stays on its own)."""
    readers = {}
    for layer, sources in model.steps:
        for source in sources:
            readers[source] = readers.get(source, 0) + 1
    return {layer: sources[0] for layer, sources in model.steps
            if isinstance(layer, Activation) and layer.activation.name == "relu" and len(sources) == 1
            and isinstance(sources[0], BatchNormalization) and readers[sources[0]] == 1
            and layer.dtype == sources[0].dtype}


def fuse_batchnorm_relu(model):
    """Run each BatchNormalization + ReLU pair of `model` as one BatchNormalizationReLU step (in
    the ReLU's place, reading what the BatchNormalization read). Returns the model. Apply it to a
    built model (an unbuilt one is an error, not a silent no-op); building again (Sequential.add)
    starts from the plain steps."""
    if not model.steps:
        raise ValueError(f"{model.name}: fuse_batchnorm_relu needs a built model; give the first layer an "
                         f"input_shape or call the model on data first")
    pairs = relu_pairs(model)
    fused = {relu: BatchNormalizationReLU(bn, relu) for relu, bn in pairs.items()}
    sources_of, batchnorms = dict(model.steps), set(pairs.values())
    steps = []
    for layer, sources in model.steps:
        if layer in fused:
            layer, sources = fused[layer], sources_of[pairs[layer]]
        elif layer in batchnorms:              # runs inside its fused step
            continue
        steps.append((layer, [fused.get(s, s) for s in sources]))
    model.set_steps(steps)
    return model
