"""Keras 3 `.keras` model files read as minicnn models (their layout: minicnn/keras3_save.py, which
writes them).

Reading turns the Keras 3 config into the Keras 2 form and builds it with keras_h5's layer
builders, so both formats refuse the same layers and options, with the same messages. The
archive is read in memory (nothing is extracted to disk), each member no larger than its cap.

    model = load_keras3("model.keras");  save_keras3(model, "copy.keras")
`minicnn.load_model("m.keras")` calls load_keras3. minicnn's own metadata (labels,
preprocessing) travels in metadata.json under "minicnn", which Keras ignores.
"""
import io
import json
import os
import zipfile

from . import keras_h5
from .files import import_h5py
from .keras3_save import save_keras3, weight_paths  # noqa: F401  (save_keras3: this format's writer)

MEMBERS = {"metadata.json": 1 << 20, "config.json": 64 << 20, "model.weights.h5": 4 << 30}    # name -> size cap


# ---- reading -----------------------------------------------------------------------------------
def load_keras3(path):
    """The minicnn Model (or Sequential) with the architecture, weights and metadata of a .keras file."""
    h5py = import_h5py("reading .keras files")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such Keras model file")
    try:
        members = read_members(path)
        metadata = parse_json(members["metadata.json"], "metadata.json")
        version = str(metadata.get("keras_version", "")) if isinstance(metadata, dict) else ""
        if not version.startswith("3"):
            raise ValueError(f"metadata.json says keras_version {version!r}; load_keras3 reads Keras 3 files")
        if not isinstance(metadata.get("minicnn", {}), dict):
            raise ValueError("metadata.json's minicnn entry is not a dict")
        model, specs = build_model(parse_json(members["config.json"], "config.json"))
        with open_weights(h5py, members["model.weights.h5"]) as weights:
            load_keras3_weights(model, specs, weights)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model.metadata = metadata.get("minicnn") or {}
    return model


def build_model(config):
    """model_from_keras3_config; a config of the wrong shape anywhere (a list for a dict, a number
    for a list) is a ValueError like every other refusal."""
    try:
        return model_from_keras3_config(config)
    except (AttributeError, IndexError, KeyError, TypeError) as e:
        raise ValueError(f"config.json is not in the Keras 3 layout ({type(e).__name__}: {e})") from None


def is_keras3_file(path):
    """True for a zip archive holding config.json and model.weights.h5 (what Keras 3 saves)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return is_keras3_archive(archive)
    except (zipfile.BadZipFile, OSError):
        return False


def is_keras3_archive(archive):
    """is_keras3_file for an open zipfile.ZipFile."""
    return {"config.json", "model.weights.h5"} <= set(archive.namelist())


def read_members(path):
    """{member name: bytes} of the three members; an error for anything missing, encrypted or too big."""
    if not zipfile.is_zipfile(path):
        raise ValueError("not a zip archive (Keras 3 saves .keras files as zip archives)")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            for name in MEMBERS:
                if names.count(name) != 1:
                    raise ValueError(f"the archive holds {names.count(name)} {name} members, a .keras file one")
            return {info.filename: read_member(archive, info) for info in infos if info.filename in MEMBERS}
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"truncated or corrupt archive ({type(e).__name__}: {e})") from None


def read_member(archive, info):
    """A member's bytes, never more than its cap (the declared size of a hostile archive may lie)."""
    cap = MEMBERS[info.filename]
    if info.flag_bits & 0x1:
        raise ValueError(f"{info.filename} is encrypted")
    if info.file_size > cap:
        raise ValueError(f"{info.filename} is {info.file_size} bytes, more than minicnn reads ({cap})")
    with archive.open(info) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"{info.filename} holds more than minicnn reads ({cap} bytes)")
    return data


def parse_json(data, name):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{name} is not valid JSON ({e})") from None


def open_weights(h5py, data):
    """model.weights.h5 opened from memory (the archive is never extracted)."""
    try:
        return h5py.File(io.BytesIO(data), "r")
    except OSError as e:
        raise ValueError(f"model.weights.h5 is not a readable HDF5 file ({e})") from None


# ---- the config: Keras 3 -> Keras 2 form -------------------------------------------------------
def entry(mapping, key, where):
    """mapping[key], an entry Keras 3 always writes: without it the file is in another layout."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"not in the Keras 3 layout ({where} has no {key!r} entry)")
    return mapping[key]


def model_from_keras3_config(config):
    """(minicnn model, the layer specs in Keras' layer order) from a Keras 3 config.json."""
    kind = entry(config, "class_name", "config.json")
    body = entry(config, "config", "config.json")
    if kind not in ("Functional", "Model", "Sequential") or config.get("registered_name") not in (None, kind):
        raise ValueError(f"model class {config.get('registered_name') or kind!r} is not supported "
                         f"(Functional or Sequential)")
    specs = [keras2_layer(spec) for spec in entry(body, "layers", "config.json's config")]
    body = {**body, "layers": fold_input_layer(specs) if kind == "Sequential" else specs}
    if kind != "Sequential":
        body["input_layers"] = tensor_refs(body.get("input_layers"))
        body["output_layers"] = tensor_refs(body.get("output_layers"))
    model = keras_h5.model_from_keras_config({"class_name": kind, "config": body})
    if kind == "Sequential":      # Keras numbers a Sequential's weight paths without its InputLayer
        specs = [spec for spec in specs if spec["class_name"] != "InputLayer"]
    return model, specs


def fold_input_layer(specs):
    """A Sequential's InputLayer named "<first layer>_input" becomes the first layer's batch_input_shape:
    the InputLayer minicnn's Sequential makes for itself, so the model rebuilds as it was saved."""
    if len(specs) < 2 or specs[0]["class_name"] != "InputLayer":
        return specs
    first_input, second = specs[0]["config"], specs[1]["config"]
    if first_input.get("name") != f"{second.get('name')}_input" or "batch_shape" not in first_input:
        return specs
    return [{**specs[1], "config": {**second, "batch_input_shape": first_input["batch_shape"]}}, *specs[2:]]


def tensor_refs(refs):
    """Keras 3 writes one input or output as ["name", 0, 0], several as a list of those."""
    if not isinstance(refs, list) or not refs:
        raise ValueError(f"input_layers / output_layers {refs!r} are not in the Keras 3 layout")
    return [refs] if isinstance(refs[0], str) else refs


def keras2_layer(spec):
    """One Keras 3 layer spec in the form keras_h5 reads: float32 checked, Keras 3 options checked,
    inbound nodes as [[[layer, node, tensor, kwargs], ...]]."""
    config = entry(spec, "config", "a layer in config.json")
    name = config.get("name") or spec.get("name")
    class_name = spec.get("class_name")
    if spec.get("registered_name") not in (None, class_name):
        raise ValueError(f"{name}: custom layer class {spec['registered_name']!r} is not supported")
    check_dtype(name, config.get("dtype"))
    for key, allowed in (("groups", 1), ("lora_rank", None), ("quantization_config", None), ("optional", False)):
        if config.get(key, allowed) != allowed:
            raise ValueError(f"{name}: {class_name} option {key}={config[key]!r} is not supported "
                             f"(minicnn supports {allowed!r})")
    converted = {"class_name": class_name, "config": {**config, "name": name}}
    if "inbound_nodes" in spec:
        converted["inbound_nodes"] = [inbound_refs(name, node) for node in spec["inbound_nodes"]]
    return converted


def check_dtype(name, dtype):
    """A layer's dtype (a string, or a DTypePolicy dict) must be float32: minicnn computes in it."""
    policy = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    if policy not in (None, "float32"):
        raise ValueError(f"{name}: dtype {policy!r} is not supported (minicnn imports float32 models)")


def inbound_refs(name, node):
    """{"args": [tensor or [tensors]], "kwargs": {...}} -> [[layer, node_index, tensor_index, {}], ...]."""
    if not isinstance(node, dict) or not isinstance(node.get("args"), list) or len(node["args"]) != 1:
        raise ValueError(f"{name}: inbound node {node!r} is not in the Keras 3 layout (one argument)")
    extra = {k: v for k, v in (node.get("kwargs") or {}).items() if v is not None and k != "training"}
    if extra:
        raise ValueError(f"{name}: called with {sorted(extra)}; minicnn layers take one input and no options")
    tensors = node["args"][0] if isinstance(node["args"][0], list) else [node["args"][0]]
    refs = []
    for tensor in tensors:
        history = tensor.get("config", {}).get("keras_history") if isinstance(tensor, dict) else None
        if tensor.get("class_name") != "__keras_tensor__" or not isinstance(history, list) or len(history) != 3:
            raise ValueError(f"{name}: inbound tensor {tensor!r} is not in the Keras 3 layout")
        refs.append([*history, {}])
    return refs


# ---- weights -----------------------------------------------------------------------------------
def load_keras3_weights(model, specs, f):
    """Copy layers/<path>/vars/<i> into each layer, with keras_h5's checks (no links or datasets that
    read other files, the layer's shapes, floats) before a byte is read; no weights may be left over."""
    paths = weight_paths([spec["class_name"] for spec in specs])
    for spec, path in zip(specs, paths):
        layer = model.get_layer(spec["config"]["name"])
        group = keras_h5.local_group(f, f"{path}/vars", "model.weights.h5")
        names = sorted(group) if group is not None else []
        if names != sorted(map(str, range(len(layer._weights)))):
            raise ValueError(f"{layer.name}: model.weights.h5 has {path}/vars {names}, the minicnn "
                             f"{type(layer).__name__} has {len(layer._weights)} weights")
        layer.set_weights([keras_h5.stored_array(group, str(i), layer.name, w) for i, w in enumerate(layer._weights)])
    layers = keras_h5.local_group(f, "layers", "model.weights.h5") or {}
    extra = [f"layers/{name}" for name in layers if f"layers/{name}" not in paths
             and len(keras_h5.local_group(layers, f"{name}/vars", "model.weights.h5/layers") or {})]
    if extra:
        raise ValueError(f"model.weights.h5 holds weights {extra} for layers the config does not have")
