"""The computation graph: layers in topological order, forward through them, backward in reverse.

Backward is micrograd's idea on whole arrays: visit layers from the output back to the
inputs; a layer's output gradient is the SUM of what every consumer sent back, because
"copy in forward is add in backward" (a tensor that feeds two branches of a residual block
receives both branches' gradients).

One fusion: a BatchNormalization whose output goes only to an Activation("relu") runs as
BatchNormalization(relu=True), one pass over the activations fewer each way, and
the Activation passes its input through (`relu_fusions`). The model's output is the same;
only that BatchNormalization's own output (before the ReLU) is never made, so
`explain.get_activations`, which records layer outputs, sets `fuse = False` while it runs.
"""
import numpy as np

from .. import backend
from ..layers.base import Layer, SymbolicTensor
from ..layers.conv import Conv2D
from ..layers.core import Activation
from ..layers.normalization import BatchNormalization


def depth_first(output_layer, inputs_of):
    """Walk back from the output: (met, done). met: layer -> when the walk first met it; done:
    the layers in the order the walk finished them, each after all of its inputs.
    inputs_of: layer -> the layers it reads."""
    met, done = {}, []

    def walk(layer):
        if layer in met:
            return
        met[layer] = len(met)
        for source in inputs_of[layer]:
            walk(source)
        done.append(layer)

    walk(output_layer)
    return met, done


def topological_order(output):
    """Every layer that `output` depends on, in the order Keras lists a model's layers: by
    depth, the longest path to the output, deepest (the inputs) first; layers of one depth in
    the order a depth-first walk back from the output meets them. A layer's depth is larger
    than any of its consumers', so each layer still comes after all of its inputs."""
    inputs_of, pending = {}, [output]
    while pending:
        tensor = pending.pop()
        if tensor.layer not in inputs_of:
            inputs_of[tensor.layer] = [t.layer for t in tensor.inputs]
            pending.extend(tensor.inputs)
    met, done = depth_first(output.layer, inputs_of)
    depth = {}
    for layer in reversed(done):                 # consumers before the layers they read
        d = depth.setdefault(layer, 0)
        for source in inputs_of[layer]:
            depth[source] = max(depth.get(source, 0), d + 1)
    return sorted(done, key=lambda layer: (-depth[layer], met[layer]))


class Network:
    """A graph of layers from `inputs` (SymbolicTensors made by `Input`) to one `outputs` tensor."""

    def __init__(self, inputs=None, outputs=None, name=None):
        self.name = name or backend.unique_name(backend.to_snake_case(type(self).__name__))
        self.nodes = []        # every layer, InputLayers included, in topological order
        self.relu_fusions = self.fused = {}     # see _relu_fusions; fused: those of the last forward
        self.fuse = True                        # False: every layer runs on its own
        if inputs is not None:
            self.set_graph(inputs, outputs)

    def set_graph(self, inputs, outputs):
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ValueError(f"{self.name}: minicnn models have exactly one output, received {len(outputs)}")
            outputs = outputs[0]
        if not all(isinstance(t, SymbolicTensor) for t in inputs + [outputs]):
            raise ValueError(f"{self.name}: inputs and outputs must be tensors made by Input() and layer calls")
        self.nodes = topological_order(outputs)
        self.input_layers = [t.layer for t in inputs]
        missing = [layer.name for layer in self.input_layers if layer not in self.nodes]
        if missing:
            raise ValueError(f"{self.name}: the output does not depend on input(s) {missing}")
        self.output_layer = outputs.layer
        self.inbound = {layer: [] for layer in self.nodes}     # layer -> the layers it reads from
        self.consumers = {layer: [] for layer in self.nodes}   # layer -> the layers that read it
        self._link(outputs, set())
        self.relu_fusions = self._relu_fusions()

    def _link(self, tensor, seen):
        if id(tensor.layer) in seen:
            return
        seen.add(id(tensor.layer))
        self.inbound[tensor.layer] = [t.layer for t in tensor.inputs]
        for t in tensor.inputs:
            self.consumers[t.layer].append(tensor.layer)
            self._link(t, seen)

    def _relu_fusions(self):
        """{Activation("relu") layer: the BatchNormalization it reads}, for each BatchNormalization
        whose output nothing else reads."""
        fusions = {}
        for layer in self.nodes:
            sources = self.inbound[layer]
            if (isinstance(layer, Activation) and layer.activation.name == "relu" and len(sources) == 1
                    and isinstance(sources[0], BatchNormalization) and self.consumers[sources[0]] == [layer]
                    and layer.dtype == sources[0].dtype):             # the Activation would not cast
                fusions[layer] = sources[0]
        return fusions

    # ---- the two passes ----------------------------------------------------------------------
    def forward(self, x, training=False):
        """Run every layer in order; x: an array (or a list, one per input). Returns the output."""
        xs = x if isinstance(x, (list, tuple)) else [x]
        if len(xs) != len(self.input_layers):
            raise ValueError(f"{self.name}: expected {len(self.input_layers)} input array(s), received {len(xs)}")
        values = dict(zip(self.input_layers, xs))
        self.fused = self.relu_fusions if self.fuse else {}
        relu_after = set(self.fused.values())
        for layer in self.nodes:
            sources = self.inbound[layer]
            if not sources:                       # an InputLayer
                values[layer] = layer.forward(values[layer], training=training)
            elif layer in self.fused:             # its BatchNormalization has applied the ReLU
                values[layer] = values[sources[0]]
            elif layer in relu_after:
                values[layer] = layer.forward(values[sources[0]], training=training, relu=True)
            else:
                args = [values[s] for s in sources]
                values[layer] = layer.forward(args if len(args) > 1 else args[0], training=training)
        return values[self.output_layer]

    def backward(self, dy, from_logits=False, input_gradient=True):
        """Propagate dL/d(output) back; sets every weight's .grad and returns dL/dx.

        from_logits=True: `dy` is the gradient before the output layer's softmax (the fused
        softmax + cross-entropy gradient p - y), so that softmax is skipped.
        input_gradient=False: dL/dx is not needed (returns None), so a Conv2D that reads the
        model's input skips computing its dx (cnn4's first conv: a product and a col2im).
        """
        grads = {self.output_layer: dy}
        input_grads = {}
        for layer in reversed(self.nodes):
            if layer not in grads:                # nothing downstream depends on it
                continue
            g = grads.pop(layer)
            sources = self.inbound[layer]
            if layer in self.fused:               # its BatchNormalization's backward does the ReLU's
                dx = g
            elif from_logits and layer is self.output_layer:
                dx = layer.backward_from_logits(g)
            elif not input_gradient and isinstance(layer, Conv2D) and all(not self.inbound[s] for s in sources):
                layer.backward(g, input_gradient=False)     # its weights' gradients only
                continue
            else:
                dx = layer.backward(g)
            if not sources:
                input_grads[layer] = dx
            for source, d in zip(sources, dx if isinstance(dx, list) else [dx]):
                # copy in forward is add in backward; `+` makes a new array, so no dy is modified
                grads[source] = grads[source] + d if source in grads else d
        result = [input_grads.get(layer) if input_gradient else None for layer in self.input_layers]
        return result if len(result) > 1 else result[0]

    def __call__(self, x, training=False):
        return self.forward(x, training=training)

    # ---- weights -------------------------------------------------------------------------------
    @property
    def layers(self):
        return list(self.nodes)

    @property
    def weights(self):
        return [w for layer in self.nodes for w in layer.weights]

    @property
    def trainable_weights(self):
        return [w for layer in self.nodes for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        return [w for layer in self.nodes for w in layer.non_trainable_weights]

    def get_weights(self):
        """Every layer's get_weights(), concatenated in layer order (Keras' order)."""
        return [a for layer in self.nodes for a in layer.get_weights()]

    def set_weights(self, arrays):
        """Inverse of get_weights: checks every shape before changing anything."""
        arrays, expected = list(arrays), [w for layer in self.nodes for w in layer._weights]
        if len(arrays) != len(expected):
            raise ValueError(f"{self.name}: expected {len(expected)} weight arrays, received {len(arrays)}")
        for w, a in zip(expected, arrays):
            if tuple(np.shape(a)) != w.shape:
                raise ValueError(f"{self.name}: weight {w.name} has shape {w.shape}, received shape {np.shape(a)}")
        for w, a in zip(expected, arrays):
            w.value[...] = a

    def count_params(self):
        return sum(layer.count_params() for layer in self.nodes)

    @property
    def input_shape(self):
        shapes = [layer.input_shape for layer in self.input_layers]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self):
        return self.output_layer.output_shape

    def get_layer(self, name):
        for layer in self.nodes:
            if layer.name == name:
                return layer
        raise ValueError(f"{self.name}: no layer named {name!r}; layers: {', '.join(l.name for l in self.nodes)}")

    def is_chain(self):
        """True when every layer reads one layer and feeds at most one (Keras' 'sequential-like')."""
        return all(len(self.inbound[l]) <= 1 and len(self.consumers[l]) <= 1 for l in self.nodes)
