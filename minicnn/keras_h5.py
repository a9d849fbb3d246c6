"""Keras 2 HDF5 model files (`model.save("model.hdf5")`) as minicnn models.

A Keras 2 file keeps the architecture and the weights side by side:
    attrs["model_config"]   JSON: {"class_name": "Model" | "Sequential", "config": {...}}
    model_weights/          attrs["layer_names"]: every layer, in Keras' order
      conv2d_1/             attrs["weight_names"]: ["conv2d_1_1/kernel:0", ...], get_weights order
        conv2d_1_1/kernel:0 the array: channels-last, HWIO, exactly what minicnn stores
Each Keras layer becomes the minicnn layer of the same class, name and arguments, so no
array is transposed. Whatever minicnn cannot compute the way Keras does (channels_first,
dilation, a shared layer, ...) is an error naming the layer and the option, never a silent
difference in the predictions.

    model = load_keras_h5("mini_xception_keras.hdf5")
    model.predict(x)          # x: (N, 64, 64, 1) -> Keras' probabilities (N, 7)
"""
import json
import os
import warnings

import numpy as np

from . import activations, regularizers
from .layers import (Activation, Add, AveragePooling2D, BatchNormalization, Conv2D, Dense, DepthwiseConv2D, Dropout,
                     Flatten, GlobalAveragePooling2D, InputLayer, MaxPooling2D, SeparableConv2D)
from .files import import_h5py
from .layers.base import SymbolicTensor, check_shape
from .models import Model, Sequential



def load_keras_h5(path):
    """The minicnn Model (or Sequential) with the architecture and weights of a Keras 2 HDF5 file."""
    h5py = import_h5py("reading Keras HDF5 files")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such Keras model file")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path}: not an HDF5 file (Keras 2 saves models as HDF5)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:                      # HDF5 signature, but truncated or corrupt
        raise ValueError(f"{path}: unreadable HDF5 file ({e})") from None
    with f:
        try:
            if "model_config" not in f.attrs:
                raise ValueError("no model_config attribute: a weights-only file (save_weights) or not a Keras "
                                 "model; load_keras_h5 reads files written by model.save()")
            version = text(f.attrs.get("keras_version", "2"))
            if not version.startswith("2"):
                raise ValueError(f"written by Keras {version}; load_keras_h5 reads Keras 2 files")
            weights = local_group(f, "model_weights", "")
            if weights is None:
                raise ValueError("no model_weights group")
            model = model_from_keras_config(json.loads(text(f.attrs["model_config"])))
            load_keras_weights(model, weights)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return model


def entry(mapping, key, where):
    """mapping[key], an entry Keras 2 always writes: without it the file is in another layout.

    Only these lookups say "not in the Keras 2 layout"; a layer's missing option or weight is
    an error naming the layer.
    """
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"not in the Keras 2 layout ({where} has no {key!r} entry)")
    return mapping[key]


def text(value):
    """An HDF5 string attribute as str: h5py returns str or bytes, depending on how it was written."""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


# ---- architecture ------------------------------------------------------------------------------
def model_from_keras_config(config):
    """A minicnn model from Keras' `model.get_config()` wrapped as {"class_name", "config"}."""
    kind = entry(config, "class_name", "model_config")
    if kind in ("Model", "Functional"):     # "Functional" is what tf.keras 2.4+ writes
        return functional_model(entry(config, "config", "model_config"))
    if kind == "Sequential":
        return sequential_model(entry(config, "config", "model_config"))
    raise ValueError(f"model class {kind!r} is not supported (Model, Functional or Sequential)")


def functional_model(config):
    """Keras' layer list, each with the layers it reads ("inbound_nodes"), as a minicnn Model.

    Keras lists layers by depth, so every layer's inputs are built before the layer.
    """
    tensors = {}     # layer name -> its output SymbolicTensor
    for spec in entry(config, "layers", "model_config.config"):
        layer = keras_layer(spec)
        nodes = spec.get("inbound_nodes", [])
        if len(nodes) > 1:
            raise ValueError(f"{layer.name}: called on {len(nodes)} inputs (a shared layer with multiple "
                             f"inbound nodes); minicnn layers are called once")
        if not nodes:
            if not isinstance(layer, InputLayer):
                raise ValueError(f"{layer.name}: a {type(layer).__name__} with no inbound node")
            tensors[layer.name] = SymbolicTensor(layer.output_shape, layer)
            continue
        sources = [tensors[source_name(layer.name, ref, tensors)] for ref in nodes[0]]
        if len(sources) > 1 and not isinstance(layer, Add):
            raise ValueError(f"{layer.name}: a {type(layer).__name__} reading {len(sources)} tensors")
        tensors[layer.name] = layer(sources if isinstance(layer, Add) else sources[0])
    where = "model_config.config"
    inputs = [tensors[source_name("inputs", ref, tensors)] for ref in entry(config, "input_layers", where)]
    outputs, name = entry(config, "output_layers", where), entry(config, "name", where)
    if len(outputs) != 1:
        names = [ref[0] for ref in outputs]
        raise ValueError(f"{name}: {len(outputs)} outputs {names}; minicnn models have one output")
    model = Model(inputs, tensors[source_name("outputs", outputs[0], tensors)], name=name)
    keep_keras_initializers(model, entry(config, "layers", where))
    return model


def source_name(reader, ref, tensors):
    """The layer named by an inbound reference [layer, node_index, tensor_index(, kwargs)]."""
    if not isinstance(ref, list) or len(ref) < 3:
        raise ValueError(f"{reader}: inbound reference {ref!r} is not in the Keras 2 layout")
    name, node_index, tensor_index = ref[:3]
    if node_index != 0 or tensor_index != 0:       # the 2nd call of a shared layer, or a 2nd output
        raise ValueError(f"{reader}: reads node {node_index}, tensor {tensor_index} of {name}; minicnn layers "
                         f"have one inbound node and one output")
    if name not in tensors:
        raise ValueError(f"{reader}: reads {name}, which is not defined before it")
    return name


def sequential_model(config):
    """Keras 2.0/2.1 store a Sequential as a bare layer list, Keras 2.2+ as {"name", "layers"}."""
    if isinstance(config, list):
        specs, name = config, None
    else:
        specs, name = entry(config, "layers", "model_config.config"), config.get("name")
    model = Sequential(name=name)
    for spec in specs:
        model.add(keras_layer(spec))
    if model.pending:
        raise ValueError(f"{model.name}: no input shape (the first layer has no batch_input_shape)")
    keep_keras_initializers(model, specs)
    return model


INITIALIZERS = {"GlorotUniform": "glorot_uniform", "HeNormal": "he_normal", "Zeros": "zeros", "Ones": "ones"}


def keep_keras_initializers(model, specs):
    """Give each layer, built with zeros, the initializer its Keras config names if minicnn knows
    it (Keras 2's "glorot_uniform" or Keras 3's {"class_name": "GlorotUniform"}), else Keras'
    default, so that get_config() trains the architecture afresh as Keras would."""
    layers = {layer.name: layer for layer in model.nodes}
    for spec in specs:
        layer = layers.get(KerasConfig(spec).name)
        for key in [k for k in vars(layer) if k.endswith("_initializer")] if layer is not None else []:
            value = spec["config"].get(key)
            name = INITIALIZERS.get(value.get("class_name")) if isinstance(value, dict) else value
            default = "zeros" if key == "bias_initializer" else "glorot_uniform"
            setattr(layer, key, name if name in INITIALIZERS.values() else default)


# ---- layers ------------------------------------------------------------------------------------
class KerasConfig:
    """One Keras layer config, read option by option; options minicnn cannot honour raise."""

    def __init__(self, spec):
        self.class_name = entry(spec, "class_name", "a layer in model_config")
        self.config = entry(spec, "config", "a layer in model_config")
        self.name = self.config.get("name") or spec.get("name")

    def __getitem__(self, key):
        """An option the layer cannot be built without (filters, units, ...)."""
        if key not in self.config:
            raise ValueError(f"{self.name}: the {self.class_name} config has no {key!r} option")
        return self.config[key]

    def get(self, key, default=None):
        value = self.config.get(key, default)
        return default if value is None else value

    def require(self, key, *allowed):
        """The option must be missing, None or one of `allowed` (lists compare as tuples)."""
        value = self.config.get(key)
        if value is not None and (tuple(value) if isinstance(value, list) else value) not in allowed:
            raise ValueError(f"{self.name}: {self.class_name} option {key}={value!r} is not supported "
                             f"(minicnn supports {' or '.join(map(repr, allowed))})")

    def ignore(self, *keys):
        """Training-only options minicnn has no equivalent for: warn, the predictions are unaffected."""
        for key in keys:
            if self.config.get(key) is not None:
                warnings.warn(f"{self.name}: {key}={self.config[key]!r} ignored (minicnn has no equivalent; "
                              f"it only affects training)", stacklevel=4)

    def common(self):
        """The Layer arguments every class takes: the Keras name, trainable, the input shape."""
        args = {"name": self.name, "trainable": self.get("trainable", True)}
        if self.config.get("batch_input_shape") is not None:
            args["batch_input_shape"] = self.input_shape("batch_input_shape")
        return args

    def zeros(self, *weights):
        """Those weights initialized with zeros: the file's arrays replace them, and np.zeros costs
        no memory until the stored shapes, checked first, match (see keep_keras_initializers)."""
        return {f"{weight}_initializer": "zeros" for weight in weights}

    def input_shape(self, key):
        shape = tuple(self[key])
        if None in shape[1:]:
            raise ValueError(f"{self.name}: {key}={list(shape)} has unknown sizes; minicnn needs a fixed input shape")
        return shape

    def activation(self):
        name = self.get("activation", "linear")
        try:
            return activations.get(name).name
        except (ValueError, TypeError):
            raise ValueError(f"{self.name}: activation={name!r} is not supported "
                             f"(minicnn supports linear, relu, sigmoid, softmax, tanh)") from None

    def regularizer(self, key):
        """Keras' {"class_name": "L1L2", "config": {"l1": 0, "l2": 0.01}} -> minicnn's l2(0.01)."""
        spec = self.config.get(key)
        if spec is None:
            return None
        amounts = {k: float(spec.get("config", {}).get(k) or 0) for k in ("l1", "l2")}
        if spec.get("class_name") not in ("L1L2", "L1", "L2") or all(amounts.values()):
            raise ValueError(f"{self.name}: {key}={spec!r} is not supported (minicnn has l1 or l2 alone)")
        if amounts["l2"]:
            return regularizers.l2(amounts["l2"])
        return regularizers.l1(amounts["l1"]) if amounts["l1"] else None

    def channels_last(self):
        self.require("data_format", "channels_last")


def conv_args(c):
    """Arguments shared by Conv2D, DepthwiseConv2D and SeparableConv2D."""
    c.channels_last()
    c.require("dilation_rate", (1, 1), 1)
    c.ignore("bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint")
    return {"kernel_size": c["kernel_size"], "strides": c.get("strides", (1, 1)), "padding": c.get("padding", "valid"),
            "activation": c.activation(), "use_bias": c.get("use_bias", True), **c.zeros("kernel", "bias"),
            **c.common()}


def input_layer(c):
    c.require("sparse", False)
    c.require("ragged", False)
    key = "batch_input_shape" if "batch_input_shape" in c.config else "batch_shape"   # Keras 3: batch_shape
    return InputLayer(batch_input_shape=c.input_shape(key), name=c.name)


def conv2d(c):
    return Conv2D(c["filters"], kernel_regularizer=c.regularizer("kernel_regularizer"), **conv_args(c))


def depthwise_conv2d(c):
    c.ignore("depthwise_constraint")
    return DepthwiseConv2D(depth_multiplier=c.get("depth_multiplier", 1),
                           depthwise_regularizer=c.regularizer("depthwise_regularizer"), **c.zeros("depthwise"),
                           **conv_args(c))


def separable_conv2d(c):
    c.ignore("depthwise_constraint", "pointwise_constraint")
    return SeparableConv2D(c["filters"], depth_multiplier=c.get("depth_multiplier", 1),
                           depthwise_regularizer=c.regularizer("depthwise_regularizer"),
                           pointwise_regularizer=c.regularizer("pointwise_regularizer"),
                           **c.zeros("depthwise", "pointwise"), **conv_args(c))


def batch_normalization(c):
    axis = c.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis   # tf.keras writes [3]
    if axis not in (-1, 3):
        raise ValueError(f"{c.name}: BatchNormalization option axis={c['axis']!r} is not supported "
                         f"(minicnn normalizes the last axis, -1)")
    for flag, weight in (("center", "beta"), ("scale", "gamma")):
        if not c.get(flag, True):
            raise ValueError(f"{c.name}: BatchNormalization option {flag}=False is not supported "
                             f"(minicnn always learns {weight})")
    c.require("renorm", False)
    c.require("virtual_batch_size", None)
    c.ignore("beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint")
    return BatchNormalization(momentum=c.get("momentum", 0.99), epsilon=c.get("epsilon", 1e-3), **c.common())


def pooling(cls):
    def build(c):
        c.channels_last()
        return cls(pool_size=c.get("pool_size", (2, 2)), strides=c.get("strides"), padding=c.get("padding", "valid"),
                   **c.common())
    return build


def global_average_pooling2d(c):
    c.channels_last()
    c.require("keepdims", False)
    return GlobalAveragePooling2D(**c.common())


def dense(c):
    c.ignore("bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint")
    return Dense(c["units"], activation=c.activation(), use_bias=c.get("use_bias", True),
                 kernel_regularizer=c.regularizer("kernel_regularizer"), **c.zeros("kernel", "bias"), **c.common())


def flatten(c):
    c.channels_last()
    return Flatten(**c.common())


def dropout(c):
    c.ignore("noise_shape")
    return Dropout(c["rate"], seed=c.get("seed"), **c.common())


def activation(c):
    return Activation(c.activation(), **c.common())


def add(c):
    return Add(**c.common())


BUILDERS = {
    "InputLayer": input_layer, "Conv2D": conv2d, "DepthwiseConv2D": depthwise_conv2d,
    "SeparableConv2D": separable_conv2d, "BatchNormalization": batch_normalization,
    "MaxPooling2D": pooling(MaxPooling2D), "AveragePooling2D": pooling(AveragePooling2D),
    "GlobalAveragePooling2D": global_average_pooling2d, "Dense": dense, "Flatten": flatten, "Dropout": dropout,
    "Activation": activation, "Add": add,
}


def keras_layer(spec):
    """The minicnn layer for one Keras layer spec {"class_name", "config"(, "inbound_nodes")}."""
    c = KerasConfig(spec)
    build = BUILDERS.get(c.class_name)
    if build is None:
        raise ValueError(f"{c.name}: layer class {c.class_name} is not supported "
                         f"(minicnn imports {', '.join(BUILDERS)})")
    return build(c)


# ---- weights -----------------------------------------------------------------------------------
def load_keras_weights(model, group):
    """Copy model_weights/<layer>/<weight>:0 into each layer, matched by weight name.

    Matching "conv2d_1_1/kernel:0" to minicnn's "conv2d_1/kernel" by the last part, rather
    than by position, makes a file whose order differs from minicnn's an error, not a swap.
    Every dataset is checked (`stored_array`) before a byte of it is read.
    """
    layers = {layer.name: layer for layer in model.nodes}
    for name in map(text, group.attrs.get("layer_names", [])):
        if name not in layers and local_member(group, name, "model_weights") is not None \
                and weight_names(group[name]):
            raise ValueError(f"the file holds weights for layer {name}, which the model does not use")
    for layer in model.nodes:
        layer_group = local_group(group, layer.name, "model_weights")
        names = weight_names(layer_group) if layer_group is not None else []
        stored = {n.split("/")[-1].split(":")[0]: n for n in names}
        wanted = {w.name.split("/")[-1]: w for w in layer._weights}
        if sorted(stored) != sorted(wanted):
            raise ValueError(f"{layer.name}: the file holds weights {sorted(stored)}, the minicnn "
                             f"{type(layer).__name__} has {sorted(wanted)}")
        layer.set_weights([stored_array(layer_group, stored[key], layer.name, w) for key, w in wanted.items()])


def local_member(group, path, where):
    """group[path] (None if absent), refusing a link that leaves the file on the way.

    An HDF5 external link points into another file; following it would import that
    file's bytes. Each step of `path` is checked before it is followed.
    """
    h5py = import_h5py("reading Keras files")
    for part in path.split("/"):
        if not hasattr(group, "keys"):
            raise ValueError(f"{where} is a dataset, expected a group")
        link = group.get(part, getlink=True)
        if link is None:
            return None
        where = f"{where}/{part}"
        if isinstance(link, h5py.ExternalLink):
            raise ValueError(f"{where} is an external link to {link.filename}: minicnn reads weights stored "
                             f"in the file itself only")
        group = group[part]
    return group


def local_group(group, path, where):
    """local_member(group, path, where), which must be a group (None if absent)."""
    member = local_member(group, path, where)
    if member is not None and not hasattr(member, "keys"):
        raise ValueError(f"{where}/{path} is a dataset, expected a group")
    return member


def stored_array(group, path, layer_name, weight):
    """The array of dataset group[path], read only if it lives in the file, whole, holds floats,
    and has the shape of the minicnn `weight` it is for.

    HDF5 can keep a dataset's bytes in other files (external storage) or assemble it from
    other datasets, other files included (a virtual dataset): reading either would copy any
    readable local file into the weights. Both are refused, naming the dataset.
    """
    h5py = import_h5py("reading Keras files")
    where = f"{group.name.strip('/')}/{path}"                  # the dataset's path in the file
    dataset = local_member(group, path, group.name.strip("/"))
    if dataset is None:
        raise ValueError(f"{layer_name}: its weight_names list {path}, but the file has no dataset {where}")
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"{where}: a group, expected a dataset")
    if dataset.is_virtual:
        raise ValueError(f"{where}: a virtual dataset (mapped from other datasets or files); minicnn reads "
                         f"weights stored in the file itself only")
    if dataset.id.get_create_plist().get_external_count() > 0:
        raise ValueError(f"{where}: external storage (its bytes live in another file); minicnn reads weights "
                         f"stored in the file itself only")
    check_shape(weight, dataset.shape, layer_name, f" ({where})")      # before reading: no huge allocations
    if dataset.dtype.kind != "f":
        raise ValueError(f"{where}: holds {dataset.dtype} values, expected floats")
    return dataset[()]


def weight_names(layer_group):
    # a layer without weights has an empty float array here (h5py cannot store an empty string array)
    return [text(n) for n in layer_group.attrs.get("weight_names", [])]
