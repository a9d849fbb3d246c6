"""Inference plans: a frozen model's forward at one input shape, every kernel call bound once.

A batch-1 forward (a webcam's face) is short enough that deciding again, call after call, what
does not change between calls at one shape (each layer's method, its output arrays, the kernels'
per-channel arguments and tile sizes) takes as long as the kernels themselves. A plan decides
once: each fused step's `bind(x_shape, dtype)` (step.py, binding its stages: stages.py) returns its
inference forward as a function of the input alone, whose kernels write into arrays made for it, as
CUDA graphs and ONNX Runtime's sessions do. A plain layer's step runs its own forward.

    plans = Plans()                  # what a Model keeps beside its frozen steps
    y = plans(model, inputs)         # the first call at these shapes runs the steps and makes the plan

A plan writes the same arrays on every call, so it hands back a copy of the output and runs one call
at a time: a second thread meanwhile runs the steps as usual. The steps' output can differ from the
plan's in the last digits where a plan's product sums in another order (float32 products on packed
panels, ops.panels; a short product run transposed, ops.gemm.bind_matmul). It binds the weights as
they are when it is made; the model drops its plans with the steps they bound (Model.set_steps),
which new weights bring about (compiler.freeze folds them again).
"""
import threading

import numpy as np

MAX_PLANS = 8      # input shapes planned per model; later ones run unplanned (a plan holds its arrays)


class Plan:
    """`network`'s steps bound for one set of input shapes; values: {layer: output} of a forward at them."""

    def __init__(self, network, values):
        self.input_layers, self.output = network.input_layers, network.steps[-1][0]
        # a step binds for its first input's shape (a residual, the second, has its output's)
        self.steps = [(step, sources, _bound(step, values[sources[0]])) for step, sources in network.steps]
        self.lock = threading.Lock()

    def __call__(self, inputs):
        values = {layer: layer.forward(x, training=False) for layer, x in zip(self.input_layers, inputs)}
        for step, sources, run in self.steps:
            args = [values[s] for s in sources]
            values[step] = run(args if len(args) > 1 else args[0])
        return values[self.output].copy()


def _bound(step, x):
    """step's inference forward for a first input like x: bound where the step can bind."""
    if hasattr(step, "bind"):
        return step.bind(x.shape, x.dtype)[0]
    return lambda inputs: step.forward(inputs, training=False)


class Plans:
    """A model's plans, one per input shapes and dtypes."""

    def __init__(self):
        self.plans = {}

    def __call__(self, network, inputs):
        """network's output for `inputs` (a list of arrays): by their plan when it is free, else by
        its steps (making the plan on the first call at these shapes)."""
        key = _key(inputs)
        plan = self.plans.get(key)
        if plan is not None and plan.lock.acquire(blocking=False):
            try:
                return plan(inputs)
            finally:
                plan.lock.release()
        values = network.run(network.steps, inputs, False)
        if plan is None and key is not None and len(self.plans) < MAX_PLANS:
            self.plans[key] = plan = Plan(network, values)
            with plan.lock:
                return plan(inputs)          # the first output by the plan too, as every later one
        return values[network.steps[-1][0]]

    def __getstate__(self):
        """A copy of the model (copy.deepcopy) makes its own plans: these hold locks and its steps' arrays."""
        return {"plans": {}}


def _key(inputs):
    """What a plan is made for: each input's shape and dtype (None for anything but arrays)."""
    if not all(isinstance(x, np.ndarray) for x in inputs):
        return None
    return tuple((x.shape, x.dtype.str) for x in inputs)
