"""Model files: one `.npz` holding the weights, and JSON for the architecture and metadata.

Layout of a file written by `model.save(path)`:
    "__minicnn__"      JSON: {"format": 1, "config": architecture, "metadata": {...}, "weights": [names],
                             "layer_order": "keras"}
    "weight_0000" ...  the weight arrays, in `model.weights`-per-layer order (Keras' order; files
                       without "layer_order" used a depth-first order, see `file_layer_order`)
    "optimizer/0/m" .. with save(include_optimizer=True): the optimizer's slots, numbered in the
                       order of the trainable weights, listed in the JSON's "compile" entry
A compiled model's file also holds "compile": {"optimizer": config, "loss": config, "metrics"},
which `load_model` restores as Keras does (compile=False skips it).
Everything loads with `allow_pickle=False`, so a file can never run code; `load_model` reads only
the arrays the JSON names, after checking their .npy headers' shapes against the architecture,
so a small hostile file cannot cost gigabytes. Files are written to a temporary file, fsync'ed
and renamed, so a crash never leaves half a file behind.
"""
import contextlib
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from . import losses, optimizers

FORMAT = 1
META_KEY = "__minicnn__"
LAYER_ORDER = "keras"     # the layer order of the weights in files written now


def atomic_write(path, write):
    """Call write(file) on a temp file beside `path`, fsync, then rename it over `path`.

    A crash at any point leaves either the old file or the new one, never half a file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)    # mkstemp makes files private; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_npz(path, arrays, meta):
    """Atomically write `arrays` (name -> array) and the JSON-able `meta` to `path`."""
    atomic_write(path, lambda f: np.savez(f, **{META_KEY: np.array(json.dumps(meta))}, **arrays))


def read_npz(path, members=None):
    """(meta, arrays) from a file written by `write_npz`; clear errors for anything else.

    members(meta) -> the names of the arrays to read (default: all). Only those are
    decompressed, so a file's other members cost nothing, however large they claim to be.
    """
    path = os.fspath(path)
    with _open_npz(path) as data:
        meta = _read_meta(path, data)
        names = [n for n in data.files if n != META_KEY] if members is None else list(members(meta))
        _check_present(path, data, names)
        arrays = {name: data[name] for name in names}
    return meta, arrays


class Stored:
    """An array's shape and dtype as its .npy header in the archive states them."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


def read_npz_headers(path, members):
    """(meta, {name: Stored}) for the arrays members(meta) names, from their .npy headers
    alone: no array is decompressed, so shapes can be checked before anything is allocated."""
    path = os.fspath(path)
    with _open_npz(path) as data:
        meta = _read_meta(path, data)
        names = list(members(meta))
        _check_present(path, data, names)
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():       # every member's header (its first bytes): no pickles at all
            name = info.filename[:-len(".npy")]
            with archive.open(info) as f:
                headers[name] = _npy_header(path, name, f)
            if headers[name].dtype.hasobject:
                raise ValueError(f"{path}: holds an object (pickled) array, which minicnn refuses to load")
    return meta, {name: headers[name] for name in names}


def _npy_header(path, name, f):
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, _, dtype = read[version](f)
    except (KeyError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: array {name} has no readable .npy header ({error})") from None
    return Stored(shape, dtype)


_META_LIMIT = 16 << 20   # characters: a model's JSON is kilobytes; more is not a minicnn file


@contextlib.contextmanager
def _open_npz(path):
    """`with _open_npz(path) as data:` np.load without pickle; read errors name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":        # every .npz is a zip archive
            raise ValueError(f"{path}: not a minicnn model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            yield data
    except ValueError as e:
        if str(e).startswith(path):          # ours, naming the file already
            raise
        if "allow_pickle" in str(e):
            raise ValueError(f"{path}: holds an object (pickled) array, which minicnn refuses to load") from None
        raise ValueError(f"{path}: not a readable model file ({e})") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: truncated or corrupt model file ({type(e).__name__}: {e})") from None


def _read_meta(path, data):
    """The JSON entry of an open archive, checked: present, small, JSON, format 1."""
    if META_KEY not in data.files:
        raise ValueError(f"{path}: not a minicnn model file (no {META_KEY} entry)")
    with zipfile.ZipFile(path) as archive, archive.open(META_KEY + ".npy") as f:
        header = _npy_header(path, META_KEY, f)
    if header.dtype.kind != "U" or header.shape != () or header.dtype.itemsize > 4 * _META_LIMIT:
        raise ValueError(f"{path}: its {META_KEY} entry is not a JSON text of a model file "
                         f"({header.dtype}, shape {header.shape})")
    try:
        meta = json.loads(str(data[META_KEY]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt {META_KEY} entry ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported minicnn file format "
                         f"{meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def _check_present(path, data, names):
    missing = [n for n in names if n not in data.files or n == META_KEY]
    if missing:
        raise ValueError(f"{path}: array {missing[0]} is missing from the file")


def weight_arrays(model):
    """name -> array for every weight, keyed so that the order survives the round trip."""
    return {f"weight_{i:04d}": w.value for i, w in enumerate(all_weights(model))}


def all_weights(model):
    return [w for layer in model.nodes for w in layer._weights]


def weights_meta(model):
    """The part of a file's JSON that says which weight is which."""
    return {"format": FORMAT, "weights": [w.name for w in all_weights(model)], "layer_order": LAYER_ORDER}


def file_layer_order(model, meta):
    """model's layers in the order the file's weights follow. Files written before minicnn listed
    layers in Keras' order (2026-11-22) have no "layer_order": they used a depth-first walk back
    from the output, which differs from Keras' order only for graphs with branches."""
    from .models.network import depth_first

    if meta.get("layer_order") == LAYER_ORDER:
        return list(model.nodes)
    return depth_first(model.output_layer, model.inbound)[1]


def assign_weights(model, meta, arrays, path):
    """Check every name count and shape against `model`, then copy; the model is unchanged on error.

    When the file's weight names are the model's (a model rebuilt from its own file or
    checkpoint), each array goes to the weight of its name, so no change in layer order can
    swap two weights of one shape; otherwise by position in the file's layer order, as Keras'
    load_weights does.
    """
    pairs = matched_weights(model, meta, arrays, path)
    for w, key in pairs:
        w.value[...] = arrays[key]


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
    meta, headers = read_npz_headers(path, lambda meta: stored_members(meta, compile=False))
    matched_weights(model, meta, headers, path)            # shapes first, from the headers
    _, arrays = read_npz(path, lambda meta: list(headers))
    assign_weights(model, meta, arrays, path)


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


def save_model_keras3(model, path, metadata=None, include_optimizer=False):
    """A Keras 3 .keras file (minicnn/keras3.py), which Keras 3 itself loads."""
    from .keras3 import save_keras3
    save_keras3(model, path, metadata, include_optimizer)


# File name extension -> the function that writes a model in that format (model, path, metadata,
# include_optimizer). A name with any other extension is refused: it would lie about the format.
MODEL_FORMATS = {".npz": save_model_npz, ".keras": save_model_keras3}
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
            order = [w for layer in file_layer_order(model, meta) for w in layer.trainable_weights]
            model.optimizer.set_state(order, state["optimizer_state"], slots)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: the stored compile state does not restore ({type(error).__name__}: {error}); "
                         f"load_model(path, compile=False) loads the model without it") from None


def load_model(path, compile=True):
    """Rebuild the architecture stored in `path`, load its weights and metadata, and (compile=True,
    as Keras) compile it with the optimizer, loss and metrics it was saved with."""
    from .keras3 import is_keras3_file, load_keras3
    from .models import model_from_config

    if is_keras3_file(path):        # a Keras 3 .keras archive (config.json, model.weights.h5)
        return load_keras3(path)
    # only the arrays the JSON names are read, and their shapes (from the .npy headers) are
    # checked against the architecture before any is decompressed
    meta, headers = read_npz_headers(path, lambda meta: stored_members(meta, compile))
    if "config" not in meta:
        raise ValueError(f"{path}: holds weights only (save_weights); build the model and call load_weights")
    try:
        model = model_from_config(with_zeros_initializers(meta["config"]))
    except (KeyError, TypeError, ValueError, AttributeError) as error:     # a config this version cannot build
        raise ValueError(f"{path}: the stored architecture does not build: {error}") from error
    keep_initializers(model, meta["config"])
    matched_weights(model, meta, headers, path)
    _, arrays = read_npz(path, lambda meta: list(headers))
    assign_weights(model, meta, arrays, path)
    model.metadata = meta.get("metadata") or {}
    if compile:
        restore_compile_state(model, meta, arrays, path)
    return model


from .keras_h5 import load_keras_h5  # noqa: E402,F401
from .onnx import export_onnx  # noqa: E402,F401
