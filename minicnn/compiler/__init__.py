"""The compiled fast path: a graph pass that runs a built model as fused steps.

    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)   # Keras' name
    minicnn.compiler.compile_model(model)                                        # the pass itself

The layers stay the textbook; the pass (passes.py) finds chains such as Conv2D ->
BatchNormalization -> ReLU -> MaxPooling2D -> Dropout (-> Add) and runs each as one step (step.py):
the product (stages.py: each convolution's method chosen by its shape, Winograd, direct loops,
fused separable or im2col, temporaries reused from buffers.py), then the rest in one pass each
way (epilogues.py, on ops/epilogue.py's kernels). Only `model.steps` changes: graph, layers, weights, names, summary(), save() and
get_activations are the plain model's, and MINICNN_REFERENCE=1 runs the plain steps.
`freeze(model)` (freeze.py) compiles for inference alone, each BatchNormalization after a
convolution or Dense layer folded into its kernel and bias; a frozen model's small batches
(predict, evaluate) then run as an inference plan per input shape (plan.py), the kernel calls'
arguments and output arrays made once.
"""
from .freeze import freeze
from .passes import compile_model, find_chains
from .step import FusedStep

__all__ = ["FusedStep", "compile_model", "find_chains", "freeze"]
