"""`FusedStep`: a chain of layers run as one step of a compiled model.

    forward(x, training) -> y        x: the chain's input, or [x, residual] when it ends in Add
    backward(dy) -> dx               dx, or [dx, dy] (Add in forward is copy in backward)

It has the step interface models/network.py runs (forward, backward, needs_input_gradient),
sets the weight gradients of the layers it runs, and is never saved: a model's file, summary
and layers are its graph's.
"""


class FusedStep:
    """`stages` in order (see stages.py), then `add`, an Add layer joining the chain's output
    with a second input (the residual), or None."""

    def __init__(self, stages, add=None):
        self.stages, self.add = list(stages), add
        self.layers = [layer for stage in self.stages for layer in stage.layers] + ([add] if add else [])
        self.name = "+".join(layer.name for layer in self.layers)
        # the last stage's pass adds the residual (an epilogue), or the Add runs after the chain
        self.add_in_last_stage = add is not None and getattr(self.stages[-1], "joins_residual", False)

    built = True          # its layers are: gradcheck.check_layer checks a step as it checks a layer

    @property
    def output_shape(self):
        return self.layers[-1].output_shape

    @property
    def weights(self):
        return [w for layer in self.layers for w in layer.weights]

    @property
    def trainable_weights(self):
        return [w for layer in self.layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        return [w for layer in self.layers for w in layer.non_trainable_weights]

    @property
    def needs_input_gradient(self):
        """The chain's first layer's flag (the graph sets it on a model's first steps)."""
        return self.stages[0].layers[0].needs_input_gradient

    @needs_input_gradient.setter
    def needs_input_gradient(self, value):
        self.stages[0].layers[0].needs_input_gradient = value

    def forward(self, inputs, training=False):
        if self.add is None:
            return self.run(inputs, training)
        x, residual = inputs
        if self.add_in_last_stage:
            return self.run(x, training, residual)
        return self.add.forward([self.run(x, training), residual], training=training)   # chain(x) + residual

    def run(self, x, training, residual=None):
        """The stages in order on x; the last one also adds `residual` when given."""
        for stage in self.stages[:-1]:
            x = stage.forward(x, training)
        last = self.stages[-1]
        return last.forward(x, training) if residual is None else last.forward(x, training, residual)

    def bind(self, x_shape, dtype):
        """forward in inference for a chain input of x_shape and dtype, each stage bound once (plan.py):
        (run(inputs) -> y, y's shape, y's dtype)."""
        runs = []
        for stage in self.stages:
            run, x_shape, dtype = stage.bind(x_shape, dtype)
            runs.append(run)
        *chain, last = runs

        def run(inputs):
            x, residual = inputs if self.add is not None else (inputs, None)
            for stage in chain:
                x = stage(x)
            if self.add_in_last_stage:
                return last(x, residual)
            y = last(x)
            return y if self.add is None else self.add.forward([y, residual], training=False)
        return run, x_shape, dtype

    def backward(self, dy):
        dx = dy
        for stage in reversed(self.stages):
            dx = stage.backward(dx)
        return [dx, dy] if self.add is not None else dx

    def __repr__(self):
        return f"<FusedStep {self.name}>"
