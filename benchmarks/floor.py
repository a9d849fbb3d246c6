"""A model's training floor: the least time one step could take on this machine.

    floor = max(FLOPs / the measured sgemm rate, bytes / the measured memory bandwidth)

the roofline bound: no step finishes before its arithmetic at the best matrix-product rate,
nor before the bytes it must move at the best copy rate. Counted per training step:

  FLOPs  the convolutions' and Dense layers' multiply-adds, 2 FLOPs each, three times over
         (forward, the input's gradient, the weights' gradient; twice for a first layer, whose
         input needs no gradient); elementwise layers add little.
         These are direct convolution's FLOPs: Winograd's tiles need fewer multiplies, so a
         path that uses them can pass this ceiling.
  bytes  the activations a fully fused step must move: every weighted layer reads its input and
         writes its output forward, then reads the output's gradient and its saved input and
         writes the input's gradient (float32); the elementwise layers between fold into these
         passes. Weights, their gradients and the optimizer's state are left out, so this floor
         is low for a model with many weights and few pixels (cnn4's dense layers).

`benchmarks/models.py` prints each path's images/s beside this ceiling.
"""
import numpy as np

from benchmarks.timing import median_ms

BYTES_PER_FLOAT = 4


def layer_multiply_adds(layer):
    """Multiply-adds of one image through `layer` forward: its weighted products, 0 for the others."""
    kind = type(layer).__name__
    out = layer.output_shape[1:]
    pixels = int(np.prod(out[:-1])) if len(out) > 1 else 1
    if kind == "Conv2D":
        return pixels * layer.kernel.value.size
    if kind == "DepthwiseConv2D":
        return pixels * layer.depthwise_kernel.value.size
    if kind == "SeparableConv2D":
        return pixels * (layer.depthwise_kernel.value.size + layer.pointwise_kernel.value.size)
    if kind == "Dense":
        return layer.kernel.value.size
    return 0


def layer_passes(layer, model):
    """Passes over a weighted layer's inputs in training: forward and the weights' gradient, and
    the input's gradient unless it reads the model's input (a training step skips that one)."""
    return 2 if layer in model.first_layers else 3


def layer_floats_moved(layer, model):
    """Floats a fused training step must move for one image at `layer`: its input read in each pass,
    its output written forward and its gradient read backward (2 x output)."""
    if not layer_multiply_adds(layer):
        return 0
    return layer_passes(layer, model) * int(np.prod(layer.input_shape[1:])) + 2 * int(np.prod(layer.output_shape[1:]))


def step_counts(model, batch_size):
    """(FLOPs, bytes) of one training step of `batch_size` images."""
    flops = sum(2 * layer_passes(layer, model) * layer_multiply_adds(layer) for layer in model.layers) * batch_size
    moved = sum(layer_floats_moved(layer, model) for layer in model.layers) * batch_size * BYTES_PER_FLOAT
    return flops, moved


def sgemm_rate(n=1024, repeats=7):
    """FLOP/s of a float32 n x n x n matrix product (numpy's BLAS, its threads as set), median."""
    a, b = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
    return 2 * n ** 3 / (median_ms([lambda: a @ b], repeats)[0] / 1e3)


def copy_bandwidth(megabytes=256, repeats=7):
    """Bytes/s of copying a float32 array far larger than the caches (read + write), median."""
    src = np.ones(megabytes * 2 ** 20 // BYTES_PER_FLOAT, np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / (median_ms([lambda: np.copyto(dst, src)], repeats)[0] / 1e3)


def floor_seconds(model, batch_size, flop_rate, bandwidth):
    """(seconds, "compute" or "memory"): the roofline bound of one training step and what sets it."""
    flops, moved = step_counts(model, batch_size)
    compute, memory = flops / flop_rate, moved / bandwidth
    return (compute, "compute") if compute >= memory else (memory, "memory")
