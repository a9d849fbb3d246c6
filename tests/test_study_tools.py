"""Study tools: minicnn.explain (activations, input gradients, SmoothGrad) and scripts/visualize.py."""
import importlib.util
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

import minicnn
from fer.data import EMOTIONS
from minicnn import (Activation, Add, BatchNormalization, Conv2D, Dense, Dropout, Flatten, GlobalAveragePooling2D,
                     Input, MaxPooling2D, Model, SeparableConv2D, Sequential, backend)
from minicnn import gradcheck
from minicnn.gradcheck import relative_error
from tests.fer_synthetic import faces, write_csv

ROOT = Path(__file__).resolve().parents[1]
PNGS = ("filters.png", "feature_maps.png", "saliency.png", "probabilities.png")


@pytest.fixture
def float64():
    backend.set_floatx("float64")
    backend.set_seed(0)
    yield
    backend.set_floatx("float32")


def chain_model():
    """Conv (tanh: no kinks), BN with non-trivial moving statistics, max pooling, dense softmax."""
    model = Sequential()
    model.add(Conv2D(3, (3, 3), padding="same", activation="tanh", input_shape=(6, 5, 1)))
    model.add(BatchNormalization())
    model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(4, activation="softmax"))
    bn = model.layers[1]
    bn.moving_mean.value[...] = [0.1, -0.2, 0.3]
    bn.moving_variance.value[...] = [0.5, 2.0, 1.5]
    return model


def residual_model():
    """A fan-out and an Add (the gradients of two branches sum), ending in a separate softmax layer."""
    inputs = Input((5, 5, 2))
    x = Conv2D(4, (3, 3), padding="same")(inputs)
    y = SeparableConv2D(4, (3, 3), padding="same", activation="tanh")(x)
    x = GlobalAveragePooling2D()(Add()([x, y]))
    return Model(inputs, Activation("softmax")(Dense(3)(x)))


def score(model, x, classes, of):
    """sum_n S[n, c_n], by a plain forward: the scalar whose gradient input_gradient returns."""
    out = model.forward(x, training=False)
    if of == "logit":
        out = model.output_layer.logits
    return float(out[np.arange(len(x)), classes].sum())


def central_differences(f, x):
    return gradcheck.numeric_gradient(f, x).reshape(x.shape)


# ---- input_gradient ----------------------------------------------------------------------------

@pytest.mark.parametrize("build", [chain_model, residual_model])
@pytest.mark.parametrize("of", ["probability", "logit"])
def test_input_gradient_equals_central_differences(float64, build, of):
    model = build()
    x = np.random.default_rng(1).standard_normal((2,) + model.input_shape[1:])
    top = model.predict(x).argmax(axis=1)
    for class_index, classes in [(None, top), ([2, 0], np.array([2, 0]))]:
        analytic = minicnn.input_gradient(model, x, class_index, of=of)
        numeric = central_differences(lambda: score(model, x, classes, of), x)
        assert analytic.shape == x.shape
        assert relative_error(analytic, numeric) < 1e-8


def test_probability_and_logit_gradients_differ_after_a_softmax(float64):
    model = chain_model()
    x = np.random.default_rng(2).standard_normal((3, 6, 5, 1))
    p = minicnn.input_gradient(model, x, 1, of="probability")
    z = minicnn.input_gradient(model, x, 1, of="logit")
    assert relative_error(p, z) > 1e-3


def test_without_a_softmax_both_scores_are_the_output(float64):
    model = Sequential([Flatten(input_shape=(3, 3, 1)), Dense(2)])
    x = np.random.default_rng(3).standard_normal((2, 3, 3, 1))
    kernel = model.layers[1].kernel.value                         # y = x W + b: dy_c/dx = W[:, c]
    for of in ("probability", "logit"):
        np.testing.assert_allclose(minicnn.input_gradient(model, x, 1, of=of).reshape(2, 9),
                                   np.tile(kernel[:, 1], (2, 1)), rtol=1e-12)


def test_input_gradient_rejects_bad_arguments():
    model = chain_model()
    x = np.zeros((2, 6, 5, 1), np.float32)
    for bad in (4, -1, [0], [0, 1, 2], 1.5):
        with pytest.raises(ValueError, match="class_index"):
            minicnn.input_gradient(model, x, bad)
    with pytest.raises(ValueError, match="probability, logit"):
        minicnn.input_gradient(model, x, of="softmax")


# ---- get_activations -----------------------------------------------------------------------------

def test_get_activations_match_a_manual_forward():
    model = chain_model()
    x = np.random.default_rng(4).standard_normal((3, 6, 5, 1)).astype(np.float32)
    names = [layer.name for layer in model.layers]
    got = minicnn.get_activations(model, x, names[::-1])          # any order, returned as asked
    assert list(got) == names[::-1]
    h = x
    for layer in model.layers:
        h = layer.forward(h, training=False)
        np.testing.assert_array_equal(got[layer.name], h)
    # the recording is gone afterwards: layers run their own forward again
    assert all("forward" not in vars(layer) for layer in model.nodes)
    np.testing.assert_array_equal(model.predict(x), h)
    assert list(minicnn.get_activations(model, x, names[0])) == [names[0]]


def test_get_activations_names_the_valid_layers():
    model = chain_model()
    with pytest.raises(ValueError, match="no layer named 'conv9'.*" + model.layers[0].name):
        minicnn.get_activations(model, np.zeros((1, 6, 5, 1), np.float32), ["conv9"])


# ---- smoothgrad ----------------------------------------------------------------------------------

def test_smoothgrad_without_noise_is_the_gradient(float64):
    model = residual_model()
    x = np.random.default_rng(5).standard_normal((2, 5, 5, 2))
    g = minicnn.input_gradient(model, x, [1, 2])
    signed = minicnn.smoothgrad(model, x, [1, 2], n=3, noise=0.0, magnitude=False, batch_size=4)
    np.testing.assert_allclose(signed, g, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(minicnn.smoothgrad(model, x, [1, 2], n=3, noise=0.0), g * g, rtol=1e-12, atol=1e-15)


def test_smoothgrad_is_seeded_and_averages_noisy_copies(float64):
    model = residual_model()
    x = np.random.default_rng(6).standard_normal((2, 5, 5, 2))
    a = minicnn.smoothgrad(model, x, n=5, seed=1, magnitude=False)
    np.testing.assert_allclose(a, minicnn.smoothgrad(model, x, n=5, seed=1, magnitude=False, batch_size=3),
                               rtol=1e-12, atol=1e-16)   # other batches: other matmul rounding
    assert not np.allclose(a, minicnn.smoothgrad(model, x, n=5, seed=2, magnitude=False))
    # the same noisy copies by hand: x_n + sigma_n * e, sigma_n = 0.15 * (max - min) of sample n
    top = model.predict(x).argmax(axis=1)
    sigma = 0.15 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[:, None, None, None]
    e = np.random.default_rng(1).standard_normal((10,) + x.shape[1:]).reshape(2, 5, *x.shape[1:])
    by_hand = np.mean([minicnn.input_gradient(model, x + sigma * e[:, k], top) for k in range(5)], axis=0)
    np.testing.assert_allclose(a, by_hand, rtol=1e-10, atol=1e-14)


# ---- scripts/visualize.py ------------------------------------------------------------------------

def load_script():
    spec = importlib.util.spec_from_file_location("visualize_script", ROOT / "scripts" / "visualize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny trained-format model file, a FER-style CSV and a face image, in one folder."""
    folder = tmp_path_factory.mktemp("study")
    model = Sequential()
    model.add(Conv2D(4, (3, 3), padding="same", input_shape=(48, 48, 1)))
    model.add(BatchNormalization())
    model.add(Activation("relu"))
    model.add(MaxPooling2D((2, 2)))
    model.add(Dropout(0.25))
    model.add(Conv2D(6, (3, 3), activation="relu"))
    model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(len(EMOTIONS), activation="softmax"))
    model.metadata = {"labels": list(EMOTIONS),
                      "preprocessing": {"input_size": 48, "scale": "unit", "mean": None, "std": None}}
    model.save(folder / "model.npz")
    write_csv(folder / "fer.csv", n_train=7, n_public=3)
    cv2.imwrite(str(folder / "face.png"), faces(1, seed=9)[0][0])
    return folder, load_script(), [layer.name for layer in model.layers]


def run(study, monkeypatch, capsys, *args):
    folder, script, _ = study
    code = script.main(["--model", str(folder / "model.npz"), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_pngs(folder):
    for name in PNGS:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(folder.glob("*.tmp")), "a temporary file was left behind"


def test_visualize_writes_every_png_for_a_csv_row(study, monkeypatch, capsys, tmp_path):
    folder, script, names = study
    code, out, err = run(study, monkeypatch, capsys, "--data", folder / "fer.csv", "--index", 3,
                         "--out", tmp_path / "viz", "--target", "sad", "--smoothgrad")
    assert code == 0, err
    assert_pngs(tmp_path / "viz")
    assert "row 3" in out and "labelled Happy" in out
    # default feature maps: the last layer at each resolution, Dropout skipped
    model = minicnn.load_model(folder / "model.npz")
    assert script.block_outputs(model) == [names[2], names[3], names[5], names[6]]


def test_visualize_an_image_without_a_face_uses_the_whole_image(study, monkeypatch, capsys, tmp_path):
    folder, _, names = study
    code, _, err = run(study, monkeypatch, capsys, "--image", folder / "face.png", "--out", tmp_path,
                       "--layers", f"{names[0]},{names[-1]}", "--of", "probability")
    assert code == 0, err
    assert "no face found" in err and "whole image" in err
    assert_pngs(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"--layers": "conv2d_99"}, "unknown layer conv2d_99; the model's layers: "),
    ({"--index": 10}, "--index 10 is out of range: .* has rows 0..9"),
    ({"--target": "Bored"}, "unknown --target 'Bored'; the model's labels: Angry"),
])
def test_visualize_fails_clearly_on_bad_input(study, monkeypatch, capsys, tmp_path, change, message):
    options = {"--data": study[0] / "fer.csv", "--index": 0, "--out": tmp_path / "viz", **change}
    code, _, err = run(study, monkeypatch, capsys, *[v for option in options.items() for v in option])
    assert code == 1
    assert err.startswith("visualize.py: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "viz").exists()


def test_visualize_fails_clearly_on_missing_files(study, monkeypatch, capsys, tmp_path):
    folder, script, _ = study
    code, _, err = run(study, monkeypatch, capsys, "--image", tmp_path / "nope.png", "--out", tmp_path)
    assert code == 1 and "cannot read image" in err
    code, _, err = run(study, monkeypatch, capsys, "--data", tmp_path / "nope.csv", "--index", 0, "--out", tmp_path)
    assert code == 1 and "nope.csv" in err
    assert script.main(["--model", str(tmp_path / "none.npz"), "--image", str(folder / "face.png"),
                        "--out", str(tmp_path)]) == 1
    assert "model file not found" in capsys.readouterr().err


def test_visualize_uses_the_shipped_weights_by_default(study):
    _, script, _ = study
    args = script.parse_args(["--image", "face.png", "--out", "viz"])
    assert args.model == ROOT / "weights" / "mini_xception.npz" and args.model.is_file()
