"""The computation graph: layers in topological order, forward through them, backward in reverse.

The graph (`nodes`, `inbound`) is the architecture: what summary(), get_config(), the weights and
model files read. What runs is `steps`: [(layer, the layers whose outputs it reads)], in order,
the last computing the output. For a plain model the steps are the graph's own layers; the
compiler (minicnn/compiler/) may replace chains of them by fused steps, and the architecture
stays as it was.

Forward runs each step on its sources' outputs. Backward is micrograd's idea on whole arrays:
visit the steps from the output back to the inputs; a layer's output gradient is the SUM of what
every reader sent back, because "copy in forward is add in backward" (a tensor that feeds two
branches of a residual block receives both branches' gradients).
"""
from contextlib import contextmanager

from .. import backend
from ..layers.base import SymbolicTensor, set_weight_values
from ..ops import elementwise


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


def send_back(sources, dx, grads):
    """Add each source's part of dx (a list for several sources; None: not computed) to grads.

    Copy in forward is add in backward: the sum is a new array, so no layer's dy is modified.
    """
    for source, d in zip(sources, dx if isinstance(dx, list) else [dx]):
        if d is not None:
            grads[source] = elementwise.add(grads[source], d) if source in grads else d


@contextmanager
def skipping_input_gradient(first_layers, skip):
    """Inside: the model's first layers skip their dx when `skip` (it would be the input gradient
    alone). After: each computes dx again, so a layer's own backward (gradcheck's) returns it."""
    for layer in first_layers:
        layer.needs_input_gradient = not skip
    try:
        yield
    finally:
        for layer in first_layers:
            layer.needs_input_gradient = True


class Network:
    """A graph of layers from `inputs` (SymbolicTensors made by `Input`) to one `outputs` tensor."""

    def __init__(self, inputs=None, outputs=None, name=None):
        self.name = name or backend.unique_name(backend.to_snake_case(type(self).__name__))
        self.nodes = []        # every layer, InputLayers included, in topological order
        self.steps = []        # what forward runs: see the module docstring
        self.steps_compiled = self.steps_frozen = False
        if inputs is not None:
            self.set_graph(inputs, outputs)

    def set_graph(self, inputs, outputs):
        """Build the graph from the input tensors to `outputs`; the steps are its own layers."""
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ValueError(f"{self.name}: minicnn models have exactly one output, received {len(outputs)}")
            outputs = outputs[0]
        if not all(isinstance(t, SymbolicTensor) for t in inputs + [outputs]):
            raise ValueError(f"{self.name}: inputs and outputs must be tensors made by Input() and layer calls")
        self.nodes = topological_order(outputs)
        self.input_layers = [t.layer for t in inputs]
        self.output_layer = outputs.layer
        self.inbound = {layer: [] for layer in self.nodes}     # layer -> the layers it reads from
        self.consumers = {layer: [] for layer in self.nodes}   # layer -> the layers that read it
        self._link(outputs, set())
        self._check_inputs()
        if self.output_layer in self.input_layers:
            raise ValueError(f"{self.name}: the output is an input; a model needs a layer between them")
        self.set_steps(self.graph_steps())

    def _check_inputs(self):
        """The layers that read nothing are exactly the model's inputs (as Keras' 'Graph disconnected')."""
        missing = [layer.name for layer in self.input_layers if layer not in self.nodes]
        if missing:
            raise ValueError(f"{self.name}: the output does not depend on input(s) {missing}")
        unlisted = [layer.name for layer in self.nodes if not self.inbound[layer] and layer not in self.input_layers]
        if unlisted:
            raise ValueError(f"{self.name}: the output depends on input(s) {unlisted} that are not in the model's inputs")

    def _link(self, tensor, seen):
        if id(tensor.layer) in seen:
            return
        seen.add(id(tensor.layer))
        self.inbound[tensor.layer] = [t.layer for t in tensor.inputs]
        for t in tensor.inputs:
            self.consumers[t.layer].append(tensor.layer)
            self._link(t, seen)

    def graph_steps(self):
        """Every layer of the graph on its own, reading what it was called on (InputLayers run first)."""
        return [(layer, self.inbound[layer]) for layer in self.nodes if self.inbound[layer]]

    def set_steps(self, steps, compiled=False, frozen=False):
        """Run the model as `steps`, [(layer, the layers whose outputs it reads)] in order, the last
        computing the output; `first_layers` are those reading only the model's inputs.
        compiled: the steps are the compiler's, not the graph's own layers; frozen: for inference
        alone, from weights as they were then (compiler/freeze.py)."""
        self.steps, self.steps_compiled, self.steps_frozen = list(steps), compiled, frozen
        self.first_layers = [layer for layer, sources in self.steps if set(sources) <= set(self.input_layers)]

    # ---- the two passes ----------------------------------------------------------------------
    def forward(self, x, training=False):
        """Run every step in order; x: an array (or a list, one per input). Returns the output."""
        return self.run(self.steps, x, training)[self.steps[-1][0]]      # the last step computes the output

    def layer_outputs(self, x, training=False):
        """{layer: its output for x}, every layer of the graph run on its own, whatever pass has
        replaced steps (what explain.get_activations shows)."""
        return self.run(self.graph_steps(), x, training)

    def run(self, steps, x, training):
        """{layer: output} after running the InputLayers on x (they check and cast it), then `steps`."""
        xs = x if isinstance(x, (list, tuple)) else [x]
        if len(xs) != len(self.input_layers):
            raise ValueError(f"{self.name}: expected {len(self.input_layers)} input array(s), received {len(xs)}")
        values = {layer: layer.forward(a, training=training) for layer, a in zip(self.input_layers, xs)}
        for layer, sources in steps:
            args = [values[s] for s in sources]
            values[layer] = layer.forward(args if len(args) > 1 else args[0], training=training)
        return values

    def backward(self, dy, from_logits=False, input_gradient=True):
        """Propagate dy = dL/d(output) back; sets every weight's .grad and returns dL/dx (a list
        for several inputs; None with input_gradient=False, a training step's choice).

        from_logits=True: dy is dL/dz, the gradient before the output layer's softmax (the fused
        softmax + cross-entropy gradient p - y): the loss hands it to the output layer's
        backward_from_logits, every other layer receives the sum of its readers' gradients.
        """
        output, sources = self.steps[-1]          # the loss hands the output layer its gradient
        grads = {}                                # layer -> dL/d(its output), summed over its readers
        with skipping_input_gradient(self.first_layers, skip=not input_gradient):
            dx = output.backward_from_logits(dy) if from_logits else output.backward(dy)
            send_back(sources, dx, grads)
            for layer, sources in reversed(self.steps[:-1]):
                send_back(sources, layer.backward(grads.pop(layer)), grads)
        result = [grads.get(layer) if input_gradient else None for layer in self.input_layers]
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
        """Inverse of get_weights: checks the count and every shape before changing anything."""
        set_weight_values([w for layer in self.nodes for w in layer._weights], arrays, self.name)

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

    def depth_first_order(self):
        """The layers in the order a depth-first walk back from the output finishes them (each after
        its inputs): the weight order of model files without a "layer_order" entry."""
        return depth_first(self.output_layer, self.inbound)[1]

    def is_chain(self):
        """True when every layer reads one layer and feeds at most one (Keras' 'sequential-like')."""
        return all(len(self.inbound[l]) <= 1 and len(self.consumers[l]) <= 1 for l in self.nodes)
