"""Keras 3 `.keras` files written from minicnn models: Keras 3's keras.saving.load_model reads them.

A `.keras` file is a zip archive of three members:
    metadata.json      {"keras_version": "3.x.y", "date_saved": ...}, and minicnn's own metadata
                       (labels, preprocessing) under "minicnn", which Keras ignores
    config.json        the model's serialized config: {"module", "class_name", "config": {
                       "layers": [{"class_name", "config", "inbound_nodes"}, ...], ...}}
    model.weights.h5   layers/<path>/vars/0, 1, ...: each layer's weights in get_weights order, where
                       <path> is the snake-case class name, numbered in layer order ("conv2d",
                       "conv2d_1", ...), not the layer's own name
`model.save("m.keras")` calls `save_keras3`; minicnn/keras3.py reads the files back.
"""
import io
import json
import os
import time
import zipfile

from .backend import to_snake_case
from .files import atomic_write, import_h5py
from .layers import DepthwiseConv2D, InputLayer, SeparableConv2D

KERAS_VERSION = "3.15.1"        # the Keras version whose files this writer was checked against


def weight_paths(class_names):
    """Keras' path of each layer in model.weights.h5: the snake-case class name, "_1", "_2", ... for
    the 2nd, 3rd layer of a class (saving_lib's rule: layer names are not reproducible, class order is)."""
    used, paths = {}, []
    for class_name in class_names:
        base = to_snake_case(class_name)
        count = used[base] = used.get(base, -1) + 1
        paths.append(f"layers/{base}" + (f"_{count}" if count else ""))
    return paths


def save_keras3(model, path, metadata=None, include_optimizer=False):
    """Write `model` as a Keras 3 .keras file (atomically); Keras 3's keras.saving.load_model reads it.

    The optimizer is not written (include_optimizer=True is refused): Keras' slot layout is its own.
    """
    if include_optimizer:
        raise ValueError(f"{os.fspath(path)}: .keras files are written without the optimizer state; "
                         f"save to .npz to keep it")
    h5py = import_h5py("writing .keras files")
    config = keras3_model_config(model)
    meta = {"keras_version": KERAS_VERSION, "date_saved": time.strftime("%Y-%m-%d@%H:%M:%S"),
            "minicnn": model.metadata if metadata is None else metadata}
    weights = weights_h5(h5py, model)

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:    # Keras stores, never deflates
            archive.writestr("metadata.json", json.dumps(meta))
            archive.writestr("config.json", json.dumps(config))
            archive.writestr("model.weights.h5", weights)
    atomic_write(path, write)


def is_sequential(model):
    """A Sequential as its config says (what load_model rebuilds it as)."""
    return model.get_config()["class_name"] == "Sequential"


def keras_layers(model):
    """The layers Keras lists and numbers: a Sequential's without its InputLayer."""
    return model.layers if is_sequential(model) else list(model.nodes)


def weights_h5(h5py, model):
    """model.weights.h5 as bytes: layers/<path>/vars/<i> per layer, in Keras' order and naming."""
    buffer = io.BytesIO()
    layers = keras_layers(model)
    with h5py.File(buffer, "w") as f:
        for layer, path in zip(layers, weight_paths([keras_class(layer) for layer in layers])):
            group = f.create_group(f"{path}/vars")
            group.attrs["name"] = layer.name
            for i, w in enumerate(layer._weights):
                group.create_dataset(str(i), data=w.value)
        f.create_group("vars").attrs["name"] = model.name
    return buffer.getvalue()


def keras_class(layer):
    return "Activation" if type(layer).__name__ in ("ReLU", "Softmax") else type(layer).__name__


def keras3_model_config(model):
    """config.json: a Keras Sequential for minicnn's Sequential, else a Functional graph."""
    if is_sequential(model):
        layers = [keras3_layer(layer, None) for layer in model.nodes]
        return {"module": "keras", "class_name": "Sequential", "registered_name": None,
                "config": {"name": model.name, "trainable": True, "dtype": "float32", "layers": layers,
                           "build_input_shape": list(model.input_shape)},
                "build_config": {"input_shape": list(model.input_shape)}}
    layers = [keras3_layer(layer, model.inbound[layer]) for layer in model.nodes]
    return {"module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
            "config": {"name": model.name, "trainable": True, "layers": layers,
                       "input_layers": tensor_list([[layer.name, 0, 0] for layer in model.input_layers]),
                       "output_layers": [model.output_layer.name, 0, 0]},
            "build_config": {"input_shape": None}}


def tensor_list(refs):
    """As Keras 3 writes them: one tensor as ["name", 0, 0], several as a list of those."""
    return refs[0] if len(refs) == 1 else refs


def keras3_layer(layer, sources):
    """One layer's Keras 3 spec; `sources` (the layers it reads) for a Functional model, else None."""
    spec = {"module": "keras.layers", "class_name": keras_class(layer), "config": keras3_config(layer),
            "registered_name": None}
    if isinstance(layer, InputLayer):
        return {**spec, "name": layer.name, "inbound_nodes": []} if sources is not None else spec
    spec["build_config"] = {"input_shape": list(layer.input_shape) if len(sources or [None]) == 1
                            else [list(s.output_shape) for s in sources]}
    if sources is not None:
        tensors = [{"class_name": "__keras_tensor__", "config": {"shape": list(s.output_shape), "dtype": "float32",
                                                                "keras_history": [s.name, 0, 0]}} for s in sources]
        spec.update(name=layer.name, inbound_nodes=[{"args": [tensors if len(tensors) > 1 else tensors[0]],
                                                     "kwargs": {}}])
    return spec


def keras3_config(layer):
    """minicnn's get_config as Keras 3 arguments: the same names, plus what Keras 3 asks to be told."""
    if layer.dtype != "float32":      # the reader takes float32 models only, as for Keras 2 files
        raise ValueError(f"{layer.name}: dtype {layer.dtype} cannot be written to .keras (float32 only)")
    config = dict(layer.get_config())
    config.pop("input_shape", None)
    if isinstance(layer, InputLayer):
        return {"batch_shape": list(layer.input_shape), "dtype": "float32", "sparse": False, "name": layer.name}
    for key, value in list(config.items()):
        if key.endswith("_regularizer") and value is not None:
            kind = value["class_name"]
            config[key] = {"module": "keras.regularizers", "class_name": kind, "registered_name": None,
                           "config": {kind.lower(): value[kind.lower()]}}
    if type(layer).__name__ in ("ReLU", "Softmax"):
        config["activation"] = layer.activation.name
    if "kernel_size" in config or "pool_size" in config or type(layer).__name__ in ("Flatten", "GlobalAveragePooling2D"):
        config["data_format"] = "channels_last"
    if isinstance(layer, (DepthwiseConv2D, SeparableConv2D)):    # Keras 3 has no kernel arguments here
        config.pop("kernel_initializer"), config.pop("kernel_regularizer")
    if type(layer).__name__ == "BatchNormalization":
        config.update(axis=-1, center=True, scale=True)
    return config
