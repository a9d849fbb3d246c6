"""ONNX export: a minicnn model as an ONNX graph that onnxruntime (or any ONNX runtime) runs.

    export_onnx(model, "model.onnx")          # needs the `onnx` extra: pip install -e ".[onnx]"

The graph takes minicnn's own input, NHWC float32 (N, H, W, C) with N free, and returns the
model's output (N, K). ONNX convolutions are NCHW, so one Transpose follows each input and
every 4-D tensor inside the graph is NCHW; Flatten transposes back to NHWC first, so the
Dense after it sees the (H, W, C) order its kernel was trained on. Each minicnn layer
becomes the ONNX operators that compute the same function in inference mode:
    Conv2D                  Conv; TF "same" as explicit pads (the extra pixel bottom/right)
    DepthwiseConv2D         Conv with group = C, kernel (kh, kw, C, M) -> (C*M, 1, kh, kw)
    SeparableConv2D         the grouped Conv, then a 1x1 Conv
    BatchNormalization      BatchNormalization with the moving mean and variance
    MaxPooling2D            MaxPool (ONNX pads never win a max, as TF's -inf)
    AveragePooling2D        AveragePool, count_include_pad=0 (TF divides by the real cells)
    GlobalAveragePooling2D  GlobalAveragePool, then Flatten to (N, C)
    Dropout                 nothing (the identity at inference)
    Dense                   Gemm;  Add: Add;  activations: Relu, Sigmoid, Tanh, Softmax
`model.metadata` (labels, preprocessing, ...) goes into the file's metadata_props, one JSON
value per key, with "input_layout": "NHWC".
"""
import json

import numpy as np

from .files import atomic_write
from .layers import (Activation, Add, AveragePooling2D, BatchNormalization, Conv2D, Dense, DepthwiseConv2D, Dropout,
                     Flatten, GlobalAveragePooling2D, InputLayer, MaxPooling2D, ReLU, SeparableConv2D, Softmax)
from .layers.conv import window_geometry

OPSET = 17         # onnxruntime 1.14 and later, and every current converter, read opset 17
IR_VERSION = 8     # the IR version that goes with opset 17
INSTALL_HINT = 'pip install -e ".[onnx]" (or pip install onnx)'
ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax"}


def export_onnx(model, path, metadata=None):
    """Write `model` to `path` as an ONNX model (atomically); returns the onnx.ModelProto.

    metadata: dict stored as metadata_props (default: model.metadata). Layers or options
    ONNX cannot express the way minicnn computes them are a ValueError naming the layer.
    """
    proto = to_onnx(model, model.metadata if metadata is None else metadata)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return proto


def to_onnx(model, metadata=None):
    """The onnx.ModelProto for `model`, checked by onnx's checker."""
    model._require_built("export_onnx")
    onnx = import_onnx()
    graph = GraphBuilder(onnx, model)
    for layer in model.nodes:
        graph.add(layer)
    proto = onnx.helper.make_model(graph.make_graph(), producer_name="minicnn",
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    props = {"input_layout": "NHWC", **{key: json.dumps(value) for key, value in (metadata or {}).items()}}
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def import_onnx():
    try:
        import onnx     # only export needs it, so minicnn itself works without it
    except ImportError:
        raise ImportError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


class GraphBuilder:
    """Collects nodes, weights (initializers), inputs and the output while walking the layers.

    `tensors` maps each layer to (ONNX tensor name, layout): "NCHW" for 4-D activations,
    "flat" for (N, features).
    """

    def __init__(self, onnx, model):
        self.helper, self.numpy_helper, self.model = onnx.helper, onnx.numpy_helper, model
        self.nodes, self.initializers, self.inputs = [], [], []
        self.tensors = {}

    # ---- graph pieces ------------------------------------------------------------------------
    def node(self, op, inputs, name, **attributes):
        """Append one ONNX node; its output tensor is called `name`. Returns the name."""
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def weight(self, name, array):
        """A float32 initializer (a constant input of the graph). Returns its name."""
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def source(self, layer):
        """(tensor name, layout) of the single layer `layer` reads."""
        sources = self.model.inbound[layer]
        return self.tensors[sources[0]]

    def make_graph(self):
        name, layout = self.tensors[self.model.output_layer]
        if layout == "NCHW":        # a model ending on a 4-D tensor: hand it back NHWC, as minicnn
            name = self.node("Transpose", [name], "output_nhwc", perm=[0, 2, 3, 1])
        shape = ["N", *self.model.output_shape[1:]]
        output = self.helper.make_tensor_value_info(name, 1, shape)
        return self.helper.make_graph(self.nodes, self.model.name, self.inputs, [output],
                                      initializer=self.initializers)

    # ---- layers ------------------------------------------------------------------------------
    def add(self, layer):
        """Add the nodes of one layer, after checking it is a float32 layer ONNX can express."""
        export = EXPORTERS.get(type(layer))
        if export is None:
            raise ValueError(f"{layer.name}: layer class {type(layer).__name__} has no ONNX export "
                             f"(minicnn exports {', '.join(cls.__name__ for cls in EXPORTERS)})")
        if layer.dtype != np.float32:
            raise ValueError(f"{layer.name}: dtype {layer.dtype} is not supported by the ONNX export (float32 only)")
        self.tensors[layer] = export(self, layer)

    def activation(self, layer, name, layout):
        """The layer's activation after `name` (linear: nothing). Softmax runs over the channels."""
        if layer.activation.name == "linear":
            return name, layout
        if layer.activation.name not in ACTIVATIONS:
            raise ValueError(f"{layer.name}: activation {layer.activation.name!r} has no ONNX export")
        op = ACTIVATIONS[layer.activation.name]
        attributes = {"axis": 1 if layout == "NCHW" else -1} if op == "Softmax" else {}
        return self.node(op, [name], f"{layer.name}/{layer.activation.name}", **attributes), layout


def export_input(g, layer):
    shape = ["N", *layer.input_shape[1:]]
    g.inputs.append(g.helper.make_tensor_value_info(layer.name, 1, shape))
    if len(shape) == 2:
        return layer.name, "flat"
    if len(shape) != 4:
        raise ValueError(f"{layer.name}: input shape {layer.input_shape} is not supported by the ONNX export "
                         f"(images (N, H, W, C) or features (N, F))")
    return g.node("Transpose", [layer.name], f"{layer.name}/nchw", perm=[0, 3, 1, 2]), "NCHW"


def window_attributes(layer, window):
    """kernel_shape, strides and pads [top, left, bottom, right] of `layer`'s window (TF "same")."""
    ((top, bottom), (left, right)), _, _ = window_geometry(layer, layer.input_shape, window)
    return {"kernel_shape": list(window), "strides": list(layer.strides), "pads": [top, left, bottom, right]}


def export_conv2d(g, layer):
    x, _ = g.source(layer)
    kernel = g.weight(f"{layer.name}/kernel", layer.kernel.value.transpose(3, 2, 0, 1))     # HWIO -> OIHW
    inputs = [x, kernel] + ([g.weight(f"{layer.name}/bias", layer.bias.value)] if layer.use_bias else [])
    z = g.node("Conv", inputs, f"{layer.name}/conv", **window_attributes(layer, layer.kernel_size))
    return g.activation(layer, z, "NCHW")


def depthwise(g, layer, x, bias):
    """Conv with one group per input channel: output channel c*M + m is channel c's m-th filter."""
    kh, kw, c, m = layer.depthwise_kernel.shape
    kernel = layer.depthwise_kernel.value.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)     # (C*M, 1, kh, kw)
    inputs = [x, g.weight(f"{layer.name}/depthwise_kernel", kernel)] + ([bias] if bias else [])
    return g.node("Conv", inputs, f"{layer.name}/depthwise", group=c, **window_attributes(layer, layer.kernel_size))


def export_depthwise_conv2d(g, layer):
    x, _ = g.source(layer)
    bias = g.weight(f"{layer.name}/bias", layer.bias.value) if layer.use_bias else None
    return g.activation(layer, depthwise(g, layer, x, bias), "NCHW")


def export_separable_conv2d(g, layer):
    x, _ = g.source(layer)
    d = depthwise(g, layer, x, None)
    pointwise = g.weight(f"{layer.name}/pointwise_kernel", layer.pointwise_kernel.value.transpose(3, 2, 0, 1))
    inputs = [d, pointwise] + ([g.weight(f"{layer.name}/bias", layer.bias.value)] if layer.use_bias else [])
    z = g.node("Conv", inputs, f"{layer.name}/pointwise", kernel_shape=[1, 1])
    return g.activation(layer, z, "NCHW")


def export_batch_normalization(g, layer):
    x, layout = g.source(layer)
    names = [g.weight(w.name, w.value) for w in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]
    y = g.node("BatchNormalization", [x, *names], f"{layer.name}/batchnorm", epsilon=layer.epsilon)
    return y, layout


def pooling(op, **extra):
    def export(g, layer):
        x, _ = g.source(layer)
        return g.node(op, [x], f"{layer.name}/{op.lower()}", **window_attributes(layer, layer.pool_size), **extra), "NCHW"
    return export


def export_global_average_pooling(g, layer):
    x, _ = g.source(layer)
    pooled = g.node("GlobalAveragePool", [x], f"{layer.name}/pool")        # (N, C, 1, 1)
    return g.node("Flatten", [pooled], f"{layer.name}/flatten", axis=1), "flat"


def export_flatten(g, layer):
    x, layout = g.source(layer)
    if layout == "NCHW":        # minicnn flattens (H, W, C): go back to NHWC first
        x = g.node("Transpose", [x], f"{layer.name}/nhwc", perm=[0, 2, 3, 1])
    return g.node("Flatten", [x], f"{layer.name}/flatten", axis=1), "flat"


def export_dropout(g, layer):
    return g.source(layer)      # the identity at inference: no node


def export_dense(g, layer):
    x, _ = g.source(layer)
    inputs = [x, g.weight(f"{layer.name}/kernel", layer.kernel.value)]
    if layer.use_bias:
        inputs.append(g.weight(f"{layer.name}/bias", layer.bias.value))
    return g.activation(layer, g.node("Gemm", inputs, f"{layer.name}/gemm"), "flat")


def export_add(g, layer):
    """x0 + x1 (+ x2 ...), summed left to right as minicnn does."""
    sources = [g.tensors[s] for s in g.model.inbound[layer]]
    total, layout = sources[0]
    for i, (name, _) in enumerate(sources[1:], 1):
        total = g.node("Add", [total, name], f"{layer.name}/add{i}" if i < len(sources) - 1 else f"{layer.name}/add")
    return total, layout


def export_activation(g, layer):
    return g.activation(layer, *g.source(layer))


EXPORTERS = {
    InputLayer: export_input, Conv2D: export_conv2d, DepthwiseConv2D: export_depthwise_conv2d,
    SeparableConv2D: export_separable_conv2d, BatchNormalization: export_batch_normalization,
    MaxPooling2D: pooling("MaxPool"), AveragePooling2D: pooling("AveragePool", count_include_pad=0),
    GlobalAveragePooling2D: export_global_average_pooling, Flatten: export_flatten, Dropout: export_dropout,
    Dense: export_dense, Add: export_add, Activation: export_activation, ReLU: export_activation,
    Softmax: export_activation,
}
