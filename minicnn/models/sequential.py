"""`Sequential`: a Model whose layers form a chain, built with `add` or a list."""
from ..layers.base import SymbolicTensor
from ..layers.core import Input, InputLayer
from .model import Model


class Sequential(Model):
    """Layers applied one after the other. Give the first layer `input_shape=`, or the model
    builds itself on the first batch it sees."""

    def __init__(self, layers=None, name=None):
        super().__init__(name=name)
        self.pending = []              # layers added before the input shape is known
        self.output_tensor = None
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        if isinstance(layer, InputLayer):         # Sequential([InputLayer((48, 48, 1)), ...])
            layer = SymbolicTensor(layer.output_shape, layer)
        if isinstance(layer, SymbolicTensor):     # Sequential([Input((48, 48, 1)), ...]), as tf.keras
            if self.nodes or self.pending:
                raise ValueError(f"{self.name}: an Input can only be the first entry of a Sequential model")
            self.input_tensor = self.output_tensor = layer
            self.nodes = [layer.layer]
            return
        if self.output_tensor is not None:
            self.set_graph(self.input_tensor, layer(self.output_tensor))
        elif not self.pending and layer.requested_input_shape is not None:
            self.input_tensor = Input(layer.requested_input_shape, name=f"{layer.name}_input", dtype=layer.dtype)
            self.set_graph(self.input_tensor, layer(self.input_tensor))
        else:
            self.pending.append(layer)

    def set_graph(self, inputs, outputs):
        super().set_graph(inputs, outputs)
        self.input_tensor, self.output_tensor = inputs, outputs

    def build(self, input_shape):
        """Connect the pending layers for inputs of `input_shape` = (None, H, W, C)."""
        layers, self.pending = self.pending, []
        x = self.input_tensor = Input(tuple(input_shape[1:]), name=f"{layers[0].name}_input", dtype=layers[0].dtype)
        for layer in layers:
            x = layer(x)
        self.set_graph(self.input_tensor, x)

    def forward(self, x, training=False):
        if self.pending:
            self.build((None,) + x.shape[1:])
        return super().forward(x, training)

    @property
    def layers(self):
        """The layers, without the implicit InputLayer (as Keras lists them)."""
        return self.nodes[1:] + self.pending

    def is_chain(self):
        return True
