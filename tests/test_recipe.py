"""The training recipe's parts: label smoothing, decoupled weight decay, random erasing, and
a saved run that asks for what minicnn no longer does."""
import json

import numpy as np
import pytest

from fer.augment import ERASE_AREA, Augmenter
from fer.training import TrainConfig
from minicnn import optimizers
from minicnn.layers.base import Weight
from minicnn.losses import CategoricalCrossentropy, SparseCategoricalCrossentropy


def smoothed_cross_entropy(labels, logits, s):
    """Written out from the definition, one sample at a time, for comparison."""
    k = logits.shape[1]
    total = 0.0
    for label, z in zip(labels, logits):
        log_p = z - np.log(np.sum(np.exp(z)))
        target = np.full(k, s / k)
        target[label] += 1 - s
        total -= target @ log_p
    return total / len(labels)


def test_label_smoothing_loss_is_cross_entropy_with_smoothed_targets():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((5, 7)), rng.integers(0, 7, 5)
    loss, _ = SparseCategoricalCrossentropy(label_smoothing=0.1).from_logits(labels, logits)
    assert loss == pytest.approx(smoothed_cross_entropy(labels, logits, 0.1), rel=1e-12)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    one_hot = np.eye(7)[labels]
    assert CategoricalCrossentropy(label_smoothing=0.1)(one_hot, probs) == pytest.approx(loss, rel=1e-9)


def test_label_smoothing_gradient_matches_central_differences():
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((4, 7)), rng.integers(0, 7, 4)
    loss = SparseCategoricalCrossentropy(label_smoothing=0.2)
    _, grad = loss.from_logits(labels, logits)
    h = 1e-6
    numeric = np.zeros_like(logits)
    for index in np.ndindex(*logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (loss.from_logits(labels, up)[0] - loss.from_logits(labels, down)[0]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-10)


def test_label_smoothing_out_of_range_is_refused():
    with pytest.raises(ValueError, match="label_smoothing"):
        SparseCategoricalCrossentropy(label_smoothing=1.0)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
def test_weight_decay_shrinks_weights_apart_from_the_gradient(name):
    value = np.array([1.0, -2.0, 4.0])
    plain, decayed = Weight("w", value.copy()), Weight("w", value.copy())
    for w in (plain, decayed):
        w.grad = np.array([0.5, 0.5, -0.5])
    optimizers.get({"class_name": name, "learning_rate": 0.1}).apply_gradients([plain])
    optimizers.get({"class_name": name, "learning_rate": 0.1, "weight_decay": 0.01}).apply_gradients([decayed])
    # one step: the decayed weight is first shrunk by lr * d, then takes the same step
    np.testing.assert_allclose(decayed.value - plain.value, -0.1 * 0.01 * value, rtol=1e-6)


def test_random_erasing_fills_one_rectangle_of_the_given_area_with_noise():
    images = np.full((64, 48, 48), 128, np.uint8)
    still = {"rotation_range": 0, "width_shift_range": 0, "height_shift_range": 0, "zoom_range": 0,
             "horizontal_flip": False}
    out = Augmenter(**still, erasing_probability=0.5, seed=3)(images)
    changed = out != 128
    erased = changed.any(axis=(1, 2))
    assert 16 < erased.sum() < 48                             # about half the faces
    for face in changed[erased]:
        rows, cols = np.flatnonzero(face.any(axis=1)), np.flatnonzero(face.any(axis=0))
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert ERASE_AREA[0] * 0.5 <= box / 48 ** 2 <= ERASE_AREA[1] * 1.2
        assert face.sum() >= 0.9 * box                         # noise: nearly every pixel in the box moved
    np.testing.assert_array_equal(Augmenter(**still, seed=3)(images), images)   # no erasing: unchanged


def test_a_saved_run_that_blurred_its_faces_cannot_resume(tmp_path):
    config_file = tmp_path / "config.json"
    args = {"model": "cnn4", "data": "x.csv", "match_sharpness": True}
    config_file.write_text(json.dumps(args))
    with pytest.raises(ValueError, match="config.json: this run blurred its faces.*new run"):
        TrainConfig.from_saved(args, config_file)
    assert TrainConfig.from_saved({**args, "match_sharpness": False}, config_file).model == "cnn4"


def test_shift_tta_views_are_the_mirror_and_edge_repeating_moves():
    from fer.evaluation import TTA_SHIFT as d, predict_probabilities, tta_views

    x = np.random.default_rng(4).standard_normal((2, 12, 10, 1))
    views = tta_views(x, "shift")
    assert len(views) == 10 and len(tta_views(x, True)) == 2 and len(tta_views(x, False)) == 1
    rows, cols = np.arange(12), np.arange(10)
    down = x[:, np.clip(rows - d, 0, 11)]                       # output row i shows input row i - d
    left = x[:, :, np.clip(cols + d, 0, 9)]
    assert any(np.array_equal(v, down) for v in views) and any(np.array_equal(v, left) for v in views)
    assert any(np.array_equal(v, x[:, :, ::-1][:, np.clip(rows - d, 0, 11)]) for v in views)   # flipped, moved

    class MeanModel:                                            # probabilities from each view's mean
        def predict(self, batch, batch_size=None):
            m = batch.mean(axis=(1, 2, 3))
            return np.stack([m, 1 - m], axis=1)

    expected = np.mean([MeanModel().predict(v) for v in views], axis=0)
    np.testing.assert_allclose(predict_probabilities(MeanModel(), x, tta="shift"), expected)
    with pytest.raises(ValueError, match="tta must be"):
        tta_views(x, "crop")


def test_fit_on_an_empty_sequence_says_so():
    import minicnn

    class NoBatches(minicnn.Sequence):
        def __len__(self):
            return 0

        def __getitem__(self, index):
            raise IndexError(index)

    model = minicnn.Sequential([minicnn.Dense(2, activation="softmax", input_shape=(3,))])
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="0 batches"):
        model.fit(NoBatches())


def test_the_near_search_uses_the_detectors_own_step(monkeypatch):
    from fer.faces import FaceDetector

    detector = FaceDetector(near_step=1.3, hog=False)    # the cascade's searches: HOG has no scale step
    steps = []
    monkeypatch.setattr(detector, "cascade", type("Spy", (), {
        "detectMultiScale": lambda self, image, scaleFactor, **kw: steps.append(scaleFactor) or ()})())
    detector.detect_near(np.zeros((240, 320), np.uint8), (100, 80, 60, 60))
    assert steps == [1.3] * len(detector.searches())   # every search near the track (upright, tilted)


def test_balanced_class_weights_give_every_present_class_the_same_total():
    from minicnn.losses import balanced_class_weights

    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(weights, [4 / 9, 4 / 3, 4 / 3])     # N / (K * N_k), an absent class as N_k = 1
    assert 3 * weights[0] == pytest.approx(1 * weights[1])
