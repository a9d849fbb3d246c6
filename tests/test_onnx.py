"""ONNX export: every layer, every seed architecture and every shipped weight file, run in onnxruntime,
against minicnn's own predictions; refusals; scripts/export.py; the published mini-Xception end to end."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn
from fer import models
from fer.inference import load_fer_model
from fer.preprocess import Preprocessing
from minicnn import (Activation, Add, AveragePooling2D, BatchNormalization, Conv2D, Dense, DepthwiseConv2D, Dropout,
                     Flatten, GlobalAveragePooling2D, Input, Layer, MaxPooling2D, Model, ReLU, SeparableConv2D,
                     Sequential, Softmax)
from minicnn.io import export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5        # the bound on |p_onnx - p_minicnn|


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def onnx_predict(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def randomize(model, seed=0):
    """Weights that make every layer matter: BN statistics away from (0, 1), biases away from 0."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.name.endswith("moving_variance"):
            w.value[...] = rng.uniform(0.5, 2.0, w.shape)
        elif w.name.endswith(("moving_mean", "bias", "beta")):
            w.value[...] = rng.normal(0, 0.2, w.shape)
        elif w.name.endswith("gamma"):
            w.value[...] = rng.uniform(0.5, 1.5, w.shape)
        else:                                          # kernels: unit-variance outputs for unit inputs
            w.value[...] = rng.normal(0, 1 / np.sqrt(np.prod(w.shape[:-1])), w.shape)
    return model


def assert_same_predictions(model, x, path):
    expected = model.predict(x, batch_size=len(x))
    received = onnx_predict(path, x)
    assert received.shape == expected.shape
    assert np.abs(received - expected).max() <= TOLERANCE, np.abs(received - expected).max()
    assert (received.argmax(-1) == expected.argmax(-1)).all()
    return expected, received


# ---- every seed architecture ----------------------------------------------------------------------
@pytest.mark.parametrize("name", models.names())
def test_every_seed_architecture_gives_minicnns_probabilities_in_onnxruntime(name, tmp_path):
    model = randomize(models.build(name))
    x = np.random.default_rng(1).random((64,) + model.input_shape[1:], dtype=np.float32)
    export_onnx(model, tmp_path / "m.onnx")
    expected, _ = assert_same_predictions(model, x, tmp_path / "m.onnx")
    assert expected.std(axis=-1).min() > 1e-3 and expected.std(axis=0).max() > 1e-4   # no ties, rows differ
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]                # no temporary file left


# ---- each layer and option, on sizes where TF's "same" pads unevenly -------------------------------
def functional(build, shape=(7, 10, 3)):
    inputs = Input(shape)
    return randomize(Model(inputs, build(inputs)))


LAYER_CASES = {
    "conv same stride 2, 3x5 kernel, odd H != W": lambda x: Conv2D(4, (3, 5), strides=2, padding="same",
                                                                    activation="relu")(x),
    "conv valid, no bias, sigmoid": lambda x: Conv2D(3, 2, use_bias=False, activation="sigmoid")(x),
    "depthwise multiplier 2, same, stride 2": lambda x: DepthwiseConv2D(3, strides=2, padding="same",
                                                                        depth_multiplier=2, activation="tanh")(x),
    "separable same, stride (1, 2), multiplier 2": lambda x: SeparableConv2D(5, 3, strides=(1, 2), padding="same",
                                                                             depth_multiplier=2)(x),
    "separable valid, no bias": lambda x: SeparableConv2D(2, 2, use_bias=False)(x),
    "max pool 3/2 same (overlapping)": lambda x: MaxPooling2D(3, strides=2, padding="same")(x),
    "max pool 2 valid": lambda x: MaxPooling2D()(x),
    "average pool 3/2 same (divides by real cells)": lambda x: AveragePooling2D(3, strides=2, padding="same")(x),
    "batch norm, ReLU layer": lambda x: ReLU()(BatchNormalization(epsilon=0.01)(x)),
    "softmax over the channels of a 4-D tensor": lambda x: Softmax()(Conv2D(4, 1)(x)),
    "add of three": lambda x: Add()([Conv2D(3, 1)(x), x, Activation("tanh")(x)]),
    "flatten (NHWC order) + dense + BN on features + dropout":
        lambda x: Dense(3, activation="softmax")(Dropout(0.5)(BatchNormalization()(Dense(6)(Flatten()(x))))),
    "global average pooling + dense": lambda x: Dense(4, activation="relu")(GlobalAveragePooling2D()(x)),
}


@pytest.mark.parametrize("case", LAYER_CASES)
def test_each_layer_and_option_computes_what_minicnn_computes(case, tmp_path):
    model = functional(LAYER_CASES[case])
    x = np.random.default_rng(2).normal(size=(5, 7, 10, 3)).astype(np.float32)
    export_onnx(model, tmp_path / "m.onnx")
    assert_same_predictions(model, x, tmp_path / "m.onnx")


def test_a_feature_input_and_a_sequential_chain(tmp_path):
    model = randomize(Sequential([Dense(8, activation="relu", input_shape=(5,)), Dense(3, activation="softmax")]))
    x = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
    export_onnx(model, tmp_path / "m.onnx")
    assert_same_predictions(model, x, tmp_path / "m.onnx")


def test_the_graph_is_nhwc_in_and_has_no_dropout_and_explicit_pads():
    model = functional(lambda x: Dense(2)(Dropout(0.5)(Flatten()(Conv2D(2, 3, strides=2, padding="same")(x)))))
    proto = minicnn.onnx.to_onnx(model)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 7, 10, 3]
    ops = [n.op_type for n in proto.graph.node]
    assert ops == ["Transpose", "Conv", "Transpose", "Flatten", "Gemm"] and "Dropout" not in ops
    pads = next(a.ints for a in proto.graph.node[1].attribute if a.name == "pads")
    # TF "same", 3x3 stride 2: H 7 -> 4 pads 2 (1 top, 1 bottom), W 10 -> 5 pads 1 (0 left, the extra 1 right)
    assert list(pads) == [1, 0, 1, 1]        # [top, left, bottom, right]


def test_metadata_goes_into_metadata_props(tmp_path):
    model = functional(lambda x: Dense(2, activation="softmax")(GlobalAveragePooling2D()(x)))
    model.metadata = {"labels": ["yes", "no"], "preprocessing": {"input_size": 48, "scale": "unit"}}
    export_onnx(model, tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["input_layout"] == "NHWC"
    assert json.loads(props["labels"]) == ["yes", "no"]
    assert json.loads(props["preprocessing"]) == {"input_size": 48, "scale": "unit"}


# ---- refusals -----------------------------------------------------------------------------------
class Doubler(Layer):
    def forward(self, x, training=False):
        return 2 * x


def test_a_layer_without_onnx_export_is_refused_by_name(tmp_path):
    model = Model(inputs := Input((4, 4, 1)), Doubler(name="doubler")(inputs))
    with pytest.raises(ValueError, match="doubler: layer class Doubler has no ONNX export"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_float64_layer_is_refused_by_name(tmp_path):
    inputs = Input((4, 4, 1), dtype="float64")
    model = Model(inputs, Conv2D(2, 3, name="wide", dtype="float64")(inputs))
    with pytest.raises(ValueError, match="input.*float64|wide.*float64"):
        export_onnx(model, tmp_path / "m.onnx")


def test_a_model_not_built_yet_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not built yet"):
        export_onnx(Sequential([Dense(2)]), tmp_path / "m.onnx")


def test_without_onnx_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"\.\[onnx\]"):
        export_onnx(functional(lambda x: Flatten()(x)), tmp_path / "m.onnx")


# ---- scripts/export.py --------------------------------------------------------------------------
def saved_model(tmp_path, preprocessing=None):
    model = functional(lambda x: Dense(3, activation="softmax")(Flatten()(Conv2D(2, 3)(x))), shape=(8, 8, 1))
    model.metadata = {"labels": ["a", "b", "c"],
                      "preprocessing": preprocessing or {"input_size": 8, "scale": "unit", "mean": None, "std": None}}
    model.save(tmp_path / "m.npz")
    return model


def test_export_script_writes_onnx_and_keras(tmp_path, capsys):
    model = saved_model(tmp_path)
    x = np.random.default_rng(4).random((3, 8, 8, 1), dtype=np.float32)
    assert load_script("export").main([str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 0
    assert "labels a, b, c" in capsys.readouterr().out
    assert_same_predictions(model, x, tmp_path / "m.onnx")
    assert load_script("export").main([str(tmp_path / "m.npz"), str(tmp_path / "m.keras")]) == 0
    np.testing.assert_array_equal(minicnn.load_model(tmp_path / "m.keras").predict(x), model.predict(x))
    (tmp_path / "run").mkdir()
    (tmp_path / "m.npz").rename(tmp_path / "run" / "model.npz")      # a run folder of scripts/train.py
    assert load_script("export").main([str(tmp_path / "run"), str(tmp_path / "run.onnx")]) == 0
    assert_same_predictions(model, x, tmp_path / "run.onnx")


@pytest.mark.parametrize("case, message", [
    ("extension", "name the output .onnx or .keras"),
    ("missing", "model file not found"),
    ("unwritable", "Is a directory"),
    ("same file", "would overwrite the input"),
    ("retired preprocessing", "match_sharpness"),
])
def test_export_script_exits_1_with_one_line(case, message, tmp_path, capsys):
    saved_model(tmp_path, {"input_size": 8, "scale": "unit", "match_sharpness": True, "sharpness": 3.0}
                if case == "retired preprocessing" else None)
    source, out = tmp_path / "m.npz", tmp_path / "m.onnx"
    if case == "extension":
        out = tmp_path / "m.h5"
    elif case == "missing":
        source = tmp_path / "none.npz"
    elif case == "unwritable":
        out = tmp_path / "folder.onnx"
        out.mkdir()
    elif case == "same file":
        source = out = tmp_path / "m.keras"
        minicnn.load_model(tmp_path / "m.npz").save(out)
    before = out.read_bytes() if out.is_file() else None
    assert load_script("export").main([str(source), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (out.read_bytes() if out.is_file() else None) == before


# ---- real faces: the shipped weights and the published mini-Xception -----------------------------
@pytest.fixture(scope="module")
def public_test(shared_file):
    from fer.data import load
    data = load(shared_file("fer2013/fer2013.csv.gz"))
    keep = data.usage == "PublicTest"
    return data.images[keep], data.labels[keep]


WEIGHT_FILES = sorted((ROOT / "weights").glob("*.npz"))


@pytest.mark.parametrize("path", WEIGHT_FILES, ids=[p.name for p in WEIGHT_FILES])
def test_every_shipped_weight_file_gives_its_probabilities_on_64_real_faces(path, public_test, tmp_path):
    try:
        model, _, preprocessing = load_fer_model(path)
    except ValueError as e:
        if "match_sharpness" not in str(e):
            raise
        pytest.skip(f"{path.name} asks for the retired match_sharpness preprocessing, so it cannot be fed as "
                    f"trained (retrain it): {e}")
    x = preprocessing.apply(public_test[0][:64])
    export_onnx(model, tmp_path / "m.onnx")
    assert_same_predictions(model, x, tmp_path / "m.onnx")


REFERENCE = "reference/mini_xception_keras.hdf5"


@pytest.mark.slow
def test_published_mini_xception_scores_keras_public_test_accuracy_in_onnxruntime(shared_file, public_test,
                                                                                   tmp_path):
    # Keras 2 HDF5 -> minicnn -> ONNX; onnxruntime over all 3,589 PublicTest faces (~1 min with the conversion)
    model = load_script("convert_keras").convert(shared_file(REFERENCE), tmp_path / "m.npz")
    export_onnx(model, tmp_path / "m.onnx")
    images, labels = public_test
    x = Preprocessing.from_dict(model.metadata["preprocessing"]).apply(images)     # 64x64, (x/255 - 0.5) * 2
    assert_same_predictions(model, x[:64], tmp_path / "m.onnx")
    probs = np.concatenate([onnx_predict(tmp_path / "m.onnx", x[i:i + 256]) for i in range(0, len(x), 256)])
    accuracy = float((probs.argmax(-1) == labels).mean())
    assert len(labels) == 3589 and abs(accuracy - 0.652) <= 0.003, accuracy     # what Keras scores (README)
