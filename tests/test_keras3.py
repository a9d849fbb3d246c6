"""Keras 3 .keras files: files written by real Keras 3 (tests/data, made by make_keras3_fixtures.py)
read as Keras computes them; minicnn -> .keras -> minicnn exact; the written file laid out as Keras
lays it out; hostile or unsupported files refused. With Keras 3 installed, Keras itself loads
minicnn's files (skipped otherwise)."""
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minicnn
from fer import models
from minicnn.keras3 import load_keras3, save_keras3

h5py = pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
FIXTURES = ("functional", "sequential")


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.value[...] = rng.normal(0, 0.1, w.shape) + (1 if w.name.endswith("variance") else 0)
    return model


def members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_archive(path, entries):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)


def h5_layout(data):
    """{dataset path: shape} of an HDF5 file's bytes."""
    layout = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        f.visititems(lambda name, obj: layout.update({name: obj.shape}) if isinstance(obj, h5py.Dataset) else None)
    return layout


# ---- files written by Keras 3 -------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_files_written_by_keras_3_predict_what_keras_predicted(name):
    model = load_keras3(DATA / f"keras3_{name}.keras")
    io_ = np.load(DATA / f"keras3_{name}_io.npz")
    assert str(io_["keras_version"]).startswith("3.")
    np.testing.assert_allclose(model.predict(io_["x"]), io_["y"], rtol=0, atol=1e-6)
    assert model.metadata == {}


def test_a_keras_3_file_builds_without_random_initial_values(monkeypatch):
    def no_draws():
        raise AssertionError("random initial values drawn while loading")
    monkeypatch.setattr(minicnn.backend, "rng", no_draws)
    model = load_keras3(DATA / "keras3_functional.keras")
    assert {layer.kernel_initializer for layer in model.nodes if hasattr(layer, "kernel_initializer")} \
        == {"glorot_uniform"}


def test_a_keras_3_functional_file_keeps_names_classes_and_options():
    model = load_keras3(DATA / "keras3_functional.keras")
    assert model.name == "small_functional"
    assert [type(layer).__name__ for layer in model.layers][:4] == ["InputLayer", "Conv2D", "BatchNormalization",
                                                                    "Activation"]
    conv = model.get_layer("conv2d")
    assert conv.strides == (2, 2) and conv.padding == "same" and conv.kernel_regularizer.l2 == pytest.approx(0.01)
    assert model.get_layer("depthwise_conv2d").depth_multiplier == 2
    assert sorted(s.name for s in model.inbound[model.get_layer("add")]) == ["conv2d_1", "max_pooling2d"]


def test_minicnn_load_model_and_convert_keras_detect_the_format(tmp_path, capsys):
    model = minicnn.load_model(DATA / "keras3_sequential.keras")
    assert model.name == "small_sequential"
    out = tmp_path / "m.npz"
    assert load_script("convert_keras").main([str(DATA / "keras3_sequential.keras"), str(out),
                                              "--labels", "a,b,c"]) == 0
    converted = minicnn.load_model(out)
    assert converted.metadata["labels"] == ["a", "b", "c"]
    x = np.load(DATA / "keras3_sequential_io.npz")["x"]
    np.testing.assert_array_equal(converted.predict(x), model.predict(x))


# ---- minicnn -> .keras -> minicnn ---------------------------------------------------------------
@pytest.mark.parametrize("name", models.names())
def test_round_trip_through_keras_3_is_exact(name, tmp_path):
    model = randomize(models.build(name))
    model.metadata = {"labels": list("abcdefg")[:model.output_shape[-1]], "preprocessing": {"scale": "unit"}}
    model.save(tmp_path / "m.keras")
    back = minicnn.load_model(tmp_path / "m.keras")
    assert back.get_config() == model.get_config()
    assert back.metadata == model.metadata
    for a, b in zip(model.weights, back.weights):
        assert a.name == b.name and a.value.dtype == b.value.dtype
        np.testing.assert_array_equal(a.value, b.value)
    x = np.random.default_rng(1).random((4,) + model.input_shape[1:], dtype=np.float32)
    np.testing.assert_array_equal(back.predict(x), model.predict(x))


@pytest.mark.parametrize("name", FIXTURES)
def test_minicnns_file_is_laid_out_as_keras_lays_it_out(name, tmp_path):
    keras_file = members(DATA / f"keras3_{name}.keras")
    save_keras3(load_keras3(DATA / f"keras3_{name}.keras"), tmp_path / "m.keras")
    ours = members(tmp_path / "m.keras")
    assert sorted(ours) == sorted(keras_file) == ["config.json", "metadata.json", "model.weights.h5"]
    assert h5_layout(ours["model.weights.h5"]) == h5_layout(keras_file["model.weights.h5"])
    theirs_config, our_config = (json.loads(m["config.json"]) for m in (keras_file, ours))
    assert our_config["class_name"] == theirs_config["class_name"]
    for key in ("input_layers", "output_layers"):
        assert our_config["config"].get(key) == theirs_config["config"].get(key)
    assert len(our_config["config"]["layers"]) == len(theirs_config["config"]["layers"])
    for theirs, mine in zip(theirs_config["config"]["layers"], our_config["config"]["layers"]):
        assert (mine["class_name"], mine["config"]["name"]) == (theirs["class_name"], theirs["config"]["name"])
        assert set(mine["config"]) <= set(theirs["config"]), mine["class_name"]    # only arguments Keras has
        history = [[t["config"]["keras_history"] for t in (n["args"][0] if isinstance(n["args"][0], list)
                                                            else [n["args"][0]])] for n in theirs.get("inbound_nodes", [])]
        assert [[t["config"]["keras_history"] for t in (n["args"][0] if isinstance(n["args"][0], list)
                                                         else [n["args"][0]])]
                for n in mine.get("inbound_nodes", [])] == history
    assert json.loads(ours["metadata.json"])["keras_version"].startswith("3.")


def test_keras_3_loads_minicnns_file_and_minicnn_loads_keras_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras", reason="real Keras 3 not installed (pip install keras jax[cpu])")
    model = randomize(models.build("mini_xception"))
    x = np.random.default_rng(2).random((8, 48, 48, 1), dtype=np.float32)
    model.save(tmp_path / "m.keras")
    in_keras = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(in_keras.predict(x, verbose=0)), model.predict(x), rtol=0, atol=1e-5)
    in_keras.save(tmp_path / "k.keras")
    np.testing.assert_array_equal(minicnn.load_model(tmp_path / "k.keras").predict(x), model.predict(x))


# ---- refusals -------------------------------------------------------------------------------------
@pytest.fixture
def sequential_members():
    return members(DATA / "keras3_sequential.keras")


def edited_config(entries, edit):
    config = json.loads(entries["config.json"])
    edit(config["config"]["layers"])
    return {**entries, "config.json": json.dumps(config).encode()}


def layer_edit(index, **options):
    return lambda layers: layers[index]["config"].update(options)


def weights_with(build):
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        build(f)
    return buffer.getvalue()


def external_link(f):
    f["layers/conv2d/vars"] = h5py.ExternalLink("/etc/passwd", "/")


def conv_vars(f):
    """The sequential fixture's first layer group, its bias in place: dataset "0" is the test's."""
    group = f.create_group("layers/conv2d/vars")
    group.create_dataset("1", data=np.zeros(4, "f4"))
    return group


def virtual_dataset(f):
    layout = h5py.VirtualLayout(shape=(3, 3, 1, 4), dtype="f4")
    layout[...] = h5py.VirtualSource("/tmp/elsewhere.h5", "data", shape=(3, 3, 1, 4))
    conv_vars(f).create_virtual_dataset("0", layout)


def external_storage(f):
    conv_vars(f).create_dataset("0", (3, 3, 1, 4), "f4", external=[("/etc/hostname", 0, 144)])


CASES = {
    "not a zip": (lambda m: None, "not a zip archive"),
    "no weights member": (lambda m: {k: v for k, v in m.items() if k != "model.weights.h5"},
                          "0 model.weights.h5 members"),
    "keras 2 version": (lambda m: {**m, "metadata.json": b'{"keras_version": "2.15.0"}'}, "reads Keras 3 files"),
    "config not json": (lambda m: {**m, "config.json": b"{"}, "config.json is not valid JSON"),
    "unknown layer": (lambda m: edited_config(m, lambda layers: layers[2].update(class_name="LSTM")),
                      "max_pooling2d_1: layer class LSTM is not supported"),
    "custom layer": (lambda m: edited_config(m, lambda layers: layers[1].update(registered_name="my>Conv2D")),
                     "conv2d_2: custom layer class 'my>Conv2D'"),
    "mixed precision": (lambda m: edited_config(m, layer_edit(1, dtype={"class_name": "DTypePolicy",
                                                                         "config": {"name": "mixed_float16"}})),
                        "conv2d_2: dtype 'mixed_float16' is not supported"),
    "grouped conv": (lambda m: edited_config(m, layer_edit(1, groups=2)), "conv2d_2: Conv2D option groups=2"),
    "dilation": (lambda m: edited_config(m, layer_edit(1, dilation_rate=[2, 2])), "conv2d_2: Conv2D option dilation_rate"),
    "channels first": (lambda m: edited_config(m, layer_edit(2, data_format="channels_first")),
                       "max_pooling2d_1: MaxPooling2D option data_format"),
    "a list where a layer belongs": (lambda m: edited_config(m, lambda layers: layers.__setitem__(2, [1])),
                                     "not in the Keras 3 layout (a layer in config.json has no 'config' entry)"),
    "inbound nodes not a list": (lambda m: edited_config(m, lambda layers: layers[3].update(inbound_nodes=True)),
                                 "config.json is not in the Keras 3 layout"),
    "external link": (lambda m: {**m, "model.weights.h5": weights_with(external_link)}, "external link"),
    "virtual dataset": (lambda m: {**m, "model.weights.h5": weights_with(virtual_dataset)}, "virtual dataset"),
    "external storage": (lambda m: {**m, "model.weights.h5": weights_with(external_storage)}, "external storage"),
    "missing weights": (lambda m: {**m, "model.weights.h5": weights_with(lambda f: f.create_group("layers"))},
                        "conv2d_2: model.weights.h5 has layers/conv2d/vars []"),
    "a scalar for the layers": (lambda m: {**m, "model.weights.h5": weights_with(
        lambda f: f.create_dataset("layers", data=1.0))}, "model.weights.h5/layers is a dataset, expected a group"),
    "a scalar for a layer's weights": (lambda m: {**m, "model.weights.h5": weights_with(
        lambda f: f.create_dataset("layers/conv2d/vars", data=1.0))},
        "model.weights.h5/layers/conv2d/vars is a dataset, expected a group"),
    "a scalar for a weight": (lambda m: {**m, "model.weights.h5": weights_with(
        lambda f: conv_vars(f).create_dataset("0", data=1.0))},
        "conv2d_2: weight conv2d_2/kernel has shape (3, 3, 1, 4), received shape ()"),
    "a string for a weight": (lambda m: {**m, "model.weights.h5": weights_with(
        lambda f: conv_vars(f).create_dataset("0", data=np.full((3, 3, 1, 4), b"x")))},
        "layers/conv2d/vars/0: holds |S1 values, expected floats"),
}


@pytest.mark.parametrize("case", CASES)
def test_hostile_and_unsupported_files_are_refused_naming_what(case, sequential_members, tmp_path):
    make, message = CASES[case]
    path = tmp_path / "bad.keras"
    entries = make(sequential_members)
    if entries is None:
        path.write_bytes(b"not a zip at all")
    else:
        write_archive(path, entries.items())
    with pytest.raises(ValueError, match="bad.keras: ") as error:
        load_keras3(path)
    assert message in str(error.value)
    assert load_script("convert_keras").main([str(path), str(tmp_path / "out.npz")]) == 1
    assert not (tmp_path / "out.npz").exists()


def test_weights_of_a_layer_the_config_lacks_are_refused(sequential_members, tmp_path):
    weights = sequential_members["model.weights.h5"]

    def extra(f):
        with h5py.File(io.BytesIO(weights), "r") as source:
            for name in source["layers"]:
                source.copy(source[f"layers/{name}"], f, f"layers/{name}")
        f.create_group("layers/conv2d_9/vars").create_dataset("0", data=np.zeros(3, "f4"))
    write_archive(tmp_path / "bad.keras", {**sequential_members, "model.weights.h5": weights_with(extra)}.items())
    with pytest.raises(ValueError, match=r"holds weights \['layers/conv2d_9'\]"):
        load_keras3(tmp_path / "bad.keras")


def test_duplicate_and_oversized_members_are_refused(sequential_members, tmp_path, monkeypatch):
    path = tmp_path / "dup.keras"
    with pytest.warns(UserWarning, match="Duplicate name"):
        write_archive(path, [*sequential_members.items(), ("config.json", sequential_members["config.json"])])
    with pytest.raises(ValueError, match="2 config.json members"):
        load_keras3(path)
    monkeypatch.setitem(minicnn.keras3.MEMBERS, "config.json", 100)
    with pytest.raises(ValueError, match="config.json is .* bytes, more than minicnn reads"):
        load_keras3(DATA / "keras3_sequential.keras")


def test_saving_the_optimizer_to_keras_is_refused(tmp_path):
    model = models.build("mini_xception")
    with pytest.raises(ValueError, match="without the optimizer state"):
        model.save(tmp_path / "m.keras", include_optimizer=True)
    assert not (tmp_path / "m.keras").exists()


def test_a_float64_model_is_refused_by_layer_name_before_writing(tmp_path):
    inputs = minicnn.Input((4, 4, 1), dtype="float64")
    model = minicnn.Model(inputs, minicnn.Flatten(name="flat64", dtype="float64")(inputs))
    with pytest.raises(ValueError, match="float64 cannot be written"):
        model.save(tmp_path / "m.keras")
    assert list(tmp_path.iterdir()) == []
