"""Keras 2 HDF5 import: small Keras-layout files written here with h5py, checked against NumPy
computed by hand; then the published mini-Xception (shared reference file) end to end."""
import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn
from fer.inference import EmotionClassifier
from minicnn import regularizers
from minicnn.io import load_keras_h5
from tests.fer_synthetic import write_csv

h5py = pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    """scripts/<name>.py as a module, so its main(argv) runs in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- writing Keras 2.0.5 files -----------------------------------------------------------------
# The options Keras 2.0.5 writes for each class (initializers left out: the importer never reads them).
CONV = {"strides": [1, 1], "padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1],
        "activation": "linear", "use_bias": True, "kernel_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}
DEFAULTS = {
    "Conv2D": CONV,
    "SeparableConv2D": {**CONV, "depth_multiplier": 1, "depthwise_regularizer": None, "pointwise_regularizer": None},
    "DepthwiseConv2D": {**CONV, "depth_multiplier": 1, "depthwise_regularizer": None},
    "BatchNormalization": {"axis": -1, "momentum": 0.99, "epsilon": 0.001, "center": True, "scale": True},
    "MaxPooling2D": {"padding": "valid", "data_format": "channels_last"},
    "AveragePooling2D": {"padding": "valid", "data_format": "channels_last"},
    "GlobalAveragePooling2D": {"data_format": "channels_last"},
    "Dense": {"activation": "linear", "use_bias": True, "kernel_regularizer": None},
    "Dropout": {"noise_shape": None, "seed": None},
}


def spec(class_name, name, inbound=None, **config):
    """One layer entry of model_config; `inbound` (functional models only) names the layers it reads."""
    layer = {"class_name": class_name, "name": name,
             "config": {**DEFAULTS.get(class_name, {}), "name": name, "trainable": True, **config}}
    if inbound is not None:
        layer["inbound_nodes"] = [[[source, 0, 0, {}] for source in inbound]] if inbound else []
    return layer


def write_keras_h5(path, model_config, weights, config_as_bytes=False):
    """The reference file's layout: root attrs, model_weights/<layer>/<layer>_1/<weight>:0 datasets.

    weights: layer name -> [(weight name, array), ...] in Keras' get_weights order.
    """
    layers = model_config["config"]
    layers = layers if isinstance(layers, list) else layers["layers"]
    names = [layer["config"]["name"] for layer in layers]
    config = json.dumps(model_config)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_(b"2.0.5")       # bytes, as older h5py returns them
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = np.bytes_(config.encode()) if config_as_bytes else config
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = np.array([name.encode() for name in names])
        for name in names:
            layer_group = group.create_group(name)
            arrays = weights.get(name, [])
            keys = [f"{name}_1/{weight}:0" for weight, _ in arrays]
            # Keras 2.0.5 stores "no weights" as an empty float array
            layer_group.attrs["weight_names"] = np.array([k.encode() for k in keys]) if keys else np.array([])
            for key, (_, array) in zip(keys, arrays):
                layer_group.create_dataset(key, data=array)
    return path


def random_weights(seed, shapes):
    rng = np.random.default_rng(seed)
    return {layer: [(name, rng.normal(0, 0.5, shape).astype(np.float32)) for name, shape in weights]
            for layer, weights in shapes.items()}


# A residual block of the mini-Xception, 8x8x1 in, 4 classes out.
FUNCTIONAL = {"class_name": "Model", "config": {"name": "model_1", "layers": [
    spec("InputLayer", "input_1", [], batch_input_shape=[None, 8, 8, 1], dtype="float32", sparse=False),
    spec("SeparableConv2D", "separable_conv2d_1", ["input_1"], filters=4, kernel_size=[3, 3], padding="same",
         depth_multiplier=2, use_bias=False),
    spec("BatchNormalization", "batch_normalization_1", ["separable_conv2d_1"], epsilon=0.01, momentum=0.9),
    spec("Activation", "activation_1", ["batch_normalization_1"], activation="relu"),
    spec("MaxPooling2D", "max_pooling2d_1", ["activation_1"], pool_size=[3, 3], strides=[2, 2], padding="same"),
    spec("Conv2D", "conv2d_1", ["input_1"], filters=4, kernel_size=[1, 1], strides=[2, 2], padding="same",
         use_bias=False, kernel_regularizer={"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.01}}),
    spec("Add", "add_1", ["max_pooling2d_1", "conv2d_1"]),
    spec("GlobalAveragePooling2D", "global_average_pooling2d_1", ["add_1"]),
    spec("Activation", "predictions", ["global_average_pooling2d_1"], activation="softmax"),
], "input_layers": [["input_1", 0, 0]], "output_layers": [["predictions", 0, 0]]}}

FUNCTIONAL_SHAPES = {
    "separable_conv2d_1": [("depthwise_kernel", (3, 3, 1, 2)), ("pointwise_kernel", (1, 1, 2, 4))],
    "batch_normalization_1": [("gamma", (4,)), ("beta", (4,)), ("moving_mean", (4,)), ("moving_variance", (4,))],
    "conv2d_1": [("kernel", (1, 1, 1, 4))],
}

# A chain on a 6x5x1 input (H != W: odd and even "same" padding), as Keras 2.0/2.1 store a Sequential.
SEQUENTIAL_LAYERS = [
    spec("Conv2D", "conv2d_1", filters=3, kernel_size=[3, 3], padding="same", activation="relu",
         batch_input_shape=[None, 6, 5, 1]),
    spec("DepthwiseConv2D", "depthwise_conv2d_1", kernel_size=[3, 3], strides=[2, 2], padding="same",
         depth_multiplier=2),
    spec("AveragePooling2D", "average_pooling2d_1", pool_size=[2, 2], strides=[2, 2], padding="same"),
    spec("Dropout", "dropout_1", rate=0.5),
    spec("Flatten", "flatten_1"),
    spec("Dense", "dense_1", units=5, activation="softmax"),
]

SEQUENTIAL_SHAPES = {
    "conv2d_1": [("kernel", (3, 3, 1, 3)), ("bias", (3,))],
    "depthwise_conv2d_1": [("depthwise_kernel", (3, 3, 3, 2)), ("bias", (6,))],
    "dense_1": [("kernel", (24, 5)), ("bias", (5,))],
}


@pytest.fixture
def functional_file(tmp_path):
    weights = random_weights(1, FUNCTIONAL_SHAPES)
    bn = dict(weights["batch_normalization_1"])
    bn["moving_variance"] = np.abs(bn["moving_variance"]) + 0.1         # a variance is positive
    weights["batch_normalization_1"] = list(bn.items())
    return write_keras_h5(tmp_path / "functional.hdf5", FUNCTIONAL, weights), weights


# ---- NumPy by hand: loops over output positions, TensorFlow's "same" ---------------------------------
def pad_same(x, kernel, strides, fill=0.0):
    """TF "same": out = ceil(n / s), total pad = (out - 1) * s + k - n, the odd pixel at bottom/right."""
    pads = []
    for n, k, s in zip(x.shape[1:3], kernel, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)


def patches(x, kernel, strides, padding, fill=0.0):
    """Yield (i, j, window (N, kh, kw, C)) for every output position."""
    if padding == "same":
        x = pad_same(x, kernel, strides, fill)
    (kh, kw), (sh, sw) = kernel, strides
    for i in range((x.shape[1] - kh) // sh + 1):
        for j in range((x.shape[2] - kw) // sw + 1):
            yield i, j, x[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]


def sliding(x, kernel, strides, padding, window_fn, fill=0.0):
    rows = {}
    for i, j, window in patches(x, kernel, strides, padding, fill):
        rows[i, j] = window_fn(window)
    ho, wo = max(i for i, _ in rows) + 1, max(j for _, j in rows) + 1
    return np.stack([np.stack([rows[i, j] for j in range(wo)], axis=1) for i in range(ho)], axis=1)


def conv(x, kernel, strides=(1, 1), padding="valid"):
    return sliding(x, kernel.shape[:2], strides, padding, lambda w: np.einsum("nhwc,hwcf->nf", w, kernel))


def depthwise(x, kernel, strides=(1, 1), padding="valid"):
    # output channel c * M + m is input channel c convolved with kernel[..., c, m]
    n = len(x)
    return sliding(x, kernel.shape[:2], strides, padding,
                   lambda w: np.einsum("nhwc,hwcm->ncm", w, kernel).reshape(n, -1))


def pool(x, size, strides, padding, reduce):
    # NaN padding + nanmax/nanmean = max over real cells (-inf padding) and mean over real cells
    return sliding(x, size, strides, padding, lambda w: reduce(w, axis=(1, 2)), fill=np.nan)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def functional_by_hand(x, w):
    sep, bn, short = dict(w["separable_conv2d_1"]), dict(w["batch_normalization_1"]), dict(w["conv2d_1"])
    y = conv(depthwise(x, sep["depthwise_kernel"], padding="same"), sep["pointwise_kernel"])
    y = (y - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 0.01) * bn["gamma"] + bn["beta"]
    y = pool(np.maximum(y, 0), (3, 3), (2, 2), "same", np.nanmax)
    y = y + conv(x, short["kernel"], (2, 2), "same")
    return softmax(y.mean(axis=(1, 2)))


def sequential_by_hand(x, w):
    c, d, dense = dict(w["conv2d_1"]), dict(w["depthwise_conv2d_1"]), dict(w["dense_1"])
    y = np.maximum(conv(x, c["kernel"], padding="same") + c["bias"], 0)
    y = depthwise(y, d["depthwise_kernel"], (2, 2), "same") + d["bias"]
    y = pool(y, (2, 2), (2, 2), "same", np.nanmean)
    return softmax(y.reshape(len(y), -1) @ dense["kernel"] + dense["bias"])


def assert_weights_loaded(model, weights):
    """Every array written for layer L, weight w, is now L's weight L/w (in Keras' order)."""
    for layer_name, arrays in weights.items():
        layer = model.get_layer(layer_name)
        assert [w.name for w in layer._weights] == [f"{layer_name}/{name}" for name, _ in arrays]
        for loaded, (_, written) in zip(layer.get_weights(), arrays):
            np.testing.assert_array_equal(loaded, written)


# ---- unit tests --------------------------------------------------------------------------------
def test_functional_model_keeps_names_weights_and_options(functional_file):
    path, weights = functional_file
    model = load_keras_h5(path)
    assert type(model) is minicnn.Model and model.name == "model_1"
    keras_names = [layer["name"] for layer in FUNCTIONAL["config"]["layers"]]
    assert sorted(layer.name for layer in model.layers) == sorted(keras_names)
    assert model.inbound[model.get_layer("add_1")] == [model.get_layer("max_pooling2d_1"), model.get_layer("conv2d_1")]
    assert_weights_loaded(model, weights)
    bn = model.get_layer("batch_normalization_1")
    assert (bn.epsilon, bn.momentum) == (0.01, 0.9)
    shortcut = model.get_layer("conv2d_1")
    assert (shortcut.strides, shortcut.padding, shortcut.use_bias) == ((2, 2), "same", False)
    assert isinstance(shortcut.kernel_regularizer, regularizers.L2) and shortcut.kernel_regularizer.l2 == 0.01
    assert model.get_layer("separable_conv2d_1").depth_multiplier == 2
    assert model.output_shape == (None, 4)


def test_functional_model_predicts_what_numpy_computes_by_hand(functional_file):
    path, weights = functional_file
    x = np.random.default_rng(2).uniform(-1, 1, (3, 8, 8, 1))
    expected = functional_by_hand(x, weights)
    np.testing.assert_allclose(load_keras_h5(path).predict(x.astype(np.float32)), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layout", ["list", "dict"])
def test_sequential_model_names_weights_and_predictions(layout, tmp_path):
    # Keras 2.0/2.1 store the bare layer list; 2.2+ {"name", "layers"}; this file's config attr is bytes
    config = SEQUENTIAL_LAYERS if layout == "list" else {"name": "sequential_7", "layers": SEQUENTIAL_LAYERS}
    weights = random_weights(3, SEQUENTIAL_SHAPES)
    path = write_keras_h5(tmp_path / "sequential.h5", {"class_name": "Sequential", "config": config}, weights,
                          config_as_bytes=True)
    model = load_keras_h5(path)
    assert isinstance(model, minicnn.Sequential)
    assert [layer.name for layer in model.layers] == [layer["name"] for layer in SEQUENTIAL_LAYERS]
    assert model.nodes[0].name == "conv2d_1_input" and model.input_shape == (None, 6, 5, 1)
    if layout == "dict":
        assert model.name == "sequential_7"
    assert model.get_layer("conv2d_1").activation.name == "relu"
    assert model.get_layer("dropout_1").rate == 0.5
    assert_weights_loaded(model, weights)
    x = np.random.default_rng(4).uniform(-1, 1, (2, 6, 5, 1))
    np.testing.assert_allclose(model.predict(x.astype(np.float32)), sequential_by_hand(x, weights),
                               rtol=1e-4, atol=1e-6)


def test_training_only_options_minicnn_lacks_are_warnings(tmp_path):
    layers = copy.deepcopy(SEQUENTIAL_LAYERS)
    layers[-1]["config"]["kernel_constraint"] = {"class_name": "MaxNorm", "config": {"max_value": 2, "axis": 0}}
    path = write_keras_h5(tmp_path / "constraint.h5", {"class_name": "Sequential", "config": layers},
                          random_weights(3, SEQUENTIAL_SHAPES))
    with pytest.warns(UserWarning, match="dense_1: kernel_constraint=.* ignored"):
        load_keras_h5(path)


def with_layer(config, name, **changes):
    config = copy.deepcopy(config)
    layer = next(layer for layer in config["config"]["layers"] if layer["name"] == name)
    layer["config"].update(changes)
    return config


def shared_conv(config):
    config = copy.deepcopy(config)
    conv = next(layer for layer in config["config"]["layers"] if layer["name"] == "conv2d_1")
    conv["inbound_nodes"].append([["input_1", 0, 0, {}]])
    return config


def two_outputs(config):
    config = copy.deepcopy(config)
    config["config"]["output_layers"].append(["add_1", 0, 0])
    return config


def unknown_class(config):
    config = copy.deepcopy(config)
    layer = next(layer for layer in config["config"]["layers"] if layer["name"] == "activation_1")
    layer.update({"class_name": "LeakyReLU", "name": "leaky_re_lu_1",
                  "config": {"name": "leaky_re_lu_1", "trainable": True, "alpha": 0.3}})
    config["config"]["layers"][4]["inbound_nodes"] = [[["leaky_re_lu_1", 0, 0, {}]]]
    return config


@pytest.mark.parametrize("make_config,message", [
    (unknown_class, "leaky_re_lu_1: layer class LeakyReLU is not supported"),
    (lambda c: with_layer(c, "conv2d_1", data_format="channels_first"), "conv2d_1: Conv2D option data_format"),
    (lambda c: with_layer(c, "conv2d_1", dilation_rate=[2, 2]), "conv2d_1: Conv2D option dilation_rate"),
    (lambda c: with_layer(c, "activation_1", activation="elu"), "activation_1: activation='elu'"),
    (lambda c: with_layer(c, "batch_normalization_1", center=False), "batch_normalization_1: .* center=False"),
    (lambda c: with_layer(c, "batch_normalization_1", scale=False), "batch_normalization_1: .* scale=False"),
    (lambda c: with_layer(c, "max_pooling2d_1", data_format="channels_first"), "max_pooling2d_1: .*data_format"),
    (shared_conv, "conv2d_1: .*shared layer"),
    (two_outputs, "model_1: 2 outputs"),
], ids=["class", "channels_first", "dilation", "activation", "center", "scale", "pool_format", "shared", "outputs"])
def test_unsupported_layers_and_options_are_errors_naming_them(make_config, message, functional_file, tmp_path):
    _, weights = functional_file
    path = write_keras_h5(tmp_path / "bad.h5", make_config(FUNCTIONAL), weights)
    with pytest.raises(ValueError, match=message):
        load_keras_h5(path)


def test_the_architecture_is_built_without_random_initial_values(functional_file, monkeypatch):
    """The file's arrays replace the initial values: drawing them would only cost memory, before the
    stored shapes are checked. The config still names the initializers minicnn would train with."""
    path, _ = functional_file

    def no_draws():
        raise AssertionError("random initial values drawn while loading")
    monkeypatch.setattr(minicnn.backend, "rng", no_draws)
    model = load_keras_h5(path)
    conv = next(layer for layer in model.nodes if isinstance(layer, minicnn.Conv2D))
    assert (conv.kernel_initializer, conv.bias_initializer) == ("glorot_uniform", "zeros")


def test_weights_of_the_wrong_shape_are_an_error(functional_file, tmp_path):
    _, weights = functional_file
    weights = {**weights, "conv2d_1": [("kernel", np.zeros((1, 1, 1, 3), np.float32))]}
    with pytest.raises(ValueError, match=r"conv2d_1: weight conv2d_1/kernel has shape \(1, 1, 1, 4\)"):
        load_keras_h5(write_keras_h5(tmp_path / "bad.h5", FUNCTIONAL, weights))


def test_a_missing_weight_dataset_is_an_error_naming_the_layer_and_the_dataset(functional_file, tmp_path):
    path, _ = functional_file
    with h5py.File(path, "a") as f:      # weight_names still lists it
        del f["model_weights/conv2d_1/conv2d_1_1/kernel:0"]
    with pytest.raises(ValueError, match="conv2d_1: .*no dataset model_weights/conv2d_1/conv2d_1_1/kernel:0") as e:
        load_keras_h5(path)
    assert "Keras 2 layout" not in str(e.value)


def test_only_a_config_without_keras_2_entries_is_not_in_the_keras_2_layout(functional_file, tmp_path):
    path, weights = functional_file
    no_layers = copy.deepcopy(FUNCTIONAL)
    del no_layers["config"]["layers"]
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = json.dumps(no_layers)
    with pytest.raises(ValueError, match="not in the Keras 2 layout .*model_config.config has no 'layers' entry"):
        load_keras_h5(path)
    no_filters = copy.deepcopy(FUNCTIONAL)
    del next(layer for layer in no_filters["config"]["layers"] if layer["name"] == "conv2d_1")["config"]["filters"]
    with pytest.raises(ValueError, match="conv2d_1: the Conv2D config has no 'filters' option") as e:
        load_keras_h5(write_keras_h5(tmp_path / "no_filters.h5", no_filters, weights))
    assert "Keras 2 layout" not in str(e.value)


def test_files_that_are_not_keras_models_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such Keras model file"):
        load_keras_h5(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        load_keras_h5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "weights_only.h5", "w") as f:     # what model.save_weights writes
        f.attrs["layer_names"] = np.array([b"dense_1"])
    with pytest.raises(ValueError, match="weights-only"):
        load_keras_h5(tmp_path / "weights_only.h5")


def test_without_h5py_the_error_says_what_to_install(monkeypatch, functional_file):
    monkeypatch.setitem(sys.modules, "h5py", None)       # makes `import h5py` raise ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[keras\]"'):
        load_keras_h5(functional_file[0])


def test_convert_keras_writes_a_model_file_evaluate_and_predict_accept(functional_file, tmp_path, monkeypatch,
                                                                         capsys):
    path, weights = functional_file
    out = tmp_path / "converted.npz"
    assert load_script("convert_keras").main([str(path), str(out), "--labels", "Happy,Sad,Neutral,Surprise"]) == 0
    assert "Total params: 46" in capsys.readouterr().out      # summary: (18 + 8) + 16 + 4
    model = minicnn.load_model(out)
    assert model.metadata == {"labels": ["Happy", "Sad", "Neutral", "Surprise"], "class_map": "fer4",
                              "preprocessing": {"input_size": 8, "scale": "symmetric", "mean": None, "std": None},
                              "architecture": "keras:model_1", "source": str(path)}
    x = np.random.default_rng(5).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), functional_by_hand(x, weights), rtol=1e-4, atol=1e-6)

    probs = EmotionClassifier.from_file(out).classify([np.full((30, 20), 128, np.uint8)])   # predict.py, webcam.py
    assert probs.shape == (1, 4)
    data = write_csv(tmp_path / "fer.csv", n_train=0, n_public=14)
    result = load_script("evaluate").evaluate(out, data, split="PublicTest")
    assert result["faces"] == 8 and result["labels"] == ["Happy", "Sad", "Neutral", "Surprise"]   # 4 classes of 7

    own = tmp_path / "own_labels.npz"            # labels of no FER2013 class map: predict yes, evaluate no
    assert load_script("convert_keras").main([str(path), str(own), "--labels", "calm,tense,joy,other"]) == 0
    assert minicnn.load_model(own).metadata["class_map"] is None
    with pytest.raises(ValueError, match="own_labels.npz: its labels .* are not FER2013 classes"):
        load_script("evaluate").evaluate(own, data, split="PublicTest")


@pytest.mark.parametrize("case", ["missing", "not_hdf5", "unsupported"])
def test_convert_keras_exits_1_with_a_clear_error(case, functional_file, tmp_path, capsys):
    message = {"missing": "no such Keras model file", "not_hdf5": "not an HDF5 file",
               "unsupported": "leaky_re_lu_1: layer class LeakyReLU is not supported"}[case]
    path = tmp_path / "in.h5"
    if case == "not_hdf5":
        path.write_bytes(b"PK\x03\x04 a zip, say")
    elif case == "unsupported":
        write_keras_h5(path, unknown_class(FUNCTIONAL), functional_file[1])
    assert load_script("convert_keras").main([str(path), str(tmp_path / "out.npz")]) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "out.npz").exists()


# ---- the published mini-Xception (shared reference file) ----------------------------------------
REFERENCE = "reference/mini_xception_keras.hdf5"


def test_reference_model_summary_and_every_weight(shared_file, capsys):
    path = shared_file(REFERENCE)
    model = load_keras_h5(path)
    model.summary()
    printed = capsys.readouterr().out
    assert "Total params: 58,423" in printed and "Trainable params: 56,951" in printed
    assert model.name == "model_1" and model.output_layer.name == "predictions"
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        for layer in model.layers:
            keys = [n.decode() for n in group[layer.name].attrs["weight_names"]]
            assert len(keys) == len(layer._weights), layer.name
            for key, loaded in zip(keys, layer.get_weights()):
                np.testing.assert_array_equal(loaded, group[layer.name][key][()])


@pytest.mark.slow
def test_reference_model_scores_what_keras_scores_on_public_test(shared_file, tmp_path, capsys):
    # ~80 s: 3,589 faces at 64x64 on a loaded 2-core machine
    out = tmp_path / "mini_xception_keras.npz"
    assert load_script("convert_keras").main([str(shared_file(REFERENCE)), str(out)]) == 0
    capsys.readouterr()
    data = shared_file("fer2013/fer2013.csv.gz")
    assert load_script("evaluate").main(["--model", str(out), "--data", str(data), "--split", "PublicTest",
                                         "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["faces"] == 3589
    assert abs(result["accuracy"] - 0.652) <= 0.003, result["accuracy"]      # what Keras scores (README)


# ---- security: datasets whose bytes live outside the file ----------------------------------------
KERNEL = "model_weights/conv2d_1/conv2d_1_1/kernel:0"


def replace_kernel(path, make):
    """Delete conv2d_1's kernel dataset and put make(file, name) in its place."""
    with h5py.File(path, "a") as f:
        del f[KERNEL]
        make(f, KERNEL)


def secret_file(tmp_path):
    """A local file an attacker wants copied into the weights: 16 float32-sized bytes."""
    secret = tmp_path / "api_key.txt"
    secret.write_bytes(b"SECRET-API-KEY-0")
    return secret


def test_external_storage_is_refused_naming_the_dataset(functional_file, tmp_path):
    path, _ = functional_file
    secret = secret_file(tmp_path)
    replace_kernel(path, lambda f, name: f.create_dataset(name, shape=(1, 1, 1, 4), dtype="<f4",
                                                          external=[(str(secret), 0, 16)]))
    with h5py.File(path, "r") as f:            # h5py itself would read the secret's bytes
        assert f[KERNEL][()].tobytes() == secret.read_bytes()
    with pytest.raises(ValueError, match=f"{KERNEL}: external storage"):
        load_keras_h5(path)
    out = tmp_path / "out.npz"
    assert load_script("convert_keras").main([str(path), str(out)]) == 1
    assert not out.exists()


def test_virtual_datasets_and_external_links_are_refused(functional_file, tmp_path):
    path, weights = functional_file
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["kernel"] = dict(weights["conv2d_1"])["kernel"]

    def virtual(f, name):
        layout = h5py.VirtualLayout(shape=(1, 1, 1, 4), dtype="<f4")
        layout[...] = h5py.VirtualSource(str(other), "kernel", shape=(1, 1, 1, 4))
        f.create_virtual_dataset(name, layout)

    replace_kernel(path, virtual)
    with pytest.raises(ValueError, match=f"{KERNEL}: a virtual dataset"):
        load_keras_h5(path)
    replace_kernel(path, lambda f, name: f.__setitem__(name, h5py.ExternalLink(str(other), "kernel")))
    with pytest.raises(ValueError, match=f"{KERNEL} is an external link to .*other.h5"):
        load_keras_h5(path)


def test_a_weight_of_a_huge_stated_shape_is_refused_before_it_is_read(functional_file, tmp_path):
    path, _ = functional_file
    # 4 GB of float32 as stated, a few kB compressed: the shape is checked before any byte is read
    replace_kernel(path, lambda f, name: f.create_dataset(name, shape=(1, 1, 1, 1 << 30), dtype="<f4",
                                                          chunks=(1, 1, 1, 1 << 20), compression="gzip"))
    with pytest.raises(ValueError, match=r"conv2d_1: weight conv2d_1/kernel has shape \(1, 1, 1, 4\), "
                                         r"received shape \(1, 1, 1, 1073741824\)"):
        load_keras_h5(path)


def test_convert_keras_refuses_to_overwrite_its_input(functional_file, capsys):
    path, _ = functional_file
    before = path.read_bytes()
    with pytest.raises(SystemExit) as exit_code:
        load_script("convert_keras").main([str(path), str(path)])
    assert exit_code.value.code == 2 and "the Keras file itself" in capsys.readouterr().err
    assert path.read_bytes() == before
