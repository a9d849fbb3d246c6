"""minicnn's own model and weight files (.npz), and the formats `Model.save` writes.

Layout of a file written by `model.save(path)` (files.py writes and reads the archive):
    "__minicnn__"      JSON: {"format": 1, "config": architecture, "metadata": {...}, "weights": [names],
                             "layer_order": "keras"}
    "weight_0000" ...  the weight arrays, in `model.weights`-per-layer order (Keras' order; files
                       without "layer_order" used a depth-first order, see `file_layer_order`)
    "optimizer/0/m" .. with save(include_optimizer=True): the optimizer's slots, numbered in the
                       order of the trainable weights, listed in the JSON's "compile" entry
A compiled model's file also holds "compile": {"optimizer": config, "loss": config, "metrics"},
which `io.load_model` restores as Keras does (compile=False skips it). Shapes are checked from
the .npy headers before any array is read, so a small hostile file cannot cost gigabytes.
"""
import json
import os

import numpy as np

from . import losses, optimizers
from .files import FORMAT, NpzReader, write_npz
from .keras3_save import save_keras3
from .layers.base import set_weight_values

LAYER_ORDER = "keras"     # the layer order of the weights in files written now


def weight_arrays(model):
    """name -> array for every weight, keyed so that the order survives the round trip."""
    return {f"weight_{i:04d}": w.value for i, w in enumerate(all_weights(model))}


def all_weights(model):
    """Every weight of the model, trainable or not, layer by layer in get_weights() order."""
    return [w for layer in model.nodes for w in layer._weights]


def named_weights(model):
    """{weight name: its array} for every weight of the model."""
    return {w.name: w.value for w in all_weights(model)}


def nonfinite(arrays):
    """The names of the float arrays of {name: array} that hold an inf or NaN."""
    return [name for name, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]


def weights_meta(model):
    """The part of a file's JSON that says which weight is which."""
    return {"format": FORMAT, "weights": [w.name for w in all_weights(model)], "layer_order": LAYER_ORDER}


def file_layer_order(model, meta):
    """model's layers in the order the file's weights follow. A file without "layer_order" lists
    them in the order of a depth-first walk back from the output, which differs from Keras' order
    only for graphs with branches."""
    if meta.get("layer_order") == LAYER_ORDER:
        return list(model.nodes)
    return model.depth_first_order()


def trainable_in_file_order(model, meta):
    """The trainable weights in the order a file's optimizer slots are numbered (its layer order)."""
    return [w for layer in file_layer_order(model, meta) for w in layer.trainable_weights]


def assign_weights(model, meta, arrays, path):
    """Check every name count and shape against `model`, then copy; the model is unchanged on error.

    When the file's weight names are the model's (a model rebuilt from its own file or
    checkpoint), each array goes to the weight of its name, so no change in layer order can
    swap two weights of one shape; otherwise by position in the file's layer order, as Keras'
    load_weights does.
    """
    pairs = matched_weights(model, meta, arrays, path)
    set_weight_values([w for w, _ in pairs], [arrays[key] for _, key in pairs], path)


def matched_weights(model, meta, stored, path):
    """[(model weight, file key)] after checking each stored shape and dtype against the model.

    stored: key -> anything with .shape and .dtype (the arrays, or their `Stored` headers).
    """
    weights = all_weights(model)
    names = meta.get("weights", [])
    if len(names) != len(weights):
        raise ValueError(f"{path}: the file holds {len(names)} weights, the model {model.name} has {len(weights)}")
    by_name = {w.name: w for w in weights}
    if len(by_name) == len(weights) and sorted(names) == sorted(by_name):
        targets = [by_name[n] for n in names]
    else:
        targets = [w for layer in file_layer_order(model, meta) for w in layer._weights]
    pairs = []
    for i, (w, saved_name) in enumerate(zip(targets, names)):
        array = stored.get(f"weight_{i:04d}")
        if array is None:
            raise ValueError(f"{path}: weight {saved_name} is missing from the file")
        if array.shape != w.shape:
            raise ValueError(f"{path}: weight {saved_name} has shape {array.shape} in the file, "
                             f"but the model's {w.name} has shape {w.shape}")
        if array.dtype.kind != "f":
            raise ValueError(f"{path}: weight {saved_name} has dtype {array.dtype}, expected floats")
        pairs.append((w, f"weight_{i:04d}"))
    return pairs


def stored_members(meta, compile=True):
    """The arrays a model file's JSON names: its weights, and (compile) the optimizer's slots."""
    names = [f"weight_{i:04d}" for i in range(len(meta.get("weights", [])))]
    state = meta.get("compile") or {}
    if compile and isinstance(state, dict):
        names += list(state.get("optimizer_arrays", []))
    return names


def with_zeros_initializers(config):
    """A copy of a model config whose layers initialize every weight with zeros.

    The file's arrays replace the initial values anyway, and np.zeros takes its memory
    from the OS lazily: an architecture that asks for gigabytes costs nothing until the
    stored shapes, checked first, match it.
    """
    config = json.loads(json.dumps(config))
    for spec in config.get("layers", []) if isinstance(config, dict) else []:
        layer_config = spec.get("config") if isinstance(spec, dict) else None
        if isinstance(layer_config, dict):
            for key in layer_config:
                if key.endswith("_initializer"):
                    layer_config[key] = "zeros"
    return config


def keep_initializers(model, config):
    """Give the layers of a model built by `with_zeros_initializers(config)` the initializers
    `config` names, so that get_config() (and a clone trained afresh) is the stored one."""
    layers = {layer.name: layer for layer in model.nodes}
    for spec in config["layers"]:
        layer = layers.get(spec["config"].get("name"))
        for key, value in spec["config"].items():
            if key.endswith("_initializer") and layer is not None and hasattr(layer, key):
                setattr(layer, key, value)


def save_weights(model, path):
    """Write the weights alone in the format the file name's extension names (WEIGHT_FORMATS)."""
    writer_for(path, WEIGHT_FORMATS, "weight")(model, path)


def save_weights_npz(model, path):
    write_npz(path, weight_arrays(model), weights_meta(model))


def load_weights(model, path):
    """Read a weights file (or a model file's weights) into `model`: shapes checked from the headers first."""
    with NpzReader(path) as archive:
        read_weights(model, archive, stored_members(archive.meta, compile=False))


def read_weights(model, archive, names):
    """Check the headers of `names` against model, then read them and set the weights: the arrays."""
    matched_weights(model, archive.meta, archive.headers(names), archive.path)
    arrays = archive.arrays(names)
    assign_weights(model, archive.meta, arrays, archive.path)
    return arrays


def save_model(model, path, metadata=None, include_optimizer=False):
    """Write `model` in the format its file name's extension names (MODEL_FORMATS)."""
    writer_for(path, MODEL_FORMATS, "model")(model, path, metadata, include_optimizer)


def save_model_npz(model, path, metadata=None, include_optimizer=False):
    meta = {**weights_meta(model), "config": model.get_config(),
            "metadata": model.metadata if metadata is None else metadata}
    arrays = weight_arrays(model)
    if model.optimizer is not None:
        meta["compile"], optimizer_arrays = compile_state(model, include_optimizer)
        arrays.update(optimizer_arrays)
    write_npz(path, arrays, meta)


# File name extension -> the function that writes a model in that format (model, path, metadata,
# include_optimizer); .keras: a Keras 3 file that Keras 3 itself loads. A name with any other
# extension is refused: it would lie about the format.
MODEL_FORMATS = {".npz": save_model_npz, ".keras": save_keras3}
WEIGHT_FORMATS = {".npz": save_weights_npz}


def writer_for(path, formats, what):
    """formats[extension of path], or an error naming the formats minicnn writes."""
    stem, extension = os.path.splitext(os.fspath(path))
    if extension.lower() not in formats:
        received = f"the extension {extension!r}" if extension else "no extension"
        raise ValueError(f"{os.fspath(path)}: minicnn writes {what} files as {' or '.join(formats)}, received "
                         f"{received}; name the file {stem}{next(iter(formats))}")
    return formats[extension.lower()]


def compile_state(model, include_optimizer):
    """(JSON, arrays) that restore model.compile(...): optimizer, loss and metrics configs, and with
    include_optimizer the optimizer's iterations and slots (Adam's moments: twice the weights)."""
    state = {"optimizer": model.optimizer.get_config(), "loss": model.loss.get_config(),
             "metrics": list(model.metrics)}
    if not include_optimizer:
        return state, {}
    config, slots = model.optimizer.get_state(model.trainable_weights)
    arrays = {f"optimizer/{name}": array for name, array in slots.items()}
    return {**state, "optimizer_state": config, "optimizer_arrays": sorted(arrays)}, arrays


def restore_compile_state(model, meta, arrays, path):
    """model.compile(...) as the file's "compile" entry says, with the optimizer's state if saved."""
    state = meta.get("compile")
    if not state:
        return
    try:
        model.compile(optimizers.get(state["optimizer"]), losses.get(state["loss"]), state["metrics"])
        if "optimizer_state" in state:
            slots = {name[len("optimizer/"):]: arrays[name] for name in state["optimizer_arrays"]}
            model.optimizer.set_state(trainable_in_file_order(model, meta), state["optimizer_state"], slots)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: the stored compile state does not restore ({type(error).__name__}: {error}); "
                         f"load_model(path, compile=False) loads the model without it") from None


