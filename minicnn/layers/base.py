"""The pieces every layer shares: `Weight`, `SymbolicTensor` and the `Layer` base class.

A layer is two functions and the weights they use:
    forward(x, training=False) -> y      caches what backward needs in `self.cache`
    backward(dy) -> dx                   sets `weight.grad` for each weight, returns dL/dx
Calling a layer on a `SymbolicTensor` (what `Input` returns) records a graph edge instead
of computing, which is how the Keras functional API builds a `Model`.
"""
import numpy as np

from .. import backend, initializers, regularizers


def positive_int(value, what, layer):
    """`value` as an int, or an error naming the layer and the argument (Dense(0) would build nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{layer}: {what} must be a positive int, received {value!r}")
    return int(value)


class Weight:
    """A named array (`value`) that a layer reads on every forward, and its gradient (`grad`).

    Optimizers update `value` in place, so a layer never loses track of its weights.
    """

    def __init__(self, name, value, trainable=True, regularizer=None):
        self.name = name
        self.value = value
        self.grad = None
        self.trainable = trainable
        self.regularizer = regularizer

    @property
    def shape(self):
        return self.value.shape

    def __repr__(self):
        return f"<Weight {self.name} shape={self.shape} trainable={self.trainable}>"


def check_shape(weight, shape, where, detail=""):
    """An error naming `where` unless `shape` (of an array, or as a file states it) is weight's."""
    if tuple(shape) != weight.shape:
        raise ValueError(f"{where}: weight {weight.name} has shape {weight.shape}, received shape {tuple(shape)}{detail}")


_weights_set = 0    # how many times set_weight_values has changed weights, any layer's


def weights_set_count():
    """How many times weights were set (set_weights, load_weights, any layer): what was computed
    from weights earlier (compiler.freeze's folded copies) is stale once this has moved."""
    return _weights_set


def set_weight_values(weights, arrays, where):
    """Copy each array into its weight in place, after checking the count and every shape, so
    that on an error no weight has changed: the one routine every setter and loader ends in."""
    global _weights_set
    arrays = list(arrays)
    if len(arrays) != len(weights):
        raise ValueError(f"{where}: expected {len(weights)} weight arrays "
                         f"({', '.join(w.name for w in weights)}), received {len(arrays)}")
    for w, a in zip(weights, arrays):
        check_shape(w, np.shape(a), where)
    for w, a in zip(weights, arrays):
        w.value[...] = a
    _weights_set += 1


class SymbolicTensor:
    """A placeholder for the output of `layer`: its shape with `None` for the batch."""

    def __init__(self, shape, layer, inputs=()):
        self.shape = tuple(shape)
        self.layer = layer
        self.inputs = list(inputs)   # the SymbolicTensors `layer` was called on

    def __repr__(self):
        return f"<SymbolicTensor shape={self.shape} from {self.layer.name}>"


class Layer:
    """Base class. Subclasses set `input_ndim` and write build, forward, backward, get_config."""

    input_ndim = None   # rank of x including the batch axis, checked on every forward
    needs_input_gradient = True   # False: backward may skip dx (a model's first layers, in a training step's pass)

    def __init__(self, name=None, dtype=None, trainable=True, input_shape=None, batch_input_shape=None):
        self.name = name or backend.unique_name(backend.to_snake_case(type(self).__name__))
        self.dtype = backend.as_dtype(dtype)
        self.trainable = trainable
        self.built = False
        self.input_shape = None          # (None, H, W, C) once built
        self.output_shape = None
        self.cache = None
        self._weights = []               # in creation order, which is Keras' get_weights order
        if batch_input_shape is not None:
            input_shape = tuple(batch_input_shape)[1:]
        self.requested_input_shape = tuple(input_shape) if input_shape is not None else None

    # ---- weights -------------------------------------------------------------------------
    def add_weight(self, name, shape, initializer="zeros", trainable=True, regularizer=None):
        value = initializers.get(initializer)(tuple(shape), self.dtype, self.name)
        weight = Weight(f"{self.name}/{name}", value, trainable, regularizers.get(regularizer))
        self._weights.append(weight)
        return weight

    @property
    def weights(self):
        return self.trainable_weights + self.non_trainable_weights

    @property
    def trainable_weights(self):
        """Weights the optimizer updates: none while `layer.trainable = False` (freezing, as Keras)."""
        return [w for w in self._weights if w.trainable and self.trainable]

    @property
    def non_trainable_weights(self):
        return [w for w in self._weights if not (w.trainable and self.trainable)]

    def get_weights(self):
        """Copies of the weight arrays, in Keras order (for BN: gamma, beta, moving_mean, moving_variance)."""
        return [w.value.copy() for w in self._weights]

    def set_weights(self, arrays):
        """Copy `arrays` into the weights in place, checking count and every shape first."""
        set_weight_values(self._weights, arrays, self.name)

    def count_params(self):
        return int(sum(w.value.size for w in self._weights))

    # ---- shapes and building ---------------------------------------------------------------
    def build(self, input_shape):
        """Create the weights for inputs of `input_shape` (batch axis first, may be None)."""
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self.compute_output_shape(self.input_shape))
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        """The constructor arguments that rebuild this layer (saved in model files)."""
        config = {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}
        if self.requested_input_shape is not None:
            config["input_shape"] = list(self.requested_input_shape)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # ---- calling ---------------------------------------------------------------------------
    def __call__(self, inputs, training=False):
        """On SymbolicTensors: add this layer to the graph. On arrays: run forward."""
        tensors = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if not all(isinstance(t, SymbolicTensor) for t in tensors):
            return self.forward(inputs, training=training)
        if self.built:
            raise ValueError(f"{self.name}: already called on inputs of shape {self.input_shape}; "
                             f"a minicnn layer is used once in a graph (no shared layers)")
        shapes = [t.shape for t in tensors]
        self.build(shapes if isinstance(inputs, (list, tuple)) else shapes[0])
        return SymbolicTensor(self.output_shape, self, tensors)

    def prepare(self, x):
        """Check `x` (a float array of rank `input_ndim`), build on first use, cast to our dtype."""
        if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
            kind = f"dtype={x.dtype}" if isinstance(x, np.ndarray) else f"type {type(x).__name__}"
            raise ValueError(f"{self.name}: expected a float array, received {kind}")
        if self.input_ndim is not None and x.ndim != self.input_ndim:
            raise ValueError(f"{self.name}: expected a {self.input_ndim}-D input, received x.shape={x.shape}")
        if not self.built:
            self.build((None,) + x.shape[1:])
        elif self.input_shape[-1] is not None and x.shape[-1] != self.input_shape[-1]:
            what = "channels" if x.ndim == 4 else "features"
            raise ValueError(f"{self.name}: expected {self.input_shape[-1]} input {what} (the last axis), "
                             f"received x.shape={x.shape}")
        return x.astype(self.dtype, copy=False)

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"
