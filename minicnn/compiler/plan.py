"""Inference plans: a frozen model's forward at one input shape, every kernel call bound once.

A batch-1 forward (a webcam's face) is short enough that deciding again, call after call, what
does not change between calls at one shape (each layer's method, its output arrays, the kernels'
per-channel arguments and tile sizes) takes as long as the kernels themselves. A plan decides
once: each step's `bind(x_shape, dtype)` (stages.py, step.py) returns its inference forward as a
function of the input alone, whose kernels write into arrays made for it, as CUDA graphs and
ONNX Runtime's sessions do. A plain layer's step runs its own forward.

    plans = Plans()                  # what a Model keeps beside its frozen steps
    y = plans(model, inputs)         # the first call at these shapes runs the steps and makes the plan

A plan writes the same arrays on every call, so it hands back a copy of the output and runs one
call at a time: a second thread meanwhile runs the steps as usual.
"""
import threading

import numpy as np

MAX_PLANS = 8      # input shapes planned per model; later ones run unplanned (a plan holds its arrays)


class Plan:
    """`network`'s steps bound for one set of input shapes; values: {layer: output} of a forward at them."""

    def __init__(self, network, values):
        self.input_layers, self.output = network.input_layers, network.steps[-1][0]
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
        return step.bind(x.shape, x.dtype)
    return lambda inputs: step.forward(inputs, training=False)


class Plans:
    """A model's plans, one per input shapes and dtypes."""

    def __init__(self):
        self.plans = {}

    def __call__(self, network, inputs):
        """network's output for `inputs` (a list of arrays): by their plan, else by its steps."""
        key = tuple((x.shape, x.dtype.str) for x in inputs) if all(isinstance(x, np.ndarray) for x in inputs) else None
        plan = self.plans.get(key)
        if plan is None or not plan.lock.acquire(blocking=False):
            values = network.run(network.steps, inputs, False)
            if key is not None and plan is None and len(self.plans) < MAX_PLANS:
                self.plans[key] = Plan(network, values)
            return values[network.steps[-1][0]]
        try:
            return plan(inputs)
        finally:
            plan.lock.release()
