"""fer.preprocess: the one resize + scale that training, evaluation and the webcam share."""
import json

import cv2
import numpy as np
import pytest

from fer.preprocess import Preprocessing

LEVELS = np.array([0, 1, 2, 127, 128, 200, 254, 255], np.uint8)


def known_faces():
    """uint8 (3, 48, 48) built from LEVELS, so every formula is checked on known pixels."""
    return np.resize(LEVELS, (3, 48, 48)).astype(np.uint8)


@pytest.mark.parametrize(
    "settings, formula",
    [
        ({"scale": "unit"}, lambda x: x / 255),
        ({"scale": "symmetric"}, lambda x: (x / 255 - 0.5) * 2),
        ({"scale": "standardize", "mean": 0.4, "std": 0.25}, lambda x: (x / 255 - 0.4) / 0.25),
    ],
)
def test_scales_match_their_formulas(settings, formula):
    faces = known_faces()
    x = Preprocessing(**settings).apply(faces)
    assert x.dtype == np.float32 and x.shape == (3, 48, 48, 1)
    np.testing.assert_allclose(x[..., 0], formula(faces.astype(np.float64)), rtol=0, atol=1e-6)


def test_unit_and_symmetric_ranges():
    faces = np.array([[[0, 255]]], np.uint8).repeat(48, 1).repeat(24, 2)  # (1, 48, 48)
    assert Preprocessing().apply(faces).min() == 0 and Preprocessing().apply(faces).max() == 1
    symmetric = Preprocessing(scale="symmetric").apply(faces)
    assert symmetric.min() == -1 and symmetric.max() == 1


def test_input_size_64_resizes_with_cv2():
    faces = known_faces()
    x = Preprocessing(input_size=64).apply(faces)
    assert x.shape == (3, 64, 64, 1)
    enlarged = cv2.resize(faces[1], (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(x[1, :, :, 0], enlarged / 255, atol=1e-6)


def test_shrinking_uses_inter_area():
    crop = np.random.default_rng(0).integers(0, 256, (100, 90), dtype=np.uint8)
    x = Preprocessing().apply([crop])
    np.testing.assert_allclose(x[0, :, :, 0], cv2.resize(crop, (48, 48), interpolation=cv2.INTER_AREA) / 255, atol=1e-6)


def test_list_of_crops_gives_the_same_tensor_as_an_array():
    faces = np.random.default_rng(1).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    original = faces.copy()
    for preprocessing in (Preprocessing(), Preprocessing(input_size=64, scale="symmetric")):
        from_array = preprocessing.apply(faces)
        np.testing.assert_array_equal(preprocessing.apply(list(faces)), from_array)
        np.testing.assert_array_equal(preprocessing.apply(faces[..., np.newaxis]), from_array)
    np.testing.assert_array_equal(faces, original)  # the input is left alone


def test_crops_of_different_sizes():
    rng = np.random.default_rng(2)
    crops = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(48, 48), (120, 100), (30, 40)]]
    preprocessing = Preprocessing(scale="symmetric")
    x = preprocessing.apply(crops)
    assert x.shape == (3, 48, 48, 1)
    for i, crop in enumerate(crops):  # a batch gives each face exactly what it gets alone
        np.testing.assert_array_equal(x[i], preprocessing.apply([crop])[0])
    assert Preprocessing().apply([]).shape == (0, 48, 48, 1)


def test_fit_computes_mean_and_std_of_scaled_training_pixels():
    images = np.random.default_rng(3).integers(0, 256, (50, 48, 48), dtype=np.uint8)
    fitted = Preprocessing(scale="standardize").fit(images)
    assert fitted.mean == pytest.approx(np.mean(images / 255), abs=1e-12)
    assert fitted.std == pytest.approx(np.std(images / 255), abs=1e-12)
    x = fitted.apply(images)
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4
    assert Preprocessing().fit(images) == Preprocessing()  # other scales use no statistics


def test_to_dict_from_dict_round_trip():
    preprocessing = Preprocessing(input_size=64, scale="standardize", mean=0.5077, std=0.2551)
    stored = json.loads(json.dumps(preprocessing.to_dict()))
    assert Preprocessing.from_dict(stored) == preprocessing
    assert Preprocessing.from_dict({}) == Preprocessing()
    with pytest.raises(ValueError, match="unknown keys"):
        Preprocessing.from_dict({"scale": "unit", "colour": True})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"input_size": 4}, "input_size must be an integer >= 8"),
        ({"input_size": 48.0}, "input_size must be an integer >= 8"),
        ({"scale": "minmax"}, "scale must be one of unit, symmetric, standardize"),
        ({"scale": "standardize", "mean": 0.5}, "give both mean and std"),
        ({"scale": "standardize", "mean": 0.5, "std": 0.0}, "std must be > 0"),
        ({"scale": "unit", "mean": 0.5}, "only used by scale 'standardize'"),
    ],
)
def test_invalid_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**settings)


def test_apply_rejects_unfitted_standardize_and_non_uint8_faces():
    with pytest.raises(ValueError, match="call fit"):
        Preprocessing(scale="standardize").apply(known_faces())
    with pytest.raises(ValueError, match="expected uint8"):
        Preprocessing().apply(np.zeros((2, 48, 48), np.float32))
    with pytest.raises(ValueError, match="face 1 must be a 2-D uint8 crop"):
        Preprocessing().apply([np.zeros((48, 48), np.uint8), np.zeros((48, 48, 3), np.uint8)])


def test_a_model_that_blurred_its_faces_is_refused_with_the_advice_to_retrain():
    old = {"input_size": 48, "scale": "unit", "mean": None, "std": None, "match_sharpness": True, "sharpness": 9.1}
    with pytest.raises(ValueError, match="blurred faces.*retrain"):
        Preprocessing.from_dict(old)
    harmless = {**old, "match_sharpness": False, "sharpness": None}     # the option was off: nothing changes
    assert Preprocessing.from_dict(harmless) == Preprocessing(48, "unit")
