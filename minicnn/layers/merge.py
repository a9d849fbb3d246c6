"""Add: the join of a residual block."""
from .base import Layer


class Add(Layer):
    """y = x_1 + x_2 + ... + x_k (same shapes).

    Add in forward is copy in backward: every input receives dy unchanged.
    """

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if len(shapes) < 2 or any(s != shapes[0] for s in shapes):
            raise ValueError(f"{self.name}: expects 2 or more inputs of one shape, received shapes {shapes}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def forward(self, inputs, training=False):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"{self.name}: expects a list of 2 or more arrays")
        xs = [self.prepare_one(x) for x in inputs]
        if any(x.shape != xs[0].shape for x in xs):
            raise ValueError(f"{self.name}: inputs must have one shape, received {[x.shape for x in xs]}")
        if not self.built:
            self.build([(None,) + x.shape[1:] for x in xs])
        self.cache = len(xs)
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y

    def prepare_one(self, x):
        if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
            raise ValueError(f"{self.name}: expected float arrays, received {type(x).__name__}")
        return x.astype(self.dtype, copy=False)

    def backward(self, dy):
        """dx_i = dy for every input i (callers never modify it in place). docs/backprop.md, "Add"."""
        return [dy] * self.cache
